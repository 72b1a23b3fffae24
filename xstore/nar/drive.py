"""The blocking driver around the NAR parser: a read function in, events out.

Every blocking consumer of an archive (restore, listing, indexing, `nar cat`, the store's add
transaction) iterates `iter_events`; the trio twin is `aio.receive_events`. Input comes from `read(n)`,
which returns up to about n bytes and `b""` at the end, like `BinaryIO.read`. The driver stops exactly at
the end of the archive: bytes read beyond it stay in `parser.unused_data` for the caller (an export
stream, a protocol) to go on with.

Consumers that never look at file contents say so (`contents=False`): the parser still checks every byte
but no `FileChunk` events are made, and with `skip` (a seek) the contents are not even read. Consumers
that can have the kernel move large contents straight from the source to their destination
(`copy_file_range`, `splice`) pass `bypass`: the contents of files of at least `BYPASS_MIN` bytes then
reach them as the part already read (a `FileChunk`) and one call `bypass(n)` for the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from xstore.nar.events import NEED_DATA, ArchiveEnd, Event, FileChunk, RegularFile
from xstore.nar.parser import NarParser

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Final

CHUNK: Final = 1 << 20
BYPASS_MIN: Final = 1 << 20  # below this, a kernel copy saves less than the calls it costs


def iter_events(
    read: Callable[[int], bytes],
    parser: NarParser | None = None,
    *,
    contents: bool = True,
    skip: Callable[[int], None] | None = None,
    bypass: Callable[[int], None] | None = None,
) -> Iterator[Event]:
    """Drive `parser` (a new one by default) over `read(n)` until the archive ends.

    Yields every event up to and including `ArchiveEnd`; raises `NarError` (`TruncatedError` when the
    input ends early). With `contents` off, `FileChunk` events are not yielded; `skip(n)`, given with
    `contents` off, advances the source by n bytes instead of reading them (the parser cannot then
    check the padding's neighbours until it reads on, and cannot hash). With `bypass`, the rest of each
    large file's contents after what was buffered is for `bypass(n)` to move (n bytes, straight from
    the source: the parser does not see them, so it cannot hash them either). Closing the generator
    early leaves the source wherever it was.
    """
    if parser is None:
        parser = NarParser()
    receive = parser.receive_data
    next_event = parser.next_event
    while True:
        event = next_event()
        if event is NEED_DATA:
            receive(read(CHUNK))
            continue
        kind = type(event)
        if kind is FileChunk:
            if contents:
                yield event
            continue
        yield event
        if kind is RegularFile:
            if not contents and skip is not None:
                left = parser.skip_contents()
                if left:
                    skip(left)
            elif bypass is not None and isinstance(event, RegularFile) and event.size >= BYPASS_MIN:
                buffered = parser.take_buffered_contents()
                if buffered:
                    yield FileChunk(buffered)
                left = parser.skip_contents()
                if left:
                    bypass(left)
        elif kind is ArchiveEnd:
            return
