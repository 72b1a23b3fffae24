"""trio drivers for the same NAR parser, encoder and tree writer.

The parser and encoder are pure computation, so they run on the trio thread; every blocking filesystem
call runs in a worker thread (`trio.to_thread`), batched so that a thread hop carries about a megabyte
of work rather than one event. A dump reads the tree in a worker while the trio thread sends; a restore
parses a batch, then writes it in a worker.

Cancellation: all three functions may be cancelled at any await; `restore_stream` then removes its
staging directory, exactly as the blocking driver does on an exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

import trio

from xstore.casehack import CaseHackMode, Fold
from xstore.errors import TrailingDataError
from xstore.nar.dump import PathArg, dump_path
from xstore.nar.events import NEED_DATA, ArchiveEnd, Event, FileChunk
from xstore.nar.parser import NarParser
from xstore.nar.restore import RestoreResult, TreeWriter

CHUNK: Final = 1 << 20


async def receive_events(
    stream: trio.abc.ReceiveStream, parser: NarParser | None = None
) -> AsyncIterator[Event]:
    """Yield the events of the archive received from `stream`, ending with `ArchiveEnd`.

    Bytes received beyond the archive stay in `parser.unused_data`. Raises `NarError` on invalid input
    (including a stream that ends early).
    """
    if parser is None:
        parser = NarParser()
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            parser.receive_data(await stream.receive_some(CHUNK))
            continue
        yield event
        if type(event) is ArchiveEnd:
            return


async def restore_stream(
    dest: PathArg,
    stream: trio.abc.ReceiveStream,
    *,
    case_hack: CaseHackMode = CaseHackMode.AUTO,
    fold: Fold | None = None,
    allow_trailing: bool = False,
) -> RestoreResult:
    """Restore the archive received from `stream` to `dest` (which must not exist); see
    `nar.restore.restore_path` for the rules. Nothing is left behind on error or cancellation."""
    writer = await trio.to_thread.run_sync(lambda: TreeWriter(dest, case_hack=case_hack, fold=fold))
    parser = NarParser()

    def apply(batch: list[Event]) -> None:
        for event in batch:
            writer.handle(event)

    try:
        batch: list[Event] = []
        pending = 0
        async for event in receive_events(stream, parser):
            batch.append(event)
            if type(event) is FileChunk:
                pending += len(event.data)
            if pending >= CHUNK or len(batch) >= 4096:
                await trio.to_thread.run_sync(apply, batch)
                batch, pending = [], 0
        await trio.to_thread.run_sync(apply, batch)
        if not allow_trailing and (parser.unused_data or await stream.receive_some(1)):
            raise TrailingDataError(f"unexpected data after the end of the archive (at byte {parser.offset})")
        await trio.to_thread.run_sync(writer.commit)
    except BaseException:
        writer.abort()
        raise
    return writer.result(parser.offset)


async def dump_to_stream(
    root: PathArg,
    stream: trio.abc.SendStream,
    *,
    case_hack: bool = True,
    exclude: Sequence[str] = (),
) -> int:
    """Send the NAR of the tree at `root` to `stream`; return its size.

    The tree is read in a worker thread while the trio thread sends, with at most a few blocks in
    flight (constant memory).
    """
    send, receive = trio.open_memory_channel[bytes](4)
    token = trio.lowlevel.current_trio_token()

    def produce() -> int:
        try:
            return dump_path(
                root,
                lambda block: trio.from_thread.run(send.send, block, trio_token=token),
                case_hack=case_hack,
                exclude=exclude,
            )
        finally:
            trio.from_thread.run_sync(send.close, trio_token=token)

    size = 0

    async def consume() -> None:
        async with receive:
            async for block in receive:
                await stream.send_all(block)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            size = await trio.to_thread.run_sync(produce, abandon_on_cancel=False)
    except BaseExceptionGroup as group:
        # One failure (a DumpError, a closed stream) is what callers expect to see, not a group.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return size
