"""Formats around the NAR: Nix's wire framing, the export stream codec, compression, and recognising
what a file is. The export stream parser is fed whole, byte by byte and in random chunks, as the NAR
parser is."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from typer.testing import CliRunner

from tests.helpers import CountingU64
from tests.localstores import export_bytes
from xstore import wire
from xstore.cli.app import app
from xstore.compression import Method, detect, open_reader, open_writer
from xstore.errors import CompressionError, ExportStreamError, WireError, WrongFormatError
from xstore.exportstream import EXPORT_MAGIC, ExportParser, PathEnd, PathStart, StreamEnd, trailer
from xstore.nar.events import NEED_DATA, ArchiveEnd, RegularFile
from xstore.sniff import Kind, expect, identify, open_input
from xstore.store import LocalStore
from xstore.storepath import StorePath, parse_store_path
from xstore.wire import (
    FrameDecoder,
    WireBuffer,
    encode_frame,
    encode_string_list,
    encode_strings,
    encode_u64,
)

T = TypeVar("T")
FIXTURES = Path(__file__).resolve().parents[1] / "data" / "nix-fixtures"
runner = CliRunner()


# -- wire ---------------------------------------------------------------------------------------------------


def test_wire_buffer_reads_whole_groups_or_nothing() -> None:
    buf = WireBuffer(where="test stream")
    data = encode_u64(7) + encode_strings(b"hello") + encode_string_list([b"a", b"bc"])

    def read() -> tuple[int, bytes, list[bytes]]:
        return buf.u64(), buf.string(16), buf.strings(4, 4)

    for byte in data[:-1]:
        buf.feed(bytes([byte]))
        assert buf.attempt(read, "a message") is NEED_DATA
        assert buf.offset == 0  # nothing consumed until the whole group is there
    buf.feed(data[-1:])
    assert buf.attempt(read, "a message") == (7, b"hello", [b"a", b"bc"])
    assert buf.offset == len(data)
    buf.feed(b"")
    with pytest.raises(
        WireError, match=rf"unexpected end of file while reading a message \(at byte {len(data)} "
    ):
        buf.attempt(read, "a message")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode_u64(17) + bytes(24), "string of 17 bytes is too long"),
        (encode_u64(1) + b"a\0\0\0\0\0\0\1", "non-zero padding after string"),
        (encode_u64(5), "the number of items in string list 5 is out of range"),
    ],
)
def test_wire_buffer_bounds(data: bytes, message: str) -> None:
    buf = WireBuffer()
    buf.feed(data)
    with pytest.raises(WireError, match=message):
        buf.attempt(lambda: buf.strings(4, 16) if message.startswith("the number") else buf.string(16), "x")


def _feed_in_pieces(buf: WireBuffer, data: bytes, piece: int, read: Callable[[], T]) -> T:
    for at in range(0, len(data), piece):
        buf.feed(data[at : at + piece])
        got = buf.attempt(read, "a message")
        if got is not NEED_DATA:
            assert at + piece >= len(data)
            return got
    raise AssertionError("the message was never read")


def test_wire_buffer_reads_a_long_list_in_many_pieces_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # 20,000 strings in 200 pieces: each item is looked at about twice (scanned, then cut), not once per
    # piece that arrived before the list was whole (about 2 million looks).
    items = [b"item %d" % i for i in range(20_000)]
    data = encode_u64(5) + encode_string_list(items) + encode_strings(b"after")
    counter = CountingU64()
    monkeypatch.setattr(wire, "U64", counter)
    buf = WireBuffer()

    def read() -> tuple[int, list[bytes], bytes]:
        return buf.u64(), buf.strings(len(items), 16), buf.string(8)

    assert _feed_in_pieces(buf, data, len(data) // 200 + 1, read) == (5, items, b"after")
    assert counter.reads < 3 * len(items)
    assert buf.offset == len(data)


def test_wire_buffer_keeps_a_whole_list_while_later_items_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    # A list that arrived whole is not read again while the rest of its group comes in small pieces.
    items = [b"x" * 20] * 5_000
    data = encode_string_list(items) + encode_strings(b"y" * 40_000)
    counter = CountingU64()
    monkeypatch.setattr(wire, "U64", counter)
    buf = WireBuffer()
    read = lambda: (buf.strings(len(items), 32), buf.string(1 << 16))  # noqa: E731
    list_end = len(encode_string_list(items))
    buf.feed(data[:list_end])
    assert buf.attempt(read, "a message") is NEED_DATA
    got = _feed_in_pieces(buf, data[list_end:], 100, read)
    assert got == (items, b"y" * 40_000)
    assert counter.reads < 3 * len(items) + 2 * (40_000 // 100)


@pytest.mark.parametrize("piece", [1, 3, 8, 13, 64, 1000])
def test_wire_buffer_items_in_any_pieces(piece: int) -> None:
    # The same strings, offsets and errors however the bytes arrive, and nothing consumed before the end.
    items = [b"", b"a", b"abcdefgh", b"abcdefghi", bytes(range(256))]
    data = encode_u64(3) + encode_string_list(items) + encode_u64(9)
    buf = WireBuffer()
    read = lambda: (buf.u64(), buf.strings(8, 256), buf.u64())  # noqa: E731
    assert _feed_in_pieces(buf, data, piece, read) == (3, items, 9)
    bad = encode_u64(3) + encode_strings(b"ok", b"fine") + encode_u64(1) + b"z\0\0\0\0\0\0\1"
    at = 8 + len(encode_strings(b"ok", b"fine"))
    buf = WireBuffer(where="test stream")
    with pytest.raises(WireError, match=rf"non-zero padding after names \(at byte {at} of the test stream\)"):
        _feed_in_pieces(buf, bad, piece, lambda: buf.strings(4, 8, "names"))
    long = encode_u64(2) + encode_strings(b"ok") + encode_strings(b"far too long")
    buf = WireBuffer()
    with pytest.raises(WireError, match=r"names of 12 bytes is too long \(at most 8 allowed\) \(at byte 24 "):
        _feed_in_pieces(buf, long, piece, lambda: buf.strings(4, 8, "names"))


def test_wire_buffer_hands_out_bytes_after_pieces_meet() -> None:
    # Once unread bytes and a new piece are joined, every reader still gives immutable bytes.
    buf = WireBuffer()
    data = encode_strings(b"first", b"second") + encode_u64(4) + b"abcdxyz"
    buf.feed(data[:5])
    buf.feed(data[5:20])
    buf.feed(data[20:])
    got = buf.attempt(lambda: (buf.string(8), buf.string(8), buf.u64(), buf.exact(2)), "x")
    assert got == (b"first", b"second", 4, b"ab")
    assert buf.peek_buffered() == b"cdxyz"
    assert buf.take_buffered(2) == b"cd"
    buf.push_back(b"PQ")
    assert buf.peek_buffered() == b"PQxyz"
    assert not isinstance(got, wire.Signal)
    for value in (got[0], got[1], got[3], buf.peek_buffered(), buf.take_buffered()):
        assert type(value) is bytes


def test_frames() -> None:
    buf = WireBuffer()
    frames = FrameDecoder(buf)
    stream = encode_frame(b"abc") + encode_frame(b"defgh") + encode_frame(b"") + b"rest"
    got = b""
    for byte in stream:
        buf.feed(bytes([byte]))
        while (chunk := frames.next_chunk()) is not NEED_DATA and not frames.done:
            assert isinstance(chunk, bytes)
            got += chunk
        if frames.done:
            break
    assert got == b"abcdefgh"
    assert buf.take_buffered() == b""  # the byte after the closing frame was never fed
    cut = WireBuffer()
    cut.feed(encode_frame(b"abcdef")[:10])
    cut.feed(b"")
    frames = FrameDecoder(cut)
    assert frames.next_chunk() == b"ab"
    with pytest.raises(WireError, match="inside a frame"):
        frames.next_chunk()


# -- the export stream --------------------------------------------------------------------------------------


def parse_all(stream: bytes, chunks: list[int]) -> tuple[list[object], bytes]:
    parser = ExportParser()
    events: list[object] = []
    at = 0
    sizes = iter(chunks)
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            n = next(sizes, len(stream))
            parser.receive_data(stream[at : at + n])
            at += n
            continue
        events.append(event)
        if isinstance(event, StreamEnd):
            return events, parser.unused_data + stream[at:]


def test_export_parser_in_any_chunking(store: LocalStore, filled: list[StorePath]) -> None:
    stream = export_bytes(store, filled) + b"after"
    rng = random.Random(7)
    results = [
        parse_all(stream, [len(stream)]),
        parse_all(stream, [1] * len(stream)),
        parse_all(stream, [rng.randint(1, 300) for _ in range(len(stream))]),
    ]
    first = results[0]
    for events, rest in results:
        assert rest == b"after"
        ends = [e for e in events if isinstance(e, PathEnd)]
        assert [e.path for e in ends] == [e.path for e in first[0] if isinstance(e, PathEnd)]
    ends = [e for e in first[0] if isinstance(e, PathEnd)]
    assert [e.path for e in ends] == [filled[3], filled[0], filled[1], filled[2]]
    for end in ends:
        info = store.require(end.path)
        assert (end.nar_hash, end.nar_size, end.references, end.deriver) == (
            info.nar_hash,
            info.nar_size,
            info.references,
            info.deriver,
        )
        assert stream[end.start : end.start + 8] == encode_u64(1)
    kinds = [type(e).__name__ for e in first[0]]
    assert kinds[0] == "PathStart"
    assert kinds.count("PathStart") == kinds.count("PathEnd") == kinds.count("ArchiveEnd") == 4
    assert isinstance(first[0][-1], StreamEnd)
    assert any(isinstance(e, RegularFile) for e in first[0])


def _one_path_stream(path: StorePath, **overrides: bytes) -> bytes:
    nar = (FIXTURES / "simple.nar").read_bytes()
    tail = overrides.get("trailer", trailer(path, (), None))
    return overrides.get("marker", encode_u64(1)) + nar + tail + encode_u64(0)


P = parse_store_path("/nix/store/" + "a" * 32 + "-x")


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (_one_path_stream(P, marker=encode_u64(2)), "expected a path marker 0 or 1, got 2"),
        (
            _one_path_stream(P, trailer=encode_u64(EXPORT_MAGIC + 1)),
            "no 'NIXE' magic after the NAR",
        ),
        (
            _one_path_stream(
                P,
                trailer=encode_u64(EXPORT_MAGIC)
                + encode_strings(b"/nix/store/bad")
                + encode_u64(0)
                + encode_strings(b"")
                + encode_u64(0),
            ),
            "store path '/nix/store/bad' is not a valid store path",
        ),
        (
            _one_path_stream(P, trailer=encode_u64(EXPORT_MAGIC) + encode_u64(5000) + bytes(5000)),
            "store path of 5000 bytes is too long",
        ),
        (
            _one_path_stream(
                P, trailer=encode_u64(EXPORT_MAGIC) + encode_strings(P.path.encode()) + encode_u64(1 << 40)
            ),
            "the number of references 1099511627776 is out of range",
        ),
        (
            _one_path_stream(
                P,
                trailer=encode_u64(EXPORT_MAGIC) + encode_u64(len(P.path)) + P.path.encode() + b"\1" * 2,
            ),
            "non-zero padding after store path",
        ),
        (_one_path_stream(P)[:-8], "unexpected end of file while reading the next path marker"),
    ],
)
def test_export_parser_errors(stream: bytes, message: str) -> None:
    for chunks in ([len(stream)], [1] * len(stream)):
        with pytest.raises(ExportStreamError, match=message):
            parse_all(stream, chunks)


def test_export_parser_error_offsets() -> None:
    stream = _one_path_stream(P, trailer=encode_u64(EXPORT_MAGIC + 1))
    nar_size = (FIXTURES / "simple.nar").stat().st_size
    with pytest.raises(ExportStreamError) as info:
        parse_all(stream, [len(stream)])
    assert info.value.offset == 8 + nar_size  # type: ignore[attr-defined]
    assert f"(at byte {8 + nar_size} of the export stream)" in str(info.value)


def test_empty_export_stream() -> None:
    events, rest = parse_all(encode_u64(0), [8])
    assert events == [StreamEnd(8)]
    assert rest == b""
    assert not any(isinstance(e, PathStart | ArchiveEnd) for e in events)


# -- compression -----------------------------------------------------------------------------------------

DATA = os.urandom(3000) * 300 + b"abc" * 30000 + bytes(3_000_000)


def compress(data: bytes, method: Method) -> bytes:
    out: list[bytes] = []
    writer = open_writer(out.append, method)
    for at in range(0, len(data), 70_000):
        writer(data[at : at + 70_000])
    writer.finish()
    return b"".join(out)


def read_all(read: object, n: int = 65536) -> bytes:
    assert callable(read)
    parts = []
    while block := read(n):
        assert len(block) <= n  # bounded, however well the input compresses
        parts.append(block)
    return b"".join(parts)


@pytest.mark.parametrize("method", list(Method))
def test_compression_round_trip(method: Method) -> None:
    packed = compress(DATA, method)
    assert detect(packed[:8]) == (None if method in (Method.NONE, Method.BR) else method)
    assert read_all(open_reader(io.BytesIO(packed).read, method)) == DATA
    if method not in (Method.NONE, Method.BR):  # concatenated streams, as parallel compressors write
        assert read_all(open_reader(io.BytesIO(packed + packed).read, method)) == DATA + DATA


def test_zstd_on_several_cores_round_trips() -> None:
    # Nix's parallel-compression: zstd's own worker threads, which write the frame in jobs.
    data = DATA * 4  # several jobs of zstd's workers
    out: list[bytes] = []
    writer = open_writer(out.append, Method.ZSTD, threads=True)
    for at in range(0, len(data), 1 << 20):
        writer(data[at : at + (1 << 20)])
    writer.finish()
    assert read_all(open_reader(io.BytesIO(b"".join(out)).read, Method.ZSTD)) == data


@pytest.mark.parametrize("method", [m for m in Method if m is not Method.NONE])
def test_compression_refuses_truncated_and_corrupt_input(method: Method) -> None:
    packed = compress(DATA, method)
    with pytest.raises(CompressionError, match="ends before its stream does"):
        read_all(open_reader(io.BytesIO(packed[: len(packed) // 2]).read, method))
    corrupt = packed[:20] + b"\x55" * 200 + packed[220:]
    with pytest.raises(CompressionError, match=f"corrupt {method.value} data"):
        read_all(open_reader(io.BytesIO(corrupt).read, method))


# -- recognising what a file is --------------------------------------------------------------------------


def test_identify() -> None:
    nar = (FIXTURES / "simple.nar").read_bytes()
    assert identify(nar[:64]) is Kind.NAR
    assert identify(nar[:5]) is Kind.NAR
    assert identify(encode_u64(1) + nar[:56]) is Kind.EXPORT
    assert identify(encode_u64(0)) is Kind.EXPORT
    assert identify(compress(nar, Method.XZ)[:64]) is Kind.COMPRESSED
    assert identify(b"StorePath: /nix/store/x\n") is Kind.NARINFO
    assert identify(b"StoreDir: /nix/store\n") is Kind.CACHE_INFO
    assert identify(b'{"version":1}') is Kind.JSON
    assert identify(b"") is Kind.EMPTY
    assert identify(b"hello") is Kind.UNKNOWN


@pytest.mark.parametrize("method", [Method.XZ, Method.ZSTD, Method.BZIP2, Method.GZIP])
def test_open_input_unwraps_compression(method: Method) -> None:
    nar = (FIXTURES / "simple.nar").read_bytes()
    kind, found, read = open_input(io.BytesIO(compress(nar, method)).read)
    assert (kind, found) == (Kind.NAR, method)
    assert read_all(read) == nar


def test_expect_names_the_right_command() -> None:
    with pytest.raises(
        WrongFormatError, match=r"'x' is a NAR, not an export stream .*: use 'xstore nar restore'"
    ):
        expect(Kind.NAR, Kind.EXPORT, "'x'")
    with pytest.raises(WrongFormatError, match=r"is an export stream .*, not a NAR: use 'xstore import'"):
        expect(Kind.EXPORT, Kind.NAR, "the input")
    expect(Kind.UNKNOWN, Kind.NAR, "x")  # the parser explains what is wrong with it
    expect(Kind.NAR, Kind.NAR, "x")


def test_cli_says_what_it_was_given(store: LocalStore, filled: list[StorePath], tmp_path: Path) -> None:
    nar = FIXTURES / "simple.nar"
    stream = tmp_path / "closure.export"
    stream.write_bytes(export_bytes(store, filled))
    restore = runner.invoke(app, ["nar", "restore", str(tmp_path / "out"), "-i", str(stream)])
    assert restore.exit_code == 1
    assert "is an export stream ('nix-store --export'), not a NAR: use 'xstore import'" in restore.stderr
    assert not (tmp_path / "out").exists()
    imported = runner.invoke(app, ["import", "--store", str(tmp_path / "root"), "-i", str(nar)])
    assert imported.exit_code == 1
    assert (
        "is a NAR, not an export stream ('nix-store --export'): use 'xstore nar restore'" in imported.stderr
    )
    listed = runner.invoke(app, ["nar", "ls", str(stream)])
    assert listed.exit_code == 1
    assert "use 'xstore import'" in listed.stderr


@pytest.mark.parametrize("method", [Method.XZ, Method.ZSTD, Method.BZIP2])
def test_cli_reads_compressed_input(
    store: LocalStore, filled: list[StorePath], tmp_path: Path, method: Method
) -> None:
    nar = FIXTURES / "case.nar"
    packed = tmp_path / f"case.nar{method.suffix}"
    packed.write_bytes(compress(nar.read_bytes(), method))
    plain_ls = runner.invoke(app, ["nar", "ls", "-R", "--json", str(nar)])
    packed_ls = runner.invoke(app, ["nar", "ls", "-R", "--json", str(packed)])
    assert packed_ls.exit_code == 0, packed_ls.output
    assert packed_ls.stdout == plain_ls.stdout
    cat = runner.invoke(app, ["nar", "cat", str(packed), "/xt_CONNMARK.h"])
    assert cat.exit_code == 0, cat.output
    assert cat.stdout_bytes == runner.invoke(app, ["nar", "cat", str(nar), "/xt_CONNMARK.h"]).stdout_bytes
    out = tmp_path / "out"
    restored = runner.invoke(app, ["nar", "restore", str(out), "-i", str(packed), "--case-hack", "on"])
    assert restored.exit_code == 0, restored.output
    assert {"xt_CONNMARK.h", "xt_CONNmark.h~nix~case~hack~1", "xt_connmark.h~nix~case~hack~2"} <= set(
        os.listdir(out)
    )
    stream = tmp_path / f"closure{method.suffix}"
    stream.write_bytes(compress(export_bytes(store, filled), method))
    imported = runner.invoke(app, ["import", "--store", str(tmp_path / "root"), "-i", str(stream)])
    assert imported.exit_code == 0, imported.output
    assert sorted(imported.stdout.split()) == sorted(p.path for p in filled)


def test_scan_reports_an_export_stream_per_store_path(
    store: LocalStore, filled: list[StorePath], tmp_path: Path
) -> None:
    stream = tmp_path / "closure.export"
    stream.write_bytes(export_bytes(store, filled))
    result = runner.invoke(app, ["casehack", "scan", str(stream), "--json"])
    assert result.exit_code == 3, result.output  # doc holds README and Readme
    import json

    report = json.loads(result.stdout)
    assert sorted(report["storePaths"]) == sorted(p.path for p in filled)
    doc = report["storePaths"][filled[2].path]
    assert doc["collisions"]["ascii"] == [{"directory": "/", "names": ["README", "Readme"]}]
    assert report["storePaths"][filled[0].path]["clean"] is True
    text = runner.invoke(app, ["casehack", "scan", str(stream)])
    assert f"{filled[2].path}: findings" in text.stdout
