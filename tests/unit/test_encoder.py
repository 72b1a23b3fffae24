"""The encoder: the parser's mirror, refusing what the parser would refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_parser import parse
from xstore.errors import NarEncodeError
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

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "nix-fixtures"


def encode(events: list[Event]) -> bytes:
    encoder = NarEncoder()
    out = b"".join(encoder.send(e) for e in events)
    assert encoder.size == len(out)
    return out


@pytest.mark.parametrize("name", ["simple", "empty-dir", "empty-subdir", "case", "unnormalized"])
def test_reencoding_nix_fixtures_is_byte_identical(name: str) -> None:
    data = (FIXTURES / f"{name}.nar").read_bytes()
    events, _ = parse(data, [5])
    assert encode(events) == data


def test_chunk_is_passed_through_without_copy() -> None:
    encoder = NarEncoder()
    encoder.send(RegularFile((), False, 3, 0))
    chunk = FileChunk(b"abc")
    assert encoder.send(chunk) is chunk.data


def refused(events: list[Event], fragment: str) -> None:
    encoder = NarEncoder()
    *prefix, last = events
    for e in prefix:
        encoder.send(e)
    with pytest.raises(NarEncodeError, match=fragment):
        encoder.send(last)


def test_refuses_what_the_parser_refuses() -> None:
    root = DirectoryStart(())
    refused([root, Symlink((b"b",), b"x"), Symlink((b"a",), b"x")], "strictly increasing")
    refused([root, Symlink((b"a",), b"x"), Symlink((b"a",), b"x")], "strictly increasing")
    refused([root, Symlink((b"a/b",), b"x")], "invalid file name")
    refused([root, Symlink((b"..",), b"x")], "invalid file name")
    refused([root, Symlink((b"x~nix~case~hack~1",), b"x")], "case-hack suffix")
    refused([Symlink((), b"")], "invalid symlink target")
    refused([root, Symlink((b"x", b"y"), b"t")], "not inside the open directory")
    refused([Symlink((b"a",), b"t")], "first node of an archive must be its root")


def test_contents_must_match_the_announced_size() -> None:
    refused([RegularFile((), False, 2, 0), FileChunk(b"abc")], "exceed the announced size")
    refused([RegularFile((), False, 4, 0), FileChunk(b"abc"), FileEnd(())], "1 bytes short")
    refused([FileChunk(b"x")], "outside a regular file")


def test_structure_must_be_closed() -> None:
    refused([DirectoryStart(()), ArchiveEnd(0)], "before its root node was complete")
    refused([ArchiveEnd(0)], "before its root node was complete")
    refused([DirectoryStart(()), DirectoryEnd((b"x",))], "innermost open directory")
    refused([Symlink((), b"t"), ArchiveEnd(0), Symlink((), b"t")], "after the end of the archive")


def test_depth_limit() -> None:
    events: list[Event] = []
    path: tuple[bytes, ...] = ()
    for _ in range(64):
        events.append(DirectoryStart(path))
        path = (*path, b"d")
    refused([*events, Symlink(path, b"t")], "maximum depth of 64")
