"""The sans-IO NAR parser: bytes in, events out.

Strategy (after h11): the caller feeds whatever bytes it has with `receive_data()` (`b""` meaning end of
input) and pulls events with `next_event()`, which returns `NEED_DATA` when it cannot go on. Nothing here
reads a file or a socket, so the blocking driver, the trio driver, the listing builder and the export
stream reader all share this one state machine. Each state names what the archive must hold next; the
transitions are the `_STEPS` table at the bottom.

Tokens are read whole before they are looked at, and every token but file contents is bounded (tags 32
bytes, names 255, symlink targets 4095), so the buffer never holds much more than one chunk. Contents
pass through as `FileChunk`s: when a received chunk lies entirely inside a file's contents it is handed on
without a copy.

The rules are those of current Nix (archive.cc `parse`, >= 2.25 with the 2.35 limits), which is strict
where Nix 2.8 was lenient: entries strictly increasing in byte order, fixed field order, zero padding,
valid names and targets, bounded lengths, nesting depth below 64, and no name containing the case-hack
suffix. The parser stops exactly at the end of the archive; bytes after it stay in `unused_data`.
"""

from __future__ import annotations

from collections.abc import Callable

from xstore.errors import NarError, TruncatedError, WireError
from xstore.nar import tokens
from xstore.nar.events import (
    ArchiveEnd,
    DirectoryEnd,
    DirectoryStart,
    Event,
    FileChunk,
    FileEnd,
    RegularFile,
    Symlink,
    WholeFile,
)
from xstore.nar.rules import NAR_MAGIC, name_problem, show, target_problem
from xstore.wire import (
    NAR_MAX_DEPTH,
    NAR_MAX_NAME,
    NAR_MAX_TAG,
    NAR_MAX_TARGET,
    NEED_DATA,
    U64,
    ZEROS,
    Signal,
    parse_string,
)

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Final, NoReturn, Protocol

# Upper bound on one FileChunk's size when contents come out of the buffer (not when passed through).
MAX_CHUNK: Final = 1 << 20
# The largest file a parser with `whole_files` gives as one `WholeFile` (below `drive.BYPASS_MIN`, from
# which a restore has the kernel move contents instead).
WHOLE_FILE_MAX: Final = 256 << 10


if TYPE_CHECKING:

    class _Hasher(Protocol):
        def update(self, data: bytes, /) -> object: ...


class _State:
    """The parser's states: what the archive must hold next. Plain ints (indexes into `_STEPS`), not an
    enum: a step is one tuple index, and nothing is built at import."""

    MAGIC = 0
    NODE_OPEN = 1  # "("
    TYPE_TAG = 2  # "type"
    TYPE = 3  # "regular" | "directory" | "symlink"
    REGULAR_TAG = 4  # "executable" | "contents"
    EXECUTABLE_VALUE = 5  # ""
    CONTENTS_TAG = 6  # "contents"
    SIZE = 7  # u64
    CONTENTS = 8  # raw bytes
    PADDING = 9  # zeros up to a multiple of 8
    TARGET_TAG = 10  # "target"
    TARGET = 11  # symlink target
    NODE_CLOSE = 12  # ")" closing a regular file or symlink
    DIRECTORY_TAG = 13  # "entry" | ")"
    ENTRY_OPEN = 14  # "("
    NAME_TAG = 15  # "name"
    NAME = 16  # entry name
    NODE_TAG = 17  # "node"
    ENTRY_CLOSE = 18  # ")"
    DONE = 19


class _Frame:
    """An open directory: its path and the last entry name seen (for the ordering check)."""

    __slots__ = ("path", "prev_name")

    def __init__(self, path: tuple[bytes, ...]) -> None:
        self.path = path
        self.prev_name: bytes | None = None


class NarParser:
    """Incremental NAR parser.

    `receive_data(data)` appends input; `b""` marks its end. `next_event()` returns the next event,
    `NEED_DATA` when more input is needed, or raises `NarError` (`TruncatedError` when the input ended
    early). After `ArchiveEnd` it keeps returning `ArchiveEnd`; bytes that followed the archive are in
    `unused_data`. The parser holds no resources, so abandoning it (on cancellation) needs no cleanup.

    With a `hasher` (anything with `update(bytes)`, such as `hashlib.sha256()`), exactly the archive's
    bytes go into it as they are consumed, never the bytes after the end: once `ArchiveEnd` has been
    returned, the hasher holds the NAR hash. Hashing and `skip_contents` exclude each other.

    With `whole_files`, a file of at most `WHOLE_FILE_MAX` bytes inside a directory whose bytes up to the
    end of its entry are all buffered (or the root, buffered to the archive's end) is one `WholeFile`
    event instead of `RegularFile`, `FileChunk` and `FileEnd`; anything else (a file not yet buffered
    whole, bad padding, a missing close) is read in single steps as always, which say exactly what is
    wrong.
    """

    def __init__(self, *, hasher: _Hasher | None = None, whole_files: bool = False) -> None:
        self._hasher = hasher
        self._whole_files = whole_files
        self._hashed = 0  # self._buf[:self._hashed] has gone into the hasher
        self._buf = b""
        self._pos = 0
        self._base = 0  # archive offset of self._buf[0]
        self._eof = False
        self._state = _State.MAGIC
        self._stack: list[_Frame] = []
        self._path: tuple[bytes, ...] = ()  # path of the node being read
        self._executable = False
        self._remaining = 0  # contents bytes still to come
        self._size = 0  # size of the current file
        self._token_offset = 0  # offset of the token being looked at, for messages
        self._is_file = False  # the node being closed is a regular file (not a symlink)
        self._end_offset = 0

    # -- input -------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append input. `b""` (or any empty buffer) means the input has ended."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data() after end of input")
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._hasher is not None:
            if self._pos > self._hashed:
                self._hasher.update(self._buf[self._hashed : self._pos])
            self._hashed = 0
        if self._pos >= len(self._buf):
            self._base += len(self._buf)
            self._buf = data
        else:
            self._base += self._pos
            self._buf = self._buf[self._pos :] + data
        self._pos = 0

    @property
    def offset(self) -> int:
        """Archive offset of the next byte the parser will look at."""
        return self._base + self._pos

    @property
    def path(self) -> tuple[bytes, ...]:
        """The path inside the archive of the node being read."""
        return self._path

    @property
    def done(self) -> bool:
        return self._state == _State.DONE

    @property
    def unused_data(self) -> bytes:
        """Bytes received beyond the end of the archive (empty before the end)."""
        return self._buf[self._pos :] if self._state == _State.DONE else b""

    @property
    def contents_remaining(self) -> int:
        """Bytes of the current file's contents not yet returned (0 outside contents)."""
        return self._remaining if self._state == _State.CONTENTS else 0

    def take_buffered_contents(self) -> bytes:
        """The part of the current file's contents that is already buffered, consumed (so that
        `skip_contents` then leaves just what the source still holds). Empty outside contents."""
        if self._state != _State.CONTENTS:
            return b""
        pos = self._pos
        n = min(len(self._buf) - pos, self._remaining)
        self._pos = pos + n
        self._remaining -= n
        return self._buf[pos : pos + n]

    def skip_contents(self) -> int:
        """Drop the rest of the current file's contents instead of returning them as chunks.

        Buffered contents are discarded; the result is how many further bytes the caller must skip in
        its source (by seeking) before it feeds data again. Only valid right after `RegularFile` or a
        `FileChunk`; returns 0 elsewhere.
        """
        if self._state != _State.CONTENTS:
            return 0
        buffered = min(len(self._buf) - self._pos, self._remaining)
        left = self._remaining - buffered
        if left:
            # The buffer is used up and `left` bytes the caller skips count as consumed.
            self._base += len(self._buf) + left
            self._buf = b""
            self._pos = 0
        else:
            self._pos += buffered
        self._remaining = 0
        self._state = _State.PADDING
        return left

    # -- output ------------------------------------------------------------------------------------

    def next_event(self) -> Event | Signal:
        """Return the next event, or `NEED_DATA`. Raises `NarError` on invalid input."""
        steps = _STEPS
        while True:
            result = steps[self._state](self)
            if result is not None:
                return result

    # -- token readers: each returns None when the buffer does not yet hold the whole token --------

    def _need(self) -> Signal:
        if self._eof:
            if self._state == _State.MAGIC and self._base + len(self._buf) == 0:
                raise NarError("input doesn't look like a Nix archive (it is empty)", offset=0)
            raise TruncatedError(
                f"unexpected end of file while reading {_WHAT[self._state]}",
                offset=self._base + len(self._buf),
                path=self._path,
            )
        return NEED_DATA

    def _string(self, max_len: int, what: str) -> bytes | None:
        pos = self._pos
        self._token_offset = self._base + pos
        try:
            parsed = parse_string(self._buf, pos, max_len, what)
        except WireError as e:
            self._fail(e.message)
        if parsed is None:
            return None
        value, self._pos = parsed
        return value

    def _expect(self, framed: bytes, tag: str) -> bool:
        """Consume the tag `tag` (pre-framed as `framed`); False when more data is needed."""
        buf, pos = self._buf, self._pos
        if buf.startswith(framed, pos):
            self._token_offset = self._base + pos
            self._pos = pos + len(framed)
            return True
        got = self._string(NAR_MAX_TAG, "tag")
        if got is None:
            return False
        self._fail(f"expected tag '{tag}', got '{show(got)}'")

    def _fail(self, message: str) -> NoReturn:
        raise NarError(message, offset=self._token_offset, path=self._path)

    # -- states --------------------------------------------------------------------------------------

    def _magic(self) -> Event | Signal | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= 8:
            (n,) = U64.unpack_from(buf, pos)
            if n != len(NAR_MAGIC):
                self._token_offset = 0
                self._fail("input doesn't look like a Nix archive")
        magic = self._string(len(NAR_MAGIC), "magic")
        if magic is None:
            return self._need()
        if magic != NAR_MAGIC:
            self._fail("input doesn't look like a Nix archive")
        self._state = _State.NODE_OPEN
        if self._whole_files:
            return self._whole_root(self._buf, self._pos)
        return None

    def _whole_root(self, buf: bytes, pos: int) -> Event | None:
        """A root that is a small regular file (a text, a script, a patch: many store paths), buffered
        to the archive's end: one `WholeFile` with the archive finished, as the single steps would have
        left it; None, with nothing changed, for anything else."""
        if not buf.startswith(tokens.OPEN_TYPE, pos):
            return None
        header = _regular_header(buf, pos + _OPEN_TYPE_LEN)
        if header is None:
            return None
        executable, size, start = header
        end = _whole_contents_end(buf, start, size, tokens.CLOSE)
        if end is None:
            return None
        close = end + (-size & 7)
        self._pos = close + _CLOSE_LEN
        self._token_offset = self._base + close
        self._end_node()
        return WholeFile((), executable, size, self._base + start, memoryview(buf)[start : start + size])

    def _node_open(self) -> Event | Signal | None:
        if not self._expect(tokens.OPEN, "("):
            return self._need()
        self._state = _State.TYPE_TAG
        return None

    def _type_tag(self) -> Event | Signal | None:
        if not self._expect(tokens.TYPE, "type"):
            return self._need()
        self._state = _State.TYPE
        return None

    def _type(self) -> Event | Signal | None:
        kind = self._string(NAR_MAX_TAG, "file type")
        if kind is None:
            return self._need()
        if kind == b"regular":
            self._executable = False
            self._is_file = True
            self._state = _State.REGULAR_TAG
            return None
        if kind == b"directory":
            self._stack.append(_Frame(self._path))
            self._state = _State.DIRECTORY_TAG
            return DirectoryStart(self._path)
        if kind == b"symlink":
            self._is_file = False
            self._state = _State.TARGET_TAG
            return None
        self._fail(f"unknown file type '{show(kind)}'")

    def _regular_tag(self) -> Event | Signal | None:
        if self._expect_quiet(tokens.CONTENTS):
            self._state = _State.SIZE
            return None
        tag = self._string(NAR_MAX_TAG, "tag")
        if tag is None:
            return self._need()
        if tag == b"executable":
            self._executable = True
            self._state = _State.EXECUTABLE_VALUE
            return None
        self._fail(f"expected tag 'contents', got '{show(tag)}'")

    def _expect_quiet(self, framed: bytes) -> bool:
        if self._buf.startswith(framed, self._pos):
            self._token_offset = self._base + self._pos
            self._pos += len(framed)
            return True
        return False

    def _executable_value(self) -> Event | Signal | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= 8 and U64.unpack_from(buf, pos)[0] != 0:
            self._token_offset = self._base + pos
            self._fail("executable marker has non-empty value")
        if self._string(0, "executable marker") is None:
            return self._need()
        self._state = _State.CONTENTS_TAG
        return None

    def _contents_tag(self) -> Event | Signal | None:
        if not self._expect(tokens.CONTENTS, "contents"):
            return self._need()
        self._state = _State.SIZE
        return None

    def _file_size(self) -> Event | Signal | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 8:
            return self._need()
        (size,) = U64.unpack_from(buf, pos)
        self._pos = pos + 8
        self._size = self._remaining = size
        self._state = _State.CONTENTS
        return RegularFile(self._path, self._executable, size, self._base + pos + 8)

    def _contents(self) -> Event | Signal | None:
        remaining = self._remaining
        if remaining == 0:
            self._state = _State.PADDING
            return None
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail == 0:
            return self._need()
        if pos == 0 and avail <= remaining:
            # The whole received chunk is contents: hand it on as it is.
            self._pos = avail
            self._remaining = remaining - avail
            return FileChunk(buf)
        n = min(avail, remaining, MAX_CHUNK)
        self._pos = pos + n
        self._remaining = remaining = remaining - n
        if not remaining:
            self._state = _State.PADDING
        return FileChunk(buf[pos : pos + n])

    def _padding(self) -> Event | Signal | None:
        pad = -self._size & 7
        buf, pos = self._buf, self._pos
        if len(buf) - pos < pad:
            return self._need()
        if buf[pos : pos + pad] != ZEROS[:pad]:
            self._token_offset = self._base + pos
            self._fail("non-zero padding")
        pos += pad
        if self._stack and buf.startswith(tokens.CLOSE_CLOSE, pos):
            # The common case: the file's node and its directory entry end here.
            self._token_offset = self._base + pos + _CLOSE_LEN
            self._pos = pos + _CLOSE_CLOSE_LEN
            path = self._path
            self._path = self._stack[-1].path
            self._state = _State.DIRECTORY_TAG
            return FileEnd(path)
        self._pos = pos
        self._state = _State.NODE_CLOSE
        return None

    def _target_tag(self) -> Event | Signal | None:
        if not self._expect(tokens.TARGET, "target"):
            return self._need()
        self._state = _State.TARGET
        return None

    def _target(self) -> Event | Signal | None:
        target = self._string(NAR_MAX_TARGET, "symlink target")
        if target is None:
            return self._need()
        problem = target_problem(target)
        if problem is not None:
            self._fail(problem)
        self._state = _State.NODE_CLOSE
        return Symlink(self._path, target)

    def _node_close(self) -> Event | Signal | None:
        if not self._expect(tokens.CLOSE, ")"):
            return self._need()
        # NODE_CLOSE closes a regular file or a symlink; only files get an end event.
        path = self._path
        self._end_node()
        return FileEnd(path) if self._is_file else None

    def _directory_tag(self) -> Event | Signal | None:
        buf, pos = self._buf, self._pos
        if buf.startswith(tokens.ENTRY_NAME, pos):
            event = self._whole_entry(buf, pos)
            if event is not None:
                return event
        if self._expect_quiet(tokens.ENTRY):
            self._state = _State.ENTRY_OPEN
            return None
        tag = self._string(NAR_MAX_TAG, "tag")
        if tag is None:
            return self._need()
        if tag != b")":
            self._fail(f"expected tag 'entry' or ')', got '{show(tag)}'")
        frame = self._stack.pop()
        self._end_node()
        return DirectoryEnd(frame.path)

    def _whole_entry(self, buf: bytes, pos: int) -> Event | None:
        """The common case in one step: an entry whose header (`entry ( name NAME node ( type ...` up to
        a file's size, a symlink's target or a directory's type) is buffered whole and valid. Returns
        its node's event with the state advanced as the single steps would have left it, or None, with
        nothing changed, for anything else (incomplete, invalid, too deep): the single steps then read
        it and say exactly what is wrong."""
        parsed = _framed(buf, pos + _ENTRY_NAME_LEN, NAR_MAX_NAME)
        if parsed is None:
            return None
        name, node = parsed
        if not buf.startswith(tokens.NODE_OPEN_TYPE, node):
            return None
        kind = node + _NODE_OPEN_TYPE_LEN
        frame = self._stack[-1]
        prev = frame.prev_name
        if (prev is not None and name <= prev) or name_problem(name) is not None:
            return None
        path = (*frame.path, name)
        if len(path) >= NAR_MAX_DEPTH:
            return None
        event: Event
        header = _regular_header(buf, kind)
        if header is not None:
            executable, size, start = header
            end = _whole_contents_end(buf, start, size, tokens.CLOSE_CLOSE) if self._whole_files else None
            if end is not None:
                pad = -size & 7
                self._pos = end + pad + _CLOSE_CLOSE_LEN
                self._token_offset = self._base + end + pad + _CLOSE_LEN
                self._state = _State.DIRECTORY_TAG
                frame.prev_name = name
                self._path = frame.path
                return WholeFile(path, executable, size, self._base + start, memoryview(buf)[start:end])
            self._pos = start
            self._executable = executable
            self._is_file = True
            self._size = self._remaining = size
            self._state = _State.CONTENTS
            event = RegularFile(path, executable, size, self._base + start)
        elif buf.startswith(tokens.DIRECTORY, kind):
            self._pos = kind + _DIRECTORY_LEN
            self._stack.append(_Frame(path))
            self._state = _State.DIRECTORY_TAG
            event = DirectoryStart(path)
        elif buf.startswith(tokens.SYMLINK_TARGET, kind):
            parsed = _framed(buf, kind + _SYMLINK_TARGET_LEN, NAR_MAX_TARGET)
            if parsed is None or target_problem(parsed[0]) is not None:
                return None
            target, self._pos = parsed
            self._is_file = False
            self._state = _State.NODE_CLOSE
            event = Symlink(path, target)
        else:
            return None
        self._token_offset = self._base + kind
        frame.prev_name = name
        self._path = path
        return event

    def _entry_open(self) -> Event | Signal | None:
        if not self._expect(tokens.OPEN, "("):
            return self._need()
        self._state = _State.NAME_TAG
        return None

    def _name_tag(self) -> Event | Signal | None:
        if not self._expect(tokens.NAME, "name"):
            return self._need()
        self._state = _State.NAME
        return None

    def _name(self) -> Event | Signal | None:
        name = self._string(NAR_MAX_NAME, "file name")
        if name is None:
            return self._need()
        problem = name_problem(name)
        if problem is not None:
            self._fail(problem)
        frame = self._stack[-1]
        prev = frame.prev_name
        if prev is not None and name <= prev:
            self._fail(f"NAR directory is not sorted ('{show(name)}' after '{show(prev)}')")
        frame.prev_name = name
        self._path = (*frame.path, name)
        self._state = _State.NODE_TAG
        return None

    def _node_tag(self) -> Event | Signal | None:
        if not self._expect(tokens.NODE, "node"):
            return self._need()
        if len(self._path) >= NAR_MAX_DEPTH:
            self._fail(f"NAR directory nesting exceeds maximum depth of {NAR_MAX_DEPTH}")
        self._state = _State.NODE_OPEN
        return None

    def _entry_close(self) -> Event | Signal | None:
        if not self._expect(tokens.CLOSE, ")"):
            return self._need()
        self._state = _State.DIRECTORY_TAG
        self._path = self._stack[-1].path
        return None

    def _done(self) -> Event | Signal | None:
        return ArchiveEnd(self._end_offset)

    def _end_node(self) -> None:
        """A node is complete: go back to its directory, or finish the archive."""
        if self._stack:
            self._state = _State.ENTRY_CLOSE
        else:
            self._state = _State.DONE
            self._end_offset = self._base + self._pos
            if self._hasher is not None:
                self._hasher.update(self._buf[self._hashed : self._pos])
                self._hashed = self._pos


def _regular_header(buf: bytes, kind: int) -> tuple[bool, int, int] | None:
    """At `kind` (a node's type): a regular file's type, executable flag and size, buffered whole, as
    (executable, size, where its contents start); None for any other node or one not buffered so far."""
    executable = buf.startswith(tokens.REGULAR_EXEC_CONTENTS, kind)
    if not executable and not buf.startswith(tokens.REGULAR_CONTENTS, kind):
        return None
    size_at = kind + (_REGULAR_EXEC_CONTENTS_LEN if executable else _REGULAR_CONTENTS_LEN)
    if len(buf) - size_at < 8:
        return None
    (size,) = U64.unpack_from(buf, size_at)
    return executable, size, size_at + 8


def _whole_contents_end(buf: bytes, start: int, size: int, closing: bytes) -> int | None:
    """Where a file's contents of `size` bytes from `start` end, when they are at most `WHOLE_FILE_MAX`
    bytes and buffered with their zero padding and the `closing` tokens after them; else None."""
    if size > WHOLE_FILE_MAX:
        return None
    end = start + size
    pad = -size & 7
    if len(buf) < end + pad + len(closing) or buf[end : end + pad] != ZEROS[:pad]:
        return None
    return end if buf.startswith(closing, end + pad) else None


def _framed(buf: bytes, pos: int, max_len: int) -> tuple[bytes, int] | None:
    """`wire.parse_string` for the one-step entry reader: None for anything it would not take as it is
    (incomplete, too long, bad padding), which the single steps then read and report."""
    try:
        return parse_string(buf, pos, max_len)
    except WireError:
        return None


_ENTRY_NAME_LEN: Final = len(tokens.ENTRY_NAME)
_NODE_OPEN_TYPE_LEN: Final = len(tokens.NODE_OPEN_TYPE)
_OPEN_TYPE_LEN: Final = len(tokens.OPEN_TYPE)
_REGULAR_CONTENTS_LEN: Final = len(tokens.REGULAR_CONTENTS)
_REGULAR_EXEC_CONTENTS_LEN: Final = len(tokens.REGULAR_EXEC_CONTENTS)
_DIRECTORY_LEN: Final = len(tokens.DIRECTORY)
_SYMLINK_TARGET_LEN: Final = len(tokens.SYMLINK_TARGET)
_CLOSE_LEN: Final = len(tokens.CLOSE)
_CLOSE_CLOSE_LEN: Final = len(tokens.CLOSE_CLOSE)

_WHAT: Final[dict[int, str]] = {
    _State.MAGIC: "the archive header",
    _State.NODE_OPEN: "a node",
    _State.TYPE_TAG: "a node's type",
    _State.TYPE: "a node's type",
    _State.REGULAR_TAG: "a regular file",
    _State.EXECUTABLE_VALUE: "a regular file",
    _State.CONTENTS_TAG: "a regular file",
    _State.SIZE: "a file's size",
    _State.CONTENTS: "a file's contents",
    _State.PADDING: "a file's padding",
    _State.TARGET_TAG: "a symlink",
    _State.TARGET: "a symlink's target",
    _State.NODE_CLOSE: "the end of a node",
    _State.DIRECTORY_TAG: "a directory",
    _State.ENTRY_OPEN: "a directory entry",
    _State.NAME_TAG: "a directory entry",
    _State.NAME: "a file name",
    _State.NODE_TAG: "a directory entry",
    _State.ENTRY_CLOSE: "the end of a directory entry",
    _State.DONE: "nothing",
}

# Indexed by state.
_STEPS: Final[tuple[Callable[[NarParser], Event | Signal | None], ...]] = (
    NarParser._magic,  # MAGIC
    NarParser._node_open,  # NODE_OPEN
    NarParser._type_tag,  # TYPE_TAG
    NarParser._type,  # TYPE
    NarParser._regular_tag,  # REGULAR_TAG
    NarParser._executable_value,  # EXECUTABLE_VALUE
    NarParser._contents_tag,  # CONTENTS_TAG
    NarParser._file_size,  # SIZE
    NarParser._contents,  # CONTENTS
    NarParser._padding,  # PADDING
    NarParser._target_tag,  # TARGET_TAG
    NarParser._target,  # TARGET
    NarParser._node_close,  # NODE_CLOSE
    NarParser._directory_tag,  # DIRECTORY_TAG
    NarParser._entry_open,  # ENTRY_OPEN
    NarParser._name_tag,  # NAME_TAG
    NarParser._name,  # NAME
    NarParser._node_tag,  # NODE_TAG
    NarParser._entry_close,  # ENTRY_CLOSE
    NarParser._done,  # DONE
)
