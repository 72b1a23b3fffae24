"""Hypothesis strategies for NAR trees, and the helpers that move a tree model to and from events and disk.

All strategies of the suite live here (after attrs' `tests/strategies.py`).

The tree model is plain data, so Hypothesis can shrink and print it. A node is

- `("file", contents, executable)`,
- `("symlink", target)`,
- `("dir", entries)` where `entries` (a `Tree`) maps entry names (bytes) to nodes.

A `Tree` stands for the contents of a directory; functions that take "a tree" accept either a `Tree`
(meaning a directory root) or any `Node` (an archive whose root is a file or a symlink).

Names follow the NAR rules of current Nix (not empty, `.` or `..`, no `/` or NUL, at most 255 bytes) and
never contain the case-hack suffix, which the parser refuses. They lean toward short ASCII names, case
spellings of one another, and UTF-8 with NFC/NFD variants, where the case hack has work to do.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import stat
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, Literal, TypeAlias

from hypothesis import strategies as st

from tests.narbuild import tree_nar
from xstore.casehack import Fold, fold_key
from xstore.nar.encoder import NarEncoder
from xstore.nar.events import (
    ArchiveEnd,
    DirectoryEnd,
    DirectoryStart,
    Event,
    FileChunk,
    FileEnd,
    RegularFile,
    Symlink,
)

CASE_HACK_SUFFIX: Final = b"~nix~case~hack~"
MAX_NAME: Final = 255

FileNode: TypeAlias = tuple[Literal["file"], bytes, bool]
SymlinkNode: TypeAlias = tuple[Literal["symlink"], bytes]
DirNode: TypeAlias = tuple[Literal["dir"], "Tree"]
Node: TypeAlias = FileNode | SymlinkNode | DirNode
Tree: TypeAlias = dict[bytes, Node]

PathArg: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]

# -- names ------------------------------------------------------------------------------------------------


def is_valid_name(name: bytes, max_size: int = MAX_NAME) -> bool:
    """The NAR name rule, written out independently of the parser's."""
    return (
        0 < len(name) <= max_size
        and name not in (b".", b"..")
        and b"/" not in name
        and b"\0" not in name
        and CASE_HACK_SUFFIX not in name
    )


def _sanitise(raw: bytes) -> bytes:
    """Turn arbitrary bytes into name material: `/` and NUL become other bytes (cheaper than filtering)."""
    return raw.replace(b"/", b"_").replace(b"\0", b"\x01")


# Names the case hack and the folds care about: ASCII case pairs, the same letter composed (NFC) and
# decomposed (NFD), Unicode case pairs, letters whose case folding changes their length, a sign that folds
# to ASCII (KELVIN SIGN -> k), names made of dots, and bytes that are not UTF-8.
INTERESTING_NAMES: Final = (
    b"a",
    b"A",
    b"b",
    b"B",
    b"aa",
    b"Aa",
    b"AA",
    b"\xc3\xa2",  # a with circumflex, NFC
    b"a\xcc\x82",  # the same, NFD
    b"\xc3\x82",  # A with circumflex, NFC
    b"A\xcc\x82",  # the same, NFD
    b"\xc3\xa9",  # e with acute, NFC
    b"e\xcc\x81",  # the same, NFD
    b"\xc3\x89",  # E with acute, NFC
    b"\xc3\x9f",  # sharp s
    b"\xe1\xba\x9e",  # capital sharp s
    b"ss",
    b"SS",
    b"\xe2\x84\xaa",  # KELVIN SIGN
    b"k",
    b"K",
    b"\xcf\x83",  # sigma
    b"\xce\xa3",  # capital sigma
    b"\xcf\x82",  # final sigma
    b"...",
    b".a",
    b"-",
    b"~",
    b"\xff",
    b"\xc3",
    b"a\xff",
    b"A\xff",
)

_ASCII_ALPHABET: Final = "aAbBzZ09.-_~"
_UNICODE_ALPHABET: Final = (
    "aAeEsSkK\u00e2\u00c2\u00e9\u00c9\u00df\u1e9e\u017f\u212a\u03c3\u03a3\u03c2\u00f6\u00d6\u0301\u0302"
)
_NORMAL_FORMS: Final = ("NFC", "NFD")


def _normalise(form: str, text: str) -> str:
    return unicodedata.normalize(form, text)  # type: ignore[arg-type]


@functools.cache
def ascii_names(max_size: int = 8) -> st.SearchStrategy[bytes]:
    """Short ASCII names from a small alphabet, so that case pairs come up often."""
    return (
        st.text(alphabet=_ASCII_ALPHABET, min_size=1, max_size=max_size).map(str.encode).filter(is_valid_name)
    )


@functools.cache
def utf8_names(max_size: int = MAX_NAME) -> st.SearchStrategy[bytes]:
    """UTF-8 names, NFC or NFD, from letters with case and normalisation variants, and from anywhere."""
    alphabet = st.one_of(
        st.sampled_from(_UNICODE_ALPHABET),
        st.characters(codec="utf-8", exclude_characters="/\0"),
    )
    return (
        st.builds(
            _normalise, st.sampled_from(_NORMAL_FORMS), st.text(alphabet=alphabet, min_size=1, max_size=8)
        )
        .map(str.encode)
        .filter(lambda name: is_valid_name(name, max_size))
    )


@functools.cache
def binary_names(min_size: int = 1, max_size: int = MAX_NAME) -> st.SearchStrategy[bytes]:
    """Any bytes that make a valid name (most of them are not UTF-8)."""
    return (
        st.binary(min_size=min_size, max_size=max_size)
        .map(_sanitise)
        .filter(lambda name: is_valid_name(name, max_size))
    )


@functools.cache
def entry_names(max_size: int = MAX_NAME) -> st.SearchStrategy[bytes]:
    """Valid NAR entry names, biased toward short ASCII, case variants and Unicode variants."""
    return st.one_of(
        ascii_names(min(8, max_size)),
        st.sampled_from([n for n in INTERESTING_NAMES if len(n) <= max_size]),
        ascii_names(min(8, max_size)),
        utf8_names(max_size),
        binary_names(1, min(16, max_size)),
        binary_names(max(1, max_size - 40), max_size),
    )


# Spellings of a text that a case-insensitive, normalisation-insensitive filesystem takes as one name.
_TEXT_SPELLINGS: Final[tuple[Callable[[str], str], ...]] = (
    str.upper,
    str.lower,
    str.swapcase,
    str.title,
    str.casefold,
    lambda s: unicodedata.normalize("NFC", s),
    lambda s: unicodedata.normalize("NFD", s),
    lambda s: unicodedata.normalize("NFC", s.upper()),
    lambda s: unicodedata.normalize("NFD", s.upper()),
    lambda s: unicodedata.normalize("NFC", s.lower()),
    lambda s: unicodedata.normalize("NFD", s.lower()),
)
# Strategies built once: building them inside a draw costs more than the draw.
_SPELLING: Final = st.integers(0, len(_TEXT_SPELLINGS))  # the last one: flip the case of ASCII letters
_FLIPS: Final = st.integers(0, (1 << 64) - 1)  # bit i % 64 flips the case of byte i


def _draw_variant(draw: st.DrawFn, name: bytes, max_size: int) -> bytes:
    choice = draw(_SPELLING)
    variant = None
    if choice < len(_TEXT_SPELLINGS):
        with contextlib.suppress(UnicodeDecodeError):
            variant = _TEXT_SPELLINGS[choice](name.decode("utf-8")).encode()
    if variant is None:
        flips = draw(_FLIPS)
        variant = bytes(
            b ^ 0x20 if flips >> (i % 64) & 1 and (0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A) else b
            for i, b in enumerate(name)
        )
    return variant if is_valid_name(variant, max_size) else name


@st.composite
def case_variants(draw: st.DrawFn, name: bytes, max_size: int = MAX_NAME) -> bytes:
    """Another spelling of `name` (or `name` itself): ASCII letters with their case flipped and, for
    UTF-8, Unicode case and NFC/NFD spellings. The ASCII ones fold to the same key as `name` under both
    folds; the Unicode ones nearly always under `Fold.APFS` (not all: DOTLESS I upper-cases to I)."""
    return _draw_variant(draw, name, max_size)


def _foldable(name: bytes) -> bool:
    """No fold turns the name into one containing the suffix (e.g. `~NIX~CASE~HACK~`): Nix's rule
    makes such names land on a hacked name of another entry (see test_casehack_roundtrip)."""
    return all(CASE_HACK_SUFFIX not in fold_key(name, fold) for fold in Fold)


_BASE_NAMES: Final = st.lists(
    st.one_of(
        ascii_names(6),
        st.sampled_from(INTERESTING_NAMES),
        st.builds(
            _normalise,
            st.sampled_from(_NORMAL_FORMS),
            st.text(alphabet=_UNICODE_ALPHABET, min_size=1, max_size=4),
        )
        .map(str.encode)
        .filter(is_valid_name),
    ),
    min_size=1,
    max_size=3,
    unique=True,
)
_VARIANT_COUNT: Final = st.integers(0, 4)


@functools.cache
def colliding_names(max_size: int = 200) -> st.SearchStrategy[list[bytes]]:
    """The sorted, distinct names of one directory, in groups that collide by case or normalisation:
    a few base names, some spellings of each, and a few unrelated names.

    `max_size` defaults to 200 so that a name with `~nix~case~hack~N` appended still fits in 255 bytes.
    """
    others = st.lists(entry_names(max_size), max_size=2)

    @st.composite
    def draw_names(draw: st.DrawFn) -> list[bytes]:
        bases = draw(_BASE_NAMES)
        names = set(bases)
        for base in bases:
            names.update(_draw_variant(draw, base, max_size) for _ in range(draw(_VARIANT_COUNT)))
        names.update(draw(others))
        return sorted(n for n in names if is_valid_name(n, max_size) and _foldable(n))

    return draw_names()


@functools.cache
def symlink_targets() -> st.SearchStrategy[bytes]:
    """Symlink targets: 1..200 bytes without NUL, often path-like."""
    return st.one_of(
        st.text(alphabet="ab./-_", min_size=1, max_size=40).map(str.encode),
        st.binary(min_size=1, max_size=200).map(lambda t: t.replace(b"\0", b"\x01")),
    )


@functools.cache
def file_contents() -> st.SearchStrategy[bytes]:
    """File contents: mostly short (every padding length comes up), sometimes a few KiB."""
    return st.one_of(st.binary(max_size=24), st.binary(max_size=300), st.binary(min_size=1000, max_size=5000))


# -- trees ------------------------------------------------------------------------------------------------


_KINDS: Final = st.sampled_from(("file", "file", "symlink", "dir", "dir"))
_LEAF_KINDS: Final = st.sampled_from(("file", "symlink"))


def _draw_entries(
    draw: st.DrawFn,
    sibling_names: st.SearchStrategy[list[bytes]],
    depth: int,
    budget: list[int],
) -> Tree:
    names = draw(sibling_names)[: max(0, budget[0])]
    budget[0] -= len(names)
    entries: Tree = {}
    for name in names:
        kind = draw(_KINDS if depth > 0 else _LEAF_KINDS)
        if kind == "file":
            entries[name] = ("file", draw(file_contents()), draw(st.booleans()))
        elif kind == "symlink":
            entries[name] = ("symlink", draw(symlink_targets()))
        else:
            entries[name] = ("dir", _draw_entries(draw, sibling_names, depth - 1, budget))
    return entries


@st.composite
def trees(
    draw: st.DrawFn,
    sibling_names: st.SearchStrategy[list[bytes]] | None = None,
    max_nodes: int = 30,
    max_depth: int = 5,
) -> Tree:
    """The contents of a root directory: at most `max_nodes` nodes below it, directories nested at most
    `max_depth` deep, empty directories included. `sibling_names` draws the names of one directory
    (distinct); by default up to 5 names from `entry_names()`, or sometimes `colliding_names()`."""
    if sibling_names is None:
        sibling_names = _default_siblings()
    return _draw_entries(draw, sibling_names, max_depth - 1, [max_nodes])


@functools.cache
def _default_siblings() -> st.SearchStrategy[list[bytes]]:
    return st.one_of(
        st.lists(entry_names(), max_size=5, unique=True),
        st.lists(entry_names(), max_size=5, unique=True),
        colliding_names(MAX_NAME),
    )


def colliding_trees(max_nodes: int = 30, max_depth: int = 4) -> st.SearchStrategy[Tree]:
    """Trees whose directories often hold names that collide by case or normalisation (names of at most
    200 bytes, so that the case hack's suffix fits)."""
    return trees(
        sibling_names=st.one_of(
            colliding_names(),
            st.lists(entry_names(200).filter(_foldable), max_size=3, unique=True),
        ),
        max_nodes=max_nodes,
        max_depth=max_depth,
    )


def _as_dir(tree: Tree) -> Node:
    return ("dir", tree)


def _file_node(contents: bytes, executable: bool) -> Node:
    return ("file", contents, executable)


def _symlink_node(target: bytes) -> Node:
    return ("symlink", target)


def root_nodes(max_nodes: int = 30, max_depth: int = 5) -> st.SearchStrategy[Node]:
    """The root of an archive: mostly a directory, sometimes a lone file or symlink."""
    return st.one_of(
        trees(max_nodes=max_nodes, max_depth=max_depth).map(_as_dir),
        st.builds(_file_node, file_contents(), st.booleans()),
        st.builds(_symlink_node, symlink_targets()),
        trees(max_nodes=max_nodes, max_depth=max_depth).map(_as_dir),
    )


def as_node(tree: Tree | Node) -> Node:
    """A `Tree` as the directory node holding it; a node as it is."""
    if isinstance(tree, dict):
        return ("dir", tree)
    return tree


def iter_nodes(tree: Tree | Node, path: tuple[bytes, ...] = ()) -> Iterable[tuple[tuple[bytes, ...], Node]]:
    """Every node with its path, depth first, entries in byte order."""
    node = as_node(tree)
    yield path, node
    if node[0] == "dir":
        entries = node[1]
        for name in sorted(entries):
            yield from iter_nodes(entries[name], (*path, name))


# -- events and bytes ---------------------------------------------------------------------------------------


def tree_to_events(tree: Tree | Node, chunk_size: int | None = None) -> list[Event]:
    """The NAR events of `tree`, entries sorted, as an encoder takes them: `contents_offset` and the
    `ArchiveEnd` size are 0 (as `iter_tree_events` yields them). Contents come as one `FileChunk`
    (none for an empty file), or in pieces of `chunk_size` bytes."""
    events: list[Event] = []
    _node_events((), as_node(tree), chunk_size, events)
    events.append(ArchiveEnd(0))
    return events


def _node_events(path: tuple[bytes, ...], node: Node, chunk_size: int | None, out: list[Event]) -> None:
    if node[0] == "file":
        _, contents, executable = node
        out.append(RegularFile(path, executable, len(contents), 0))
        step = chunk_size or max(1, len(contents))
        out.extend(FileChunk(contents[i : i + step]) for i in range(0, len(contents), step))
        out.append(FileEnd(path))
    elif node[0] == "symlink":
        out.append(Symlink(path, node[1]))
    else:
        entries = node[1]
        out.append(DirectoryStart(path))
        for name in sorted(entries):
            _node_events((*path, name), entries[name], chunk_size, out)
        out.append(DirectoryEnd(path))


def encode_events(events: Iterable[Event]) -> bytes:
    """The archive the encoder makes of `events`."""
    encoder = NarEncoder()
    data = b"".join(encoder.send(event) for event in events)
    assert encoder.size == len(data)
    return data


def encode_tree(tree: Tree | Node) -> bytes:
    """The NAR of `tree`, written by `tests/narbuild.py`, which shares no code with xstore: the property
    tests feed xstore archives it did not make itself."""
    return tree_nar(tree)


def comparable_events(events: Iterable[Event]) -> list[Event]:
    """What stays the same whatever the chunking and the source of `events`: each file's contents merged
    into one `FileChunk` (none for an empty file), `RegularFile.contents_offset` and `ArchiveEnd.size`
    set to 0 (they are positions in an archive, which the dump side does not know)."""
    out: list[Event] = []
    pending: list[bytes] = []
    for event in events:
        if isinstance(event, FileChunk):
            pending.append(event.data)
            continue
        if pending:
            merged = b"".join(pending)
            if merged:
                out.append(FileChunk(merged))
            pending.clear()
        if isinstance(event, RegularFile):
            out.append(RegularFile(event.path, event.executable, event.size, 0))
        elif isinstance(event, ArchiveEnd):
            out.append(ArchiveEnd(0))
        else:
            out.append(event)
    if pending and (merged := b"".join(pending)):  # events cut short inside a file
        out.append(FileChunk(merged))
    return out


def file_contents_by_path(events: Iterable[Event]) -> dict[tuple[bytes, ...], tuple[RegularFile, bytes]]:
    """Each regular file's header event and its contents (chunks joined)."""
    files: dict[tuple[bytes, ...], tuple[RegularFile, bytes]] = {}
    header: RegularFile | None = None
    chunks: list[bytes] = []
    for event in events:
        if isinstance(event, RegularFile):
            header, chunks = event, []
        elif isinstance(event, FileChunk):
            chunks.append(event.data)
        elif isinstance(event, FileEnd):
            assert header is not None
            assert header.path == event.path
            files[event.path] = (header, b"".join(chunks))
            header = None
    return files


# -- chunking ---------------------------------------------------------------------------------------------


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets, without empty pieces (an empty piece means end of input)."""
    bounds = sorted({0, len(data), *(c for c in cuts if 0 < c < len(data))})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def draw_chunks(data: st.DataObject, blob: bytes, max_cuts: int = 24) -> list[bytes]:
    """`blob` split into non-empty pieces, drawn from `data`: either at random offsets, or in pieces of
    one small fixed size (1 to 17 bytes, so that every alignment against 8-byte fields comes up)."""
    if len(blob) <= 1:
        return [blob] if blob else []
    if data.draw(st.booleans(), label="fixed size"):
        size = data.draw(st.integers(1, 17), label="chunk size")
        return [blob[i : i + size] for i in range(0, len(blob), size)]
    cuts = data.draw(st.lists(st.integers(1, len(blob) - 1), max_size=max_cuts), label="cuts")
    return split_at(blob, cuts)


class ChunkReader:
    """A `read(n)` over pre-cut chunks: each call returns (up to n bytes of) the next chunk, then `b""`."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = deque(c for c in chunks if c)
        self.calls = 0

    def read(self, n: int) -> bytes:
        self.calls += 1
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft()
        if len(chunk) > n:
            self._chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        return chunk

    @property
    def remaining(self) -> bytes:
        """What has not been read yet."""
        return b"".join(self._chunks)


# -- disk ------------------------------------------------------------------------------------------------


def write_tree(root: PathArg, tree: Tree | Node) -> None:
    """Create `tree` at `root` (which must not exist): files 0644/0755, directories 0755, whatever the
    umask; names used as bytes."""
    _write_node(os.fsencode(root), as_node(tree))


def _write_node(path: bytes, node: Node) -> None:
    if node[0] == "file":
        _, contents, executable = node
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(contents)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o755 if executable else 0o644)
        finally:
            os.close(fd)
    elif node[0] == "symlink":
        os.symlink(node[1], path)
    else:
        os.mkdir(path, 0o700)
        for name, child in node[1].items():
            _write_node(path + b"/" + name, child)
        os.chmod(path, 0o755)  # noqa: S103 -- the mode a NAR directory has, on purpose


def read_tree(root: PathArg, *, check_modes: bool = False) -> Node:
    """The tree at `root` (not followed if a symlink) as a model. With `check_modes`, assert that every
    file's mode is exactly 0644 or 0755 and every directory's 0755 (what a restore must produce)."""
    path = os.fsencode(root)
    st_ = os.lstat(path)
    mode = stat.S_IMODE(st_.st_mode)
    shown = os.fsdecode(path)
    if stat.S_ISLNK(st_.st_mode):
        return ("symlink", os.readlink(path))
    if stat.S_ISREG(st_.st_mode):
        executable = bool(st_.st_mode & stat.S_IXUSR)
        if check_modes:
            assert mode == (0o755 if executable else 0o644), f"{shown}: mode {mode:o}"
        with open(path, "rb") as f:
            contents = f.read()
        return ("file", contents, executable)
    if stat.S_ISDIR(st_.st_mode):
        if check_modes:
            assert mode == 0o755, f"{shown}: mode {mode:o}"
        return (
            "dir",
            {
                name: read_tree(path + b"/" + name, check_modes=check_modes)
                for name in sorted(os.listdir(path))
            },
        )
    raise AssertionError(f"{shown}: unexpected file type {stat.S_IFMT(st_.st_mode):o}")
