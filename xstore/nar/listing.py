"""NAR listings and the random-access index.

One streaming pass over an archive builds a `NarIndex`: the tree of its nodes with, for each regular
file, the offset of its contents in the archive. Contents are skipped (by seeking, when the source can
seek) but the archive is still validated in full, as Nix validates before listing. Memory is
proportional to the number of entries, never to the archive's size. The index serves `nar ls` (text, and
JSON identical to current Nix's `nix nar ls --json`), `nar cat`, and the FUSE view of a NAR.

Nix: nar-accessor.cc (`NarAccessor`, `listNar`) and nix/ls.cc.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

from xstore.errors import PathNotFoundError, TrailingDataError, TruncatedError, XstoreError
from xstore.nar.drive import iter_events
from xstore.nar.events import ArchiveEnd, DirectoryEnd, DirectoryStart, FileChunk, RegularFile, Symlink
from xstore.nar.parser import NarParser
from xstore.nar.rules import show
from xstore.records import Record

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Final

CHUNK: Final = 1 << 20


class RegularNode(Record):
    __slots__ = ("size", "executable", "offset")  # noqa: RUF023 (the fields' order)

    def __init__(self, size: int, executable: bool, offset: int) -> None:
        self.size = size
        self.executable = executable
        self.offset = offset  # of the contents in the archive


class SymlinkNode(Record):
    __slots__ = ("target",)

    def __init__(self, target: bytes) -> None:
        self.target = target


class DirectoryNode(Record):
    __slots__ = ("entries",)

    def __init__(self, entries: dict[bytes, Node] | None = None) -> None:
        self.entries: dict[bytes, Node] = {} if entries is None else entries  # in archive (byte) order


Node = RegularNode | SymlinkNode | DirectoryNode


class NarIndex(Record):
    __slots__ = ("root", "nar_size")  # noqa: RUF023 (the fields' order)

    def __init__(self, root: Node, nar_size: int) -> None:
        self.root = root
        self.nar_size = nar_size

    def lookup(self, path: str | bytes) -> Node:
        """The node at `path` ("/", "", "/a/b" or "a/b"). Raises `PathNotFoundError`."""
        node = self.root
        for part in _split(path):
            if not isinstance(node, DirectoryNode) or part not in node.entries:
                raise PathNotFoundError(f"path '{_display(path)}' does not exist in the NAR")
            node = node.entries[part]
        return node


def _split(path: str | bytes) -> list[bytes]:
    raw = os.fsencode(path)
    return [p for p in raw.split(b"/") if p and p != b"."]


def _display(path: str | bytes) -> str:
    return "/" + os.fsdecode(b"/".join(_split(path)))


def build_index(read: Callable[[int], bytes], skip: Callable[[int], None] | None = None) -> NarIndex:
    """Index the archive read from `read(n)`; validates all of it, and refuses bytes after its end
    (`TrailingDataError`), as a restore does.

    `skip(n)`, if given, advances the source by n bytes without reading them (a seek); contents are
    then never read. Raises `NarError` for an invalid archive.
    """
    parser = NarParser()
    stack: list[DirectoryNode] = []
    root: Node | None = None
    for event in iter_events(read, parser, contents=False, skip=skip):
        kind = type(event)
        node: Node
        if kind is RegularFile:
            assert isinstance(event, RegularFile)
            node = RegularNode(event.size, event.executable, event.contents_offset)
        elif kind is DirectoryStart:
            node = DirectoryNode()
        elif kind is Symlink:
            assert isinstance(event, Symlink)
            node = SymlinkNode(event.target)
        elif kind is DirectoryEnd:
            stack.pop()
            continue
        elif kind is ArchiveEnd:
            assert isinstance(event, ArchiveEnd)
            assert root is not None
            if parser.unused_data or read(1):
                raise TrailingDataError(
                    f"unexpected data after the end of the archive (at byte {event.size})"
                )
            return NarIndex(root, event.size)
        else:  # FileEnd
            continue
        assert isinstance(event, RegularFile | DirectoryStart | Symlink)
        if stack:
            stack[-1].entries[event.path[-1]] = node
        else:
            root = node
        if isinstance(node, DirectoryNode):
            stack.append(node)
    raise AssertionError("the driver ends with ArchiveEnd")


def index_file(f: BinaryIO) -> NarIndex:
    """Index an archive file, seeking over contents when the file can seek."""
    skip: Callable[[int], None] | None = None
    if f.seekable():
        end = os.fstat(f.fileno()).st_size

        def skip(n: int) -> None:
            pos = f.tell()
            if pos + n > end:  # a hostile size (up to 2^64 - 1) need not even be a valid offset
                raise TruncatedError(
                    f"unexpected end of file: a file's contents need {n} more bytes, the archive has "
                    f"{end - pos}",
                    offset=end,
                )
            f.seek(n, os.SEEK_CUR)

    # Contents that extend past the end of the file are caught by the parser: the next read after the
    # seek returns nothing, and the archive is reported truncated.
    return build_index(f.read, skip)


# -- JSON, as `nix nar ls --json` ------------------------------------------------------------------------


def _name_for_json(name: bytes) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise XstoreError(
            f"name '{show(name)}' is not valid UTF-8 and cannot be listed as JSON (use the text listing)"
        ) from None


def listing_json(node: Node, *, recursive: bool) -> Any:
    """The JSON object `nix nar ls --json` gives for `node` (serialise with `dump_json`)."""
    if isinstance(node, RegularNode):
        obj: dict[str, Any] = {"type": "regular", "size": node.size}
        if node.executable:
            obj["executable"] = True
        if node.offset:
            obj["narOffset"] = node.offset
        return obj
    if isinstance(node, SymlinkNode):
        return {"type": "symlink", "target": _name_for_json(node.target)}
    return {
        "type": "directory",
        "entries": {
            _name_for_json(name): listing_json(child, recursive=True) if recursive else {}
            for name, child in node.entries.items()
        },
    }


def dump_json(obj: Any) -> str:
    """Serialise as current Nix does (nlohmann::json `dump()`): compact, keys sorted, UTF-8 unescaped."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


# -- text, as `nix nar ls [-l] [-R] [-d]` -----------------------------------------------------------------


def listing_lines(
    index: NarIndex, path: str | bytes, *, recursive: bool, long: bool, directory: bool
) -> Iterator[bytes]:
    """Lines (without newline) of `nix nar ls` for `path`: names relative to it, `./name` for the
    contents of a directory; with `long`, a mode column and the size as Nix prints them.

    As in Nix (ls.cc `listText`), a directory itself is shown as `.` (with `directory`) and any other
    node by its base name, which is empty for the root of an archive holding a single file or symlink.
    """
    node = index.lookup(path)
    parts = _split(path)
    if isinstance(node, DirectoryNode):
        if directory:
            yield from _show_node(node, b".", recursive, long)
        else:
            yield from _children(node, b".", recursive, long)
    else:
        yield from _show_node(node, parts[-1] if parts else b"", recursive, long)


def _children(node: DirectoryNode, rel: bytes, recursive: bool, long: bool) -> Iterator[bytes]:
    for name, child in node.entries.items():
        yield from _show_node(child, rel + b"/" + name, recursive, long)


def _show_node(node: Node, rel: bytes, recursive: bool, long: bool) -> Iterator[bytes]:
    if long:
        if isinstance(node, RegularNode):
            mode, size = ("-r-xr-xr-x" if node.executable else "-r--r--r--"), node.size
        elif isinstance(node, SymlinkNode):
            mode, size = "lrwxrwxrwx", 0
        else:
            mode, size = "dr-xr-xr-x", 0
        line = f"{mode} {size:20d} ".encode() + rel
        if isinstance(node, SymlinkNode):
            line += b" -> " + node.target
        yield line
    else:
        yield rel
    if recursive and isinstance(node, DirectoryNode):
        yield from _children(node, rel, recursive, long)


def iter_regular_contents(f: BinaryIO, node: RegularNode, chunk: int = CHUNK) -> Iterator[bytes]:
    """The contents of a regular file inside an indexed archive file, read with pread."""
    fd = f.fileno()
    pos, left = node.offset, node.size
    while left:
        data = os.pread(fd, min(left, chunk), pos)
        if not data:
            raise XstoreError("unexpected end of file while reading contents from the archive")
        pos += len(data)
        left -= len(data)
        yield data


# -- archives in files, compressed or not ----------------------------------------------------------------


class NarFile:
    """A NAR in a file, indexed once: plain (contents read with pread at their offsets) or compressed
    with any method `xstore.compression` reads (contents found by reading the archive again). Raises
    `WrongFormatError` when the file holds something else (an export stream, a narinfo...)."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        from xstore import sniff
        from xstore.compression import Method

        self._f = f
        kind, self.method, read = sniff.open_input(f.read)
        sniff.expect(kind, sniff.Kind.NAR, f"'{name}'")
        if self.method is Method.NONE and f.seekable():
            f.seek(0)
            self.index = index_file(f)
            self._plain = True
        else:
            self.index = build_index(read)
            self._plain = False

    def contents(self, node: RegularNode) -> Iterator[bytes]:
        """The contents of the regular file `node` of this archive's index."""
        if self._plain:
            yield from iter_regular_contents(self._f, node)
            return
        from xstore.compression import open_reader

        self._f.seek(0)
        inside = False
        for event in iter_events(open_reader(self._f.read, self.method)):
            if type(event) is RegularFile:
                assert isinstance(event, RegularFile)
                inside = event.contents_offset == node.offset
            elif inside and type(event) is FileChunk:
                assert isinstance(event, FileChunk)
                yield event.data
            elif inside:
                return
