"""The sans-IO parser: Nix's fixtures, hostile archives, every chunking."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.narbuild import Raw, archive, directory, nar, regular, symlink
from xstore.errors import NarError, TruncatedError
from xstore.nar.events import (
    NEED_DATA,
    ArchiveEnd,
    DirectoryEnd,
    DirectoryStart,
    Event,
    FileChunk,
    FileEnd,
    RegularFile,
    Symlink,
)
from xstore.nar.parser import NarParser
from xstore.wire import encode_bytes

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "nix-fixtures"


def parse(data: bytes, chunks: list[int] | None = None, *, eof: bool = True) -> tuple[list[Event], NarParser]:
    """All events of `data` fed in pieces of the given sizes (cycled), then end of input."""
    parser = NarParser()
    events: list[Event] = []
    pos = 0
    sizes = chunks or [len(data) or 1]
    turn = 0
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            if pos >= len(data):
                if not eof:
                    return events, parser
                parser.receive_data(b"")
                continue
            size = sizes[turn % len(sizes)]
            turn += 1
            parser.receive_data(data[pos : pos + size])
            pos += size
            continue
        events.append(event)
        if isinstance(event, ArchiveEnd):
            return events, parser


def merged(events: list[Event]) -> list[Event]:
    """Events with each file's chunks joined into one, so chunkings compare equal."""
    out: list[Event] = []
    for e in events:
        if isinstance(e, FileChunk) and out and isinstance(out[-1], FileChunk):
            out[-1] = FileChunk(out[-1].data + e.data)
        else:
            out.append(e)
    return [e for e in out if not (isinstance(e, FileChunk) and not e.data)]


def chunkings(data: bytes) -> list[list[int]]:
    rng = random.Random(len(data))
    return [[len(data) or 1], [1], [3], [8], [7, 13], [rng.randint(1, 64) for _ in range(50)]]


SIMPLE = archive(
    directory(
        (b"a", regular(b"hello", executable=True)),
        (b"b", symlink(b"/etc/passwd")),
        (b"c", directory((b"d", regular(b"")))),
    )
)


def test_events_of_a_small_tree() -> None:
    events, parser = parse(SIMPLE)
    offset = SIMPLE.index(b"hello")
    assert merged(events) == [
        DirectoryStart(()),
        RegularFile((b"a",), True, 5, offset),
        FileChunk(b"hello"),
        FileEnd((b"a",)),
        Symlink((b"b",), b"/etc/passwd"),
        DirectoryStart((b"c",)),
        RegularFile((b"c", b"d"), False, 0, SIMPLE.rindex(encode_bytes(b"contents")) + 24),
        FileEnd((b"c", b"d")),
        DirectoryEnd((b"c",)),
        DirectoryEnd(()),
        ArchiveEnd(len(SIMPLE)),
    ]
    assert parser.done
    assert parser.unused_data == b""


def test_contents_offset_points_at_contents() -> None:
    events, _ = parse(SIMPLE)
    for e in events:
        if isinstance(e, RegularFile):
            assert SIMPLE[e.contents_offset - 8 : e.contents_offset] == e.size.to_bytes(8, "little")


@pytest.mark.parametrize("name", ["simple", "empty-dir", "empty-subdir", "case", "unnormalized"])
def test_valid_fixtures_parse_the_same_in_every_chunking(name: str) -> None:
    data = (FIXTURES / f"{name}.nar").read_bytes()
    expected, _ = parse(data)
    assert isinstance(expected[-1], ArchiveEnd)
    assert expected[-1].size == len(data)
    for sizes in chunkings(data):
        events, _ = parse(data, sizes)
        assert merged(events) == merged(expected), sizes


def test_one_byte_file_consumes_exactly_120_bytes() -> None:
    data = (FIXTURES / "regular-one-byte-zero-padding.nar").read_bytes()
    events, parser = parse(data + b"sentinel", [1])
    assert events[-1] == ArchiveEnd(120)
    assert parser.offset == 120
    rest = parser.unused_data
    assert b"sentinel".startswith(rest)


def test_unused_data_after_the_archive_in_any_chunking() -> None:
    trailer = b"NIXE\0\0\0\0more bytes"
    for sizes in chunkings(SIMPLE):
        parser = NarParser()
        data = SIMPLE + trailer
        pos = 0
        turn = 0
        while not parser.done:
            event = parser.next_event()
            if event is NEED_DATA:
                size = sizes[turn % len(sizes)]
                turn += 1
                parser.receive_data(data[pos : pos + size])
                pos += size
        assert parser.unused_data + data[pos:] == trailer


# (fixture, exception type, message fragment) from tests/data/nix-fixtures/README.md, current Nix.
FIXTURE_ERRORS = [
    ("dot", NarError, "NAR contains invalid file name '.'"),
    ("dotdot", NarError, "NAR contains invalid file name '..'"),
    ("empty", NarError, "NAR contains invalid file name ''"),
    ("slash", NarError, "NAR contains invalid file name 'x/y'"),
    ("nul-character", NarError, "NAR contains invalid file name 'f\\x00o'"),
    ("duplicate", NarError, "NAR directory is not sorted"),
    ("executable-after-contents", NarError, "expected tag ')', got 'executable'"),
    ("name-after-node", NarError, "expected tag 'name'"),
    ("invalid-tag-instead-of-contents", NarError, "expected tag 'contents', got 'AAAAAAAA'"),
    ("regular-one-byte-non-zero-padding", NarError, "non-zero padding"),
    ("regular-truncated-large-contents", TruncatedError, "unexpected end of file"),
    ("regular-truncated-padding", TruncatedError, "unexpected end of file"),
    # Current Nix refuses the suffix itself before the collision (see test_casehack.py for that).
    ("case-collision", NarError, "file name 'Test~nix~case~hack~1' with the case-hack suffix"),
]


@pytest.mark.parametrize(("name", "kind", "message"), FIXTURE_ERRORS, ids=[f[0] for f in FIXTURE_ERRORS])
def test_invalid_fixtures_are_refused_in_every_chunking(
    name: str, kind: type[NarError], message: str
) -> None:
    data = (FIXTURES / f"{name}.nar").read_bytes()
    for sizes in chunkings(data):
        with pytest.raises(kind) as info:
            parse(data, sizes)
        assert message in str(info.value)
        assert str(info.value).startswith("bad archive: ")
        assert "(at byte " in str(info.value)


def test_huge_declared_size_is_reported_before_any_contents() -> None:
    data = (FIXTURES / "regular-truncated-large-contents.nar").read_bytes()
    parser = NarParser()
    parser.receive_data(data)
    event = parser.next_event()
    assert isinstance(event, RegularFile)
    assert event.size == 2**64 - 1
    assert isinstance(parser.next_event(), FileChunk)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"")
    with pytest.raises(TruncatedError):
        parser.next_event()


def expect_error(
    data: bytes, fragment: str, *, offset: int | None = None, path: tuple[bytes, ...] | None = None
) -> NarError:
    with pytest.raises(NarError) as info:
        parse(data)
    assert fragment in str(info.value), str(info.value)
    if offset is not None:
        assert info.value.offset == offset
    if path is not None:
        assert info.value.path == path
    return info.value


def test_error_carries_offset_and_path() -> None:
    data = archive(directory((b"sub", directory((b"b", regular(b"")), (b"a", regular(b""))))))
    err = expect_error(data, "NAR directory is not sorted ('a' after 'b')", path=(b"sub",))
    assert data[err.offset + 8 : err.offset + 9] == b"a"
    assert "in /sub)" in str(err)


def test_wrong_magic() -> None:
    expect_error(nar(b"nix-archive-2", *regular(b"")), "input doesn't look like a Nix archive", offset=0)
    expect_error(nar(b"not a nar at all, longer than the magic"), "doesn't look like a Nix archive")
    expect_error(b"", "it is empty")
    with pytest.raises(TruncatedError):
        parse(b"\x0d\0\0\0\0\0\0\0nix-ar")


def test_unknown_type_and_bad_tags() -> None:
    expect_error(archive((b"(", b"type", b"fifo", b")")), "unknown file type 'fifo'")
    expect_error(archive((b"[", b"type")), "expected tag '(', got '['")
    expect_error(archive((b"(", b"kind")), "expected tag 'type', got 'kind'")
    expect_error(archive((b"(", b"type", b"directory", b"item")), "expected tag 'entry' or ')', got 'item'")
    expect_error(archive((b"(", b"type", b"symlink", b"link")), "expected tag 'target', got 'link'")
    expect_error(
        archive((b"(", b"type", b"regular", b"executable", b"yes")), "executable marker has non-empty value"
    )


def test_field_order_is_fixed() -> None:
    expect_error(
        archive((b"(", b"type", b"directory", b"entry", b"(", b"node")), "expected tag 'name', got 'node'"
    )
    expect_error(archive((b"(", b"type", b"regular", b"contents", 0, b"executable")), "expected tag ')'")


def test_names_are_validated() -> None:
    for bad in (b"", b".", b"..", b"a/b", b"a\0b"):
        expect_error(archive(directory((bad, regular(b"")))), "NAR contains invalid file name")
    expect_error(archive(directory((b"x" * 256, regular(b"")))), "file name of 256 bytes is too long")
    parse(archive(directory((b"x" * 255, regular(b"")))))


def test_names_must_be_strictly_increasing_bytewise() -> None:
    expect_error(archive(directory((b"b", regular(b"")), (b"a", regular(b"")))), "not sorted")
    expect_error(archive(directory((b"a", symlink(b"/")), (b"a", directory()))), "not sorted")
    # Byte order, not locale order: "B" (0x42) < "a" (0x61) < "\xc3..." (UTF-8).
    parse(archive(directory((b"B", regular(b"")), (b"a", regular(b"")), (b"\xc3\xa9", regular(b"")))))


def test_case_hack_suffix_is_refused_case_sensitively() -> None:
    expect_error(archive(directory((b"a~nix~case~hack~1", regular(b"")))), "with the case-hack suffix")
    parse(archive(directory((b"a~NIX~CASE~HACK~1", regular(b"")))))


def test_symlink_targets_are_validated() -> None:
    expect_error(archive(symlink(b"")), "NAR contains invalid symlink target")
    expect_error(archive(symlink(b"a\0b")), "NAR contains invalid symlink target")
    expect_error(archive(symlink(b"x" * 4096)), "symlink target of 4096 bytes is too long")
    parse(archive(symlink(b"x" * 4095)))


def test_tags_longer_than_32_bytes_are_refused_before_they_are_read() -> None:
    # The length alone condemns it: the parser must not wait for 2^40 bytes of "tag".
    data = nar(b"nix-archive-1", b"(", b"type", Raw((1 << 40).to_bytes(8, "little")))
    parser = NarParser()
    parser.receive_data(data)
    with pytest.raises(NarError, match="file type of 1099511627776 bytes is too long"):
        parser.next_event()


def nested(depth: int) -> bytes:
    node: tuple[bytes | int | Raw, ...] = regular(b"")
    for _ in range(depth):
        node = directory((b"d", node))
    return archive(node)


def test_depth_limit() -> None:
    events, _ = parse(nested(63))  # the file is at depth 63
    assert any(isinstance(e, RegularFile) and len(e.path) == 63 for e in events)
    expect_error(nested(64), "NAR directory nesting exceeds maximum depth of 64")


def test_padding_of_strings_is_checked() -> None:
    good = archive(symlink(b"abc"))
    bad = good.replace(b"abc\0\0\0\0\0", b"abc\0\0\0\0\x01")
    expect_error(bad, "non-zero padding")


def test_sizes_are_full_u64() -> None:
    # A size above 2^63 is a size, not a negative number; the input simply ends before it.
    data = nar(b"nix-archive-1", b"(", b"type", b"regular", b"contents", 2**63 + 5)
    with pytest.raises(TruncatedError):
        parse(data)


def test_large_contents_pass_through_without_copies() -> None:
    contents = bytes(range(256)) * 4096  # 1 MiB
    data = archive(regular(contents))
    header = data.index(contents)
    parser = NarParser()
    parser.receive_data(data[:header])
    assert isinstance(parser.next_event(), RegularFile)
    assert parser.next_event() is NEED_DATA
    chunk = data[header : header + len(contents)]
    parser.receive_data(chunk)
    event = parser.next_event()
    assert isinstance(event, FileChunk)
    assert event.data is chunk


def test_skip_contents_then_continue() -> None:
    big = b"x" * 100_000
    data = archive(directory((b"a", regular(big)), (b"b", regular(b"tail"))))
    parser = NarParser()
    pos = 0
    parser.receive_data(data[:1000])
    pos = 1000
    seen: list[Event] = []
    while not seen or not isinstance(seen[-1], ArchiveEnd):
        event = parser.next_event()
        if event is NEED_DATA:
            parser.receive_data(data[pos : pos + 1000])
            pos += 1000
            continue
        seen.append(event)
        if isinstance(event, RegularFile) and event.path == (b"a",):
            pos += parser.skip_contents()
    assert [e for e in seen if isinstance(e, FileChunk)] == [FileChunk(b"tail")]
    assert seen[-1] == ArchiveEnd(len(data))


def test_receive_after_end_of_input_is_a_caller_bug() -> None:
    parser = NarParser()
    parser.receive_data(b"")
    with pytest.raises(RuntimeError):
        parser.receive_data(b"x")


def test_errors_pickle() -> None:
    import pickle

    err = expect_error(archive(directory((b".", regular(b"")))), "invalid file name")
    again = pickle.loads(pickle.dumps(err))  # noqa: S301 (our own bytes, just made)
    assert type(again) is NarError
    assert str(again) == str(err)
    assert again.offset == err.offset
    assert isinstance(again, ValueError)
