"""Dump: what a tree may hold, what it may not, and the walk's rules."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.unit.test_parser import merged, parse
from xstore.errors import CaseHackError, DumpError
from xstore.nar.dump import dump_path
from xstore.nar.events import DirectoryStart, Event, FileChunk, RegularFile, Symlink


def dump(path: Path | bytes, *, case_hack: bool = True) -> bytes:
    parts: list[bytes] = []
    size = dump_path(path, parts.append, case_hack=case_hack)
    data = b"".join(parts)
    assert size == len(data)
    return data


def dump_events(path: Path, exclude: tuple[str, ...] = ()) -> list[Event]:
    parts: list[bytes] = []
    dump_path(path, parts.append, exclude=exclude)
    events, _ = parse(b"".join(parts))
    return merged(events)


def paths(events: list[Event]) -> list[bytes]:
    return [b"/".join(e.path) for e in events if isinstance(e, DirectoryStart | RegularFile | Symlink)]


def test_fifo_and_socket_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DumpError, match=r"'.*/pipe' has an unsupported type \(FIFO\)"):
        dump(tmp_path)
    os.unlink(tmp_path / "pipe")
    monkeypatch.chdir(tmp_path)  # a relative socket address: deep temporary paths exceed sun_path
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("sock")
        with pytest.raises(DumpError, match=r"unsupported type \(socket\)"):
            dump(tmp_path)
        with pytest.raises(DumpError, match=r"unsupported type \(socket\)"):
            dump(tmp_path / "sock")


def test_executable_bit_is_the_owners(tmp_path: Path) -> None:
    for name, mode in (("u", 0o744), ("g", 0o654), ("none", 0o644)):
        (tmp_path / name).write_bytes(b"x")
        (tmp_path / name).chmod(mode)
    files = {e.path[-1]: e.executable for e in dump_events(tmp_path) if isinstance(e, RegularFile)}
    assert files == {b"u": True, b"g": False, b"none": False}


@pytest.mark.case_sensitive_tmp
def test_entries_in_byte_order_with_non_utf8_names(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    for name in (b"\xff", b"B", b"a", b"\xc3\xa9", b"_"):
        with open(os.path.join(root, name), "wb") as f:
            f.write(name)
    assert paths(dump_events(tmp_path)) == [b"", b"B", b"_", b"a", b"\xc3\xa9", b"\xff"]


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "link").symlink_to("/etc")
    (tmp_path / "rootlink").symlink_to(tmp_path / "dir")
    events = dump_events(tmp_path / "dir")
    assert Symlink((b"link",), b"/etc") in events
    assert len(events) == 4  # DirectoryStart, Symlink, DirectoryEnd, ArchiveEnd
    assert dump_events(tmp_path / "rootlink")[0] == Symlink((), os.fsencode(tmp_path / "dir"))


def test_depth_limit(tmp_path: Path) -> None:
    deep = tmp_path / "t"
    p = deep
    for _ in range(63):
        p = p / "d"
    p.mkdir(parents=True)
    dump(deep)  # the innermost directory is at depth 63
    (p / "d").mkdir()
    with pytest.raises(DumpError, match="nested deeper than a NAR allows"):
        dump(deep)


def test_case_hack_suffix_with_hack_off_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a~nix~case~hack~1").write_bytes(b"")
    with pytest.raises(DumpError, match="carries the case-hack suffix"):
        dump(tmp_path, case_hack=False)
    assert paths(dump_events(tmp_path)) == [b"", b"a"]


def test_collision_after_unhacking_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x").write_bytes(b"")
    (tmp_path / "sub" / "x~nix~case~hack~3").write_bytes(b"")
    with pytest.raises(
        CaseHackError, match=r"file name collision between '.*/sub/x' and '.*/sub/x~nix~case~hack~3'"
    ):
        dump(tmp_path)


def test_exclude_by_name_and_by_path(tmp_path: Path) -> None:
    for rel in (".git/config", "src/a.o", "src/a.c", "src/deep/b.o", "top.o", "keep"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert paths(dump_events(tmp_path, (".git", "*.o"))) == [b"", b"keep", b"src", b"src/a.c", b"src/deep"]
    assert paths(dump_events(tmp_path, ("src/*.o",))) == [
        b"",
        b".git",
        b".git/config",
        b"keep",
        b"src",
        b"src/a.c",
        b"src/deep",
        b"src/deep/b.o",
        b"top.o",
    ]


def test_large_file_is_streamed_in_bounded_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"tail"
    (tmp_path / "big").write_bytes(data)
    blocks: list[int] = []
    parts: list[bytes] = []

    def sink(block: bytes) -> None:
        blocks.append(len(block))
        parts.append(block)

    dump_path(tmp_path / "big", sink)
    assert max(blocks) <= 1 << 20
    events, _ = parse(b"".join(parts))
    assert b"".join(e.data for e in events if isinstance(e, FileChunk)) == data


def test_missing_path_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        dump(tmp_path / "nope")
