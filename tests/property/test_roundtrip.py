"""Round trips of random trees: model -> events -> bytes -> events, and model -> disk -> NAR -> disk.

The parser is fed whole, byte by byte and in random chunks (h11's `t_body_reader`); the events must not
depend on the chunking except for how contents are cut, so they are compared with file chunks merged.
Positions the parser reports (`contents_offset`, `ArchiveEnd.size`, `unused_data`) are checked against
the encoded bytes themselves.

On-disk examples each get a fresh `tempfile.TemporaryDirectory`: a function-scoped `tmp_path` is shared
by all examples of a Hypothesis test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import narbuild
from tests.strategies import (
    ChunkReader,
    Node,
    as_node,
    comparable_events,
    draw_chunks,
    encode_events,
    encode_tree,
    file_contents_by_path,
    iter_nodes,
    read_tree,
    root_nodes,
    tree_to_events,
    write_tree,
)
from xstore.casehack import CaseHackMode
from xstore.errors import NarError, TrailingDataError, TruncatedError
from xstore.nar.dump import dump_path
from xstore.nar.events import NEED_DATA, ArchiveEnd, Event, FileChunk, FileEnd, RegularFile, WholeFile
from xstore.nar.parser import WHOLE_FILE_MAX, NarParser
from xstore.nar.restore import restore_path
from xstore.nar.rules import name_problem, target_problem

# Hypothesis keys its caches by tuples of raw choices, where b"" and 0 (or "ab" and b"ab") hash alike;
# a lookup then compares bytes with int or str, which `python -bb` turns into an error inside Hypothesis
# (hypothesis/internal/conjecture/choice.py `choices_key`). Only warnings raised in Hypothesis's own
# modules are ignored: a BytesWarning from xstore still fails the test.

IN_MEMORY = settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
ON_DISK = settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])


def parse_chunks(
    chunks: Iterable[bytes], parser: NarParser | None = None, events: list[Event] | None = None
) -> tuple[list[Event], NarParser]:
    """Drive a parser as the drivers do: feed the next chunk only on `NEED_DATA`, `b""` once they run
    out; stop at `ArchiveEnd`. Events are appended to `events` (a new list by default) as they come."""
    parser = parser or NarParser()
    pieces = iter(chunks)
    events = [] if events is None else events
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            parser.receive_data(next(pieces, b""))
            continue
        events.append(event)
        if isinstance(event, ArchiveEnd):
            return events, parser


def check_parse(data: bytes, events: list[Event], model: Node) -> None:
    """`events`, parsed from `data`, are those of `model`, and their positions point into `data`."""
    assert comparable_events(events) == comparable_events(tree_to_events(model))
    end = events[-1]
    assert isinstance(end, ArchiveEnd)
    assert end.size == len(data)
    for header, contents in file_contents_by_path(events).values():
        assert header.size == len(contents)
        assert data[header.contents_offset : header.contents_offset + header.size] == contents
    assert encode_events(events) == data


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# -- in memory ----------------------------------------------------------------------------------------------


@IN_MEMORY
@given(root_nodes(), st.integers(1, 9))
def test_encoder_ignores_how_contents_are_chunked(model: Node, chunk_size: int) -> None:
    assert encode_events(tree_to_events(model, chunk_size)) == encode_tree(model)


@IN_MEMORY
@given(root_nodes())
def test_parse_whole(model: Node) -> None:
    # The strategies stay inside the NAR rules, so every test here exercises valid archives.
    for path, node in iter_nodes(model):
        if path:
            assert name_problem(path[-1]) is None, path
        if node[0] == "symlink":
            assert target_problem(node[1]) is None
    data = encode_tree(model)
    events, parser = parse_chunks([data])
    check_parse(data, events, model)
    assert parser.done
    assert parser.unused_data == b""
    assert parser.offset == len(data)
    # After the end it keeps answering ArchiveEnd.
    assert parser.next_event() == ArchiveEnd(len(data))


@IN_MEMORY
@given(root_nodes(), st.data())
def test_parse_random_chunks(model: Node, data: st.DataObject) -> None:
    archive = encode_tree(model)
    chunks = draw_chunks(data, archive)
    events, parser = parse_chunks(chunks)
    check_parse(archive, events, model)
    assert parser.unused_data == b""


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(root_nodes(max_nodes=12))
def test_parse_byte_by_byte(model: Node) -> None:
    archive = encode_tree(model)
    events, _ = parse_chunks(archive[i : i + 1] for i in range(len(archive)))
    check_parse(archive, events, model)


@IN_MEMORY
@given(root_nodes(), st.data())
def test_truncated_archive_is_refused(model: Node, data: st.DataObject) -> None:
    """Any proper prefix followed by end of input is a `TruncatedError` (a plain `NarError` for no input
    at all), after events that are a prefix of the full archive's."""
    archive = encode_tree(model)
    cut = data.draw(st.integers(0, len(archive) - 1), label="cut")
    prefix = archive[:cut]
    parser = NarParser()
    events: list[Event] = []
    with pytest.raises(NarError) as info:
        parse_chunks(draw_chunks(data, prefix), parser, events)
    if cut:
        assert isinstance(info.value, TruncatedError)
        assert info.value.offset == cut
    # The events before the error are a prefix of the full archive's, except that the contents of the
    # last file may be cut short.
    merged = comparable_events(events)
    expected = comparable_events(parse_chunks([archive])[0])
    assert len(merged) < len(expected)
    if merged and isinstance(last := merged[-1], FileChunk):
        assert merged[:-1] == expected[: len(merged) - 1]
        whole = expected[len(merged) - 1]
        assert isinstance(whole, FileChunk)
        assert whole.data.startswith(last.data)
    else:
        assert merged == expected[: len(merged)]


def verdict(chunks: Iterable[bytes]) -> tuple[list[Event], str]:
    """The events a parser gives for `chunks` (contents merged) and how it ended: `ok`, or the error's
    type, message and offset."""
    events: list[Event] = []
    try:
        parse_chunks(chunks, events=events)
    except NarError as e:
        return comparable_events(events), f"{type(e).__name__}: {e} @ {e.offset}"
    return comparable_events(events), "ok"


# Bytes that make the most of a damaged token: lengths of tokens, the tags themselves, NUL and "/".
_DAMAGE = st.sampled_from([b"\0", b"\x01", b"\x07", b"\x08", b"\xff", b"/", b".", b"(", b")", b"e", b"n"])


# Names and targets around every rule: invalid, at and over the limits, with the suffix, and a few
# plain ones that collide and go out of order.
_NAMES = st.sampled_from(
    [b"a", b"b", b"B", b"ab", b"", b".", b"..", b"a/b", b"a\0", b"n" * 255, b"n" * 256, b"A~nix~case~hack~1"]
)
_TARGETS = st.sampled_from([b"t", b"/etc/passwd", b"", b"t\0", b"t" * 4095, b"t" * 4096])


def _hostile_node(
    children: st.SearchStrategy[tuple[narbuild.Token, ...]],
) -> st.SearchStrategy[tuple[narbuild.Token, ...]]:
    entries = st.lists(st.tuples(_NAMES, children), max_size=5)
    return entries.map(lambda items: narbuild.directory(*items))


_HOSTILE_NODES: st.SearchStrategy[tuple[narbuild.Token, ...]] = st.recursive(
    st.one_of(
        st.builds(lambda c, x: narbuild.regular(c, executable=x), st.binary(max_size=20), st.booleans()),
        _TARGETS.map(narbuild.symlink),
    ),
    _hostile_node,
    max_leaves=12,
)


def _deep(depth: int, leaf: tuple[narbuild.Token, ...]) -> tuple[narbuild.Token, ...]:
    node = leaf
    for _ in range(depth):
        node = narbuild.directory((b"d", node))
    return node


def hostile_archives() -> st.SearchStrategy[bytes]:
    """Archives built token by token (`tests/narbuild.py`), entries in any order, names and targets
    breaking every rule, nesting around the depth limit."""
    deep = st.builds(_deep, st.integers(60, 66), _HOSTILE_NODES)
    return st.one_of(
        root_nodes(max_nodes=12).map(encode_tree),
        _hostile_node(_HOSTILE_NODES).map(narbuild.archive),
        deep.map(narbuild.archive),
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_archives(), st.data())
def test_damaged_archive_gets_the_same_verdict_whole_and_byte_by_byte(
    blob: bytes, data: st.DataObject
) -> None:
    """The parser reads a whole buffered entry header in one step and everything else token by token;
    fed byte by byte it never has a whole header. Both must give the same events and the same error
    (type, message, offset) for any archive, valid or not."""
    blob = damaged(blob, data)
    whole = verdict([blob])
    assert verdict(blob[i : i + 1] for i in range(len(blob))) == whole
    assert verdict(draw_chunks(data, blob)) == whole


def damaged(blob: bytes, data: st.DataObject) -> bytes:
    """`blob` with up to three bytes overwritten or runs of bytes cut out."""
    archive = bytearray(blob)
    for _ in range(data.draw(st.integers(0, 3), label="damages")):
        at = data.draw(st.integers(0, len(archive) - 1), label="at")
        if data.draw(st.booleans(), label="overwrite"):
            archive[at : at + 1] = data.draw(_DAMAGE, label="byte")
        else:
            del archive[at : at + data.draw(st.integers(1, 16), label="cut")]
            if not archive:
                break
    return bytes(archive)


def expanded(events: Iterable[Event]) -> list[Event]:
    """Each `WholeFile` as the single steps give it (`RegularFile`, its contents unless empty, `FileEnd`),
    and each file's `FileChunk`s merged into one: what stays the same with and without whole files,
    offsets included."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, WholeFile):
            out.append(RegularFile(event.path, event.executable, event.size, event.contents_offset))
            if event.data:
                out.append(FileChunk(bytes(event.data)))
            out.append(FileEnd(event.path))
        elif isinstance(event, FileChunk) and out and isinstance(out[-1], FileChunk):
            out[-1] = FileChunk(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def whole_files_verdict(chunks: list[bytes], whole_files: bool) -> tuple[list[Event], str, bytes, int]:
    """The events (`expanded`), the end (`ok` or the error with its offset), the hash of what the parser
    consumed and how many `WholeFile`s it gave."""
    hasher = hashlib.sha256()
    events: list[Event] = []
    try:
        parse_chunks(chunks, NarParser(hasher=hasher, whole_files=whole_files), events)
        end = "ok"
    except NarError as e:
        end = f"{type(e).__name__}: {e} @ {e.offset}"
    wholes = sum(isinstance(e, WholeFile) for e in events)
    return expanded(events), end, hasher.digest(), wholes


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_archives(), st.data())
def test_whole_files_are_the_single_steps_in_one(blob: bytes, data: st.DataObject) -> None:
    """A parser asked for whole files gives, for any archive damaged or not and any chunking, the events
    of one that is not (each `WholeFile` standing for a file's `RegularFile`, contents and `FileEnd`,
    at the same offsets), the same error at the same offset, and hashes the same bytes."""
    blob = damaged(blob, data)
    for chunks in ([blob], draw_chunks(data, blob)):
        *plain, wholes = whole_files_verdict(chunks, whole_files=False)
        *whole, _ = whole_files_verdict(chunks, whole_files=True)
        assert whole == plain
        assert wholes == 0


def test_whole_files_only_for_small_files_buffered_to_their_end() -> None:
    big = b"x" * (WHOLE_FILE_MAX + 1)
    blob = narbuild.archive(
        narbuild.directory(
            (b"a", narbuild.regular(b"")),
            (b"b", narbuild.regular(b"hello", executable=True)),
            (b"c", narbuild.regular(big)),
            (b"d", narbuild.directory((b"e", narbuild.regular(b"y" * WHOLE_FILE_MAX)))),
        )
    )
    events, _ = parse_chunks([blob], NarParser(whole_files=True))
    wholes = [e for e in events if isinstance(e, WholeFile)]
    assert [(e.path, e.data, e.executable) for e in wholes] == [
        ((b"a",), b"", False),
        ((b"b",), b"hello", True),
        ((b"d", b"e"), b"y" * WHOLE_FILE_MAX, False),
    ]
    assert [e.path for e in events if type(e) is RegularFile] == [(b"c",)]
    # A file that is the archive's root is whole when the archive is buffered to its end (its node's
    # close), and not when that close has not arrived yet; nor is a file inside whose end is not.
    single = narbuild.archive(narbuild.regular(b"hello", executable=True))
    events, _ = parse_chunks([single], NarParser(whole_files=True))
    assert [type(e) for e in events[:1]] == [WholeFile]
    assert [(e.path, e.data, e.executable, e.size) for e in events[:1] if isinstance(e, WholeFile)] == [
        ((), b"hello", True, 5)
    ]
    assert not any(type(e) is RegularFile for e in events)
    events, _ = parse_chunks([single[:-1], single[-1:]], NarParser(whole_files=True))
    assert not any(isinstance(e, WholeFile) for e in events)
    assert [e.path for e in events if type(e) is RegularFile] == [()]
    cut = blob.index(b"hello") + 2
    events, _ = parse_chunks([blob[:cut], blob[cut:]], NarParser(whole_files=True))
    assert [e.path for e in events if isinstance(e, WholeFile)] == [(b"a",), (b"d", b"e")]


@IN_MEMORY
@given(root_nodes(), st.data())
def test_skip_contents(model: Node, data: st.DataObject) -> None:
    """Skipping every file's contents (seeking over what the buffer does not hold) gives the same
    events without `FileChunk`s, at the same offsets, as `nar/listing.py` relies on."""
    archive = encode_tree(model)
    full, _ = parse_chunks([archive])
    size = data.draw(st.integers(1, 64), label="read size")
    source = io.BytesIO(archive)
    parser = NarParser()
    events: list[Event] = []
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            parser.receive_data(source.read(size))
            continue
        events.append(event)
        if isinstance(event, RegularFile):
            source.seek(parser.skip_contents(), os.SEEK_CUR)
        if isinstance(event, ArchiveEnd):
            break
    assert events == [e for e in full if not isinstance(e, FileChunk)]
    assert parser.offset == len(archive)


@IN_MEMORY
@given(root_nodes(max_nodes=10), st.binary(max_size=40), st.data())
def test_unused_data_is_exactly_what_follows(model: Node, trailing: bytes, data: st.DataObject) -> None:
    archive = encode_tree(model)
    chunks = draw_chunks(data, archive + trailing)

    # As a driver does it: data is fed only when asked for, so what follows the archive is partly in
    # `unused_data` (the rest of the last chunk) and partly never read.
    reader = ChunkReader(chunks)
    events, parser = parse_chunks(iter(lambda: reader.read(1 << 20), b""))
    check_parse(archive, events, model)
    assert parser.offset == len(archive)
    assert parser.unused_data + reader.remaining == trailing

    # Fed everything, the parser still stops at the end and keeps all the rest.
    parser = NarParser()
    for chunk in chunks:
        parser.receive_data(chunk)
    parser.receive_data(b"")
    events = []
    while not isinstance(event := parser.next_event(), ArchiveEnd):
        assert event is not NEED_DATA
        events.append(event)
    check_parse(archive, [*events, event], model)
    assert parser.unused_data == trailing


# -- on disk -----------------------------------------------------------------------------------------------


@pytest.mark.case_sensitive_tmp
@ON_DISK
@given(root_nodes())
def test_dump_equals_encoding_of_model(model: Node) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(os.fsencode(tmp), b"root")
        write_tree(root, model)
        for case_hack in (True, False):
            blocks: list[bytes] = []
            size = dump_path(root, blocks.append, case_hack=case_hack)
            assert b"".join(blocks) == encode_tree(model)
            assert size == len(b"".join(blocks))


@pytest.mark.case_sensitive_tmp
@ON_DISK
@given(root_nodes(), st.sampled_from([0o077, 0o022, 0o002, 0o000, 0o027]), st.data())
def test_restore_then_dump(model: Node, mask: int, data: st.DataObject) -> None:
    """Restoring gives back the model with modes 0644/0755 and directories 0755 whatever the umask, and
    dumping the result gives back the archive."""
    archive = encode_tree(model)
    reader = ChunkReader(draw_chunks(data, archive))
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.path.join(os.fsencode(tmp), b"out")
        with umask(mask):
            result = restore_path(dest, reader.read, case_hack=CaseHackMode.OFF)
        assert os.listdir(tmp) == ["out"]  # no staging directory left beside it
        assert read_tree(dest, check_modes=True) == as_node(model)
        assert result.nar_size == len(archive)
        assert not result.case_hack
        assert result.renamed == 0
        blocks: list[bytes] = []
        dump_path(dest, blocks.append)
        assert b"".join(blocks) == archive


@pytest.mark.case_sensitive_tmp
@ON_DISK
@given(root_nodes(max_nodes=10), st.binary(min_size=1, max_size=20), st.data())
def test_restore_refuses_trailing_data(model: Node, trailing: bytes, data: st.DataObject) -> None:
    archive = encode_tree(model)
    chunks = draw_chunks(data, archive + trailing)
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.path.join(os.fsencode(tmp), b"out")
        with pytest.raises(TrailingDataError):
            restore_path(dest, ChunkReader(chunks).read, case_hack=CaseHackMode.OFF)
        assert os.listdir(tmp) == []
        reader = ChunkReader(chunks)
        result = restore_path(dest, reader.read, case_hack=CaseHackMode.OFF, allow_trailing=True)
        assert result.nar_size == len(archive)
        assert read_tree(dest, check_modes=True) == as_node(model)
