"""The blocking and the trio drivers agree: same events, same restored trees, same dumped bytes.

Each example runs its own `trio.run` inside a synchronous Hypothesis test (simpler and sturdier than
combining `@given` with pytest-trio's async tests). Two kinds of trio stream carry the archive: a
lockstep stream, where each `receive_some` returns exactly one chunk the sender sent (so the events
must be identical to the blocking driver's over the same chunks, `FileChunk`s included), and a buffered
memory stream, where chunks may merge (so events are compared with each file's contents merged).
"""

from __future__ import annotations

import os
import tempfile
from typing import Literal

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import (
    ChunkReader,
    Node,
    Tree,
    as_node,
    colliding_trees,
    comparable_events,
    draw_chunks,
    encode_tree,
    read_tree,
    root_nodes,
    write_tree,
)
from xstore.casehack import CaseHackMode, Fold
from xstore.errors import TrailingDataError
from xstore.nar import aio
from xstore.nar.drive import iter_events
from xstore.nar.dump import dump_path
from xstore.nar.events import Event
from xstore.nar.parser import NarParser
from xstore.nar.restore import RestoreResult, restore_path

StreamKind = Literal["lockstep", "memory"]
STREAM_KINDS: tuple[StreamKind, ...] = ("lockstep", "memory")

# Hypothesis keys its caches by tuples of raw choices, where b"" and 0 (or "ab" and b"ab") hash alike;
# a lookup then compares bytes with int or str, which `python -bb` turns into an error inside Hypothesis
# (hypothesis/internal/conjecture/choice.py `choices_key`). Only warnings raised in Hypothesis's own
# modules are ignored: a BytesWarning from xstore still fails the test.

IN_MEMORY = settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
ON_DISK = settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])


def stream_pair(kind: StreamKind) -> tuple[trio.abc.SendStream, trio.abc.ReceiveStream]:
    if kind == "lockstep":
        return trio.testing.lockstep_stream_one_way_pair()
    return trio.testing.memory_stream_one_way_pair()


async def send_chunks(stream: trio.abc.SendStream, chunks: list[bytes]) -> None:
    async with stream:
        for chunk in chunks:
            await stream.send_all(chunk)


def receive_events_trio(chunks: list[bytes], kind: StreamKind) -> tuple[list[Event], bytes]:
    """The events `aio.receive_events` yields for `chunks` sent over a `kind` stream, and the parser's
    `unused_data`."""

    async def main() -> tuple[list[Event], bytes]:
        send, receive = stream_pair(kind)
        parser = NarParser()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_chunks, send, chunks)
            events = [event async for event in aio.receive_events(receive, parser)]
            # Let the sender finish (what follows the archive is not part of this comparison).
            while await receive.receive_some():
                pass
        return events, parser.unused_data

    return trio.run(main)


def restore_trio(dest: bytes, chunks: list[bytes], kind: StreamKind, **options: object) -> RestoreResult:
    async def main() -> RestoreResult:
        send, receive = stream_pair(kind)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_chunks, send, chunks)
            result = await aio.restore_stream(dest, receive, **options)  # type: ignore[arg-type]
            # With `allow_trailing`, what follows the archive is never read: drain it, so that the
            # sender can finish.
            while await receive.receive_some():
                pass
            return result

    return trio.run(main)


def dump_trio(root: bytes, kind: StreamKind, *, case_hack: bool) -> tuple[int, bytes]:
    async def main() -> tuple[int, bytes]:
        send, receive = stream_pair(kind)
        received = bytearray()

        async def collect() -> None:
            while data := await receive.receive_some():
                received.extend(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            async with send:
                size = await aio.dump_to_stream(root, send, case_hack=case_hack)
        return size, bytes(received)

    return trio.run(main)


def dump_sync(root: bytes, *, case_hack: bool) -> bytes:
    blocks: list[bytes] = []
    size = dump_path(root, blocks.append, case_hack=case_hack)
    data = b"".join(blocks)
    assert size == len(data)
    return data


# -- events ---------------------------------------------------------------------------------------------


@IN_MEMORY
@given(root_nodes(), st.sampled_from(STREAM_KINDS), st.data())
def test_receive_events_agrees_with_iter_events(model: Node, kind: StreamKind, data: st.DataObject) -> None:
    archive = encode_tree(model)
    chunks = draw_chunks(data, archive)
    sync_events = list(iter_events(ChunkReader(chunks).read))
    trio_events, unused = receive_events_trio(chunks, kind)
    if kind == "lockstep":
        assert trio_events == sync_events
    assert comparable_events(trio_events) == comparable_events(sync_events)
    assert unused == b""


@IN_MEMORY
@given(root_nodes(max_nodes=10), st.binary(min_size=1, max_size=30), st.data())
def test_receive_events_leaves_trailing_data(model: Node, trailing: bytes, data: st.DataObject) -> None:
    archive = encode_tree(model)
    chunks = draw_chunks(data, archive + trailing)
    reader = ChunkReader(chunks)
    parser = NarParser()
    sync_events = list(iter_events(reader.read, parser))
    assert parser.unused_data + reader.remaining == trailing
    trio_events, unused = receive_events_trio(chunks, "lockstep")
    assert trio_events == sync_events
    assert unused == parser.unused_data


# -- restore ----------------------------------------------------------------------------------------------


@pytest.mark.case_sensitive_tmp
@ON_DISK
@given(
    st.one_of(root_nodes(), colliding_trees().map(as_node)),
    st.sampled_from([(CaseHackMode.OFF, None), (CaseHackMode.ON, Fold.ASCII), (CaseHackMode.ON, Fold.APFS)]),
    st.sampled_from(STREAM_KINDS),
    st.data(),
)
def test_restore_stream_agrees_with_restore_path(
    model: Node, mode: tuple[CaseHackMode, Fold | None], kind: StreamKind, data: st.DataObject
) -> None:
    archive = encode_tree(model)
    chunks = draw_chunks(data, archive)
    case_hack, fold = mode
    with tempfile.TemporaryDirectory() as tmp:
        base = os.fsencode(tmp)
        sync_dest, trio_dest = base + b"/sync", base + b"/trio"
        sync_result = restore_path(sync_dest, ChunkReader(chunks).read, case_hack=case_hack, fold=fold)
        trio_result = restore_trio(trio_dest, chunks, kind, case_hack=case_hack, fold=fold)
        assert trio_result == sync_result
        assert sorted(os.listdir(base)) == [b"sync", b"trio"]
        restored = read_tree(trio_dest, check_modes=True)
        assert restored == read_tree(sync_dest, check_modes=True)
        if case_hack is CaseHackMode.OFF:
            assert restored == model
        assert dump_sync(trio_dest, case_hack=True) == archive


@pytest.mark.case_sensitive_tmp
@ON_DISK
@given(root_nodes(max_nodes=10), st.binary(min_size=1, max_size=20), st.sampled_from(STREAM_KINDS), st.data())
def test_restore_stream_refuses_trailing_data(
    model: Node, trailing: bytes, kind: StreamKind, data: st.DataObject
) -> None:
    chunks = draw_chunks(data, encode_tree(model) + trailing)
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.fsencode(tmp) + b"/out"
        # The error leaves the nursery that runs the sender, so it comes in an exception group.
        with pytest.RaisesGroup(TrailingDataError):
            restore_trio(dest, chunks, kind, case_hack=CaseHackMode.OFF)
        assert os.listdir(tmp) == []
        restore_trio(dest, chunks, kind, case_hack=CaseHackMode.OFF, allow_trailing=True)
        assert read_tree(dest, check_modes=True) == model


# -- dump -------------------------------------------------------------------------------------------------


@pytest.mark.case_sensitive_tmp
@ON_DISK
@given(root_nodes(), st.sampled_from(STREAM_KINDS), st.booleans())
def test_dump_to_stream_agrees_with_dump_path(model: Node, kind: StreamKind, case_hack: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.fsencode(tmp) + b"/root"
        write_tree(root, model)
        expected = dump_sync(root, case_hack=case_hack)
        assert expected == encode_tree(model)
        size, received = dump_trio(root, kind, case_hack=case_hack)
        assert received == expected
        assert size == len(expected)


@pytest.mark.case_sensitive_tmp
@ON_DISK
@given(colliding_trees(), st.sampled_from(Fold), st.sampled_from(STREAM_KINDS))
def test_dump_to_stream_unhacks(tree: Tree, fold: Fold, kind: StreamKind) -> None:
    archive = encode_tree(tree)
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.fsencode(tmp) + b"/out"
        restore_path(dest, ChunkReader([archive]).read, case_hack=CaseHackMode.ON, fold=fold)
        size, received = dump_trio(dest, kind, case_hack=True)
        assert received == archive
        assert size == len(archive)
