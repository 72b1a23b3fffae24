"""Restore safety: nothing outside the destination, nothing overwritten, nothing left after a failure."""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
from pathlib import Path

import pytest

from tests.narbuild import Raw, archive, directory, nar, regular, symlink
from xstore.casehack import CaseHackMode, Fold
from xstore.errors import DestinationExistsError, NarError, TrailingDataError, TruncatedError
from xstore.nar.dump import dump_path
from xstore.nar.restore import RestoreResult, restore_path

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "nix-fixtures"


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path below `root` with its mode, size and (for files and links) content."""
    out: dict[str, tuple[int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                data = os.fsencode(os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                data = Path(p).read_bytes()
            else:
                data = b""
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, data)
    return out


def restore_bytes(
    dest: Path, data: bytes, case_hack: CaseHackMode = CaseHackMode.AUTO, fold: Fold | None = None
) -> RestoreResult:
    return restore_path(dest, io.BytesIO(data).read, case_hack=case_hack, fold=fold)


def dumped(path: Path) -> bytes:
    parts: list[bytes] = []
    dump_path(path, parts.append)
    return b"".join(parts)


SAMPLE = archive(
    directory(
        (b"bin", directory((b"tool", regular(b"#!/bin/sh\n", executable=True)))),
        (b"escape", symlink(b"../../../../etc/passwd")),
        (b"lib", directory()),
        (b"share", directory((b"doc", regular(b"x" * 5000)))),
    )
)


@pytest.fixture
def arena(tmp_path: Path) -> Path:
    """A parent directory with neighbours a restore must not touch."""
    (tmp_path / "neighbour").mkdir()
    (tmp_path / "neighbour" / "keep").write_bytes(b"precious")
    (tmp_path / "file").write_bytes(b"also precious")
    return tmp_path


def test_restore_then_dump_is_identity(arena: Path) -> None:
    before = snapshot(arena)
    restore_bytes(arena / "out", SAMPLE, case_hack=CaseHackMode.OFF)
    assert dumped(arena / "out") == SAMPLE
    after = snapshot(arena)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before
    assert os.readlink(arena / "out" / "escape") == "../../../../etc/passwd"


def assert_exact_modes(out: Path) -> None:
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "bin").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "share" / "doc").stat().st_mode) == 0o644


def assert_restores_with_exact_modes(dest: Path, *, umask: int) -> None:
    """Restore SAMPLE to `dest` under `umask`; its modes must be exact all the same."""
    old = os.umask(umask)
    try:
        restore_bytes(dest, SAMPLE, case_hack=CaseHackMode.OFF)
    finally:
        os.umask(old)
    assert_exact_modes(dest)


# 077 and 027 take bits of 0644/0755, so each file's mode is set after its creation; 022, 002 and 000
# take none, so the modes a file is created with stand (and no fchmod is made).
@pytest.mark.parametrize("umask", [0o077, 0o027, 0o022, 0o002, 0o000], ids=oct)
def test_modes_ignore_the_umask(arena: Path, umask: int) -> None:
    assert_restores_with_exact_modes(arena / "out", umask=umask)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's set-group-ID inheritance")
def test_modes_ignore_a_set_group_id_parent(arena: Path) -> None:
    # Directories made in a set-group-ID directory inherit the bit; a restore's must be 0755 all the same.
    parent = arena / "sgid"
    parent.mkdir()
    os.chmod(parent, 0o2755)  # noqa: S103 (the bit under test)
    (parent / "probe").mkdir()
    assert (parent / "probe").stat().st_mode & stat.S_ISGID  # the kernel passes it on
    assert_restores_with_exact_modes(parent / "out", umask=0o022)


def posix_acl(*entries: tuple[int, int]) -> bytes:
    """A POSIX ACL as the kernel stores it in `system.posix_acl_*` (version 2, then per entry: tag,
    permissions, id), for the entries that take no id."""
    no_id = 0xFFFFFFFF
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, no_id) for tag, perm in entries)


@pytest.mark.skipif(not hasattr(os, "setxattr"), reason="POSIX ACLs through xattrs are Linux's")
def test_modes_ignore_a_default_acl(arena: Path) -> None:
    # A default ACL stands in for the umask in the directory that has one (and those made in it): here
    # group and others may only read (user::rwx, group::r--, other::r--), which would make 0755 0744.
    user_obj, group_obj, other = 0x01, 0x04, 0x20
    parent = arena / "acl"
    parent.mkdir()
    try:
        os.setxattr(parent, "system.posix_acl_default", posix_acl((user_obj, 7), (group_obj, 4), (other, 4)))
    except OSError as e:
        pytest.skip(f"this filesystem keeps no POSIX ACLs ({e.strerror})")
    (parent / "probe").mkdir()
    assert stat.S_IMODE((parent / "probe").stat().st_mode) == 0o744  # the ACL applies
    assert_restores_with_exact_modes(parent / "out", umask=0o022)


@pytest.mark.parametrize(
    "node", [regular(b"data", executable=True), symlink(b"/nowhere")], ids=["file", "symlink"]
)
def test_root_may_be_a_file_or_symlink(arena: Path, node: tuple[bytes | int | Raw, ...]) -> None:
    data = archive(node)
    restore_bytes(arena / "out", data)
    assert dumped(arena / "out") == data
    assert sorted(os.listdir(arena)) == ["file", "neighbour", "out"]


@pytest.mark.parametrize("existing", ["file", "neighbour", "dangling"])
def test_never_overwrites(arena: Path, existing: str) -> None:
    if existing == "dangling":
        (arena / "dangling").symlink_to("nowhere")
    before = snapshot(arena)
    with pytest.raises(DestinationExistsError, match="already exists"):
        restore_bytes(arena / existing, SAMPLE)
    assert snapshot(arena) == before


def failing_archives() -> list[tuple[str, bytes, type[Exception]]]:
    good = archive(
        directory(
            (b"a", regular(b"x" * 3000)), (b"b", directory((b"c", regular(b"y")))), (b"d", regular(b""))
        )
    )
    return [
        ("truncated", good[: len(good) - 100], TruncatedError),
        (
            "unsorted-late",
            archive(directory((b"a", regular(b"1")), (b"c", regular(b"2")), (b"b", regular(b"3")))),
            NarError,
        ),
        ("bad-padding", good.replace(b"y\0\0\0\0\0\0\0", b"y\0\0\0\0\0\0\x07"), NarError),
        ("trailing", good + b"extra", TrailingDataError),
        ("duplicate", (FIXTURES / "duplicate.nar").read_bytes(), NarError),
        ("huge-size", (FIXTURES / "regular-truncated-large-contents.nar").read_bytes(), TruncatedError),
    ]


@pytest.mark.parametrize(
    ("name", "data", "error"), failing_archives(), ids=[f[0] for f in failing_archives()]
)
def test_failed_restore_leaves_nothing(arena: Path, name: str, data: bytes, error: type[Exception]) -> None:
    before = snapshot(arena)
    with pytest.raises(error):
        restore_bytes(arena / "out", data)
    assert snapshot(arena) == before


def test_interrupted_restore_leaves_nothing(arena: Path) -> None:
    data = io.BytesIO(SAMPLE)
    calls = 0

    def read(n: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return data.read(min(n, 200))

    before = snapshot(arena)
    with pytest.raises(KeyboardInterrupt):
        restore_path(arena / "out", read)
    assert snapshot(arena) == before


def test_large_declared_size_is_not_preallocated_up_front(arena: Path) -> None:
    declared = 1 << 40  # 1 TiB claimed, 2 MiB delivered
    header = nar(b"nix-archive-1", b"(", b"type", b"regular", b"contents", declared)
    pieces = [header] + [b"\xab" * (1 << 20)] * 2
    allocated: list[int] = []

    def read(_n: int) -> bytes:
        if pieces:
            return pieces.pop(0)
        # Before reporting the end, look at what the staging file holds on disk.
        for dirpath, _dirs, files in os.walk(arena):
            if ".xstore-" in dirpath:
                allocated.extend(os.stat(os.path.join(dirpath, f)).st_blocks * 512 for f in files)
        return b""

    with pytest.raises(TruncatedError):
        restore_path(arena / "out", read)
    assert allocated, "the staging file should have existed"
    assert max(allocated) < 256 << 20
    assert not (arena / "out").exists()


def test_case_hack_on_renames_like_nix_and_dumps_back(arena: Path) -> None:
    data = (FIXTURES / "case.nar").read_bytes()
    result = restore_bytes(arena / "out", data, case_hack=CaseHackMode.ON)
    names = sorted(os.listdir(arena / "out"))
    assert names == ["x", "xt_CONNMARK.h", "xt_CONNmark.h~nix~case~hack~1", "xt_connmark.h~nix~case~hack~2"]
    assert sorted(os.listdir(arena / "out" / "x" / "foo~nix~case~hack~2")) == ["A", "a~nix~case~hack~1"]
    assert result.renamed == 5
    assert dumped(arena / "out") == data


def test_case_hack_apfs_fold_separates_normalisation_variants(arena: Path) -> None:
    data = (FIXTURES / "unnormalized.nar").read_bytes()
    restore_bytes(arena / "out", data, case_hack=CaseHackMode.ON, fold=Fold.APFS)
    names = sorted(os.listdir(os.fsencode(arena / "out")))
    assert names == [b"a\xcc\x82", b"\xc3\xa2~nix~case~hack~1"]
    assert os.readlink(arena / "out" / "a\u0302") == "/"
    assert dumped(arena / "out") == data


def test_auto_on_a_case_sensitive_filesystem_does_not_hack(arena: Path) -> None:
    data = (FIXTURES / "case.nar").read_bytes()
    result = restore_bytes(arena / "out", data)
    assert result.probed is not None
    case_insensitive = result.probed.case_insensitive
    # Whatever the probe said must match reality and drive the result.
    (arena / "Probe").write_bytes(b"")
    assert case_insensitive == (arena / "probe").exists()
    assert result.case_hack == case_insensitive
    assert dumped(arena / "out") == data


@pytest.mark.case_sensitive_tmp
def test_unnormalized_names_never_write_through_the_symlink(arena: Path) -> None:
    # Nix's fixture: a symlink to "/" and a directory whose name is the other normalisation form.
    data = (FIXTURES / "unnormalized.nar").read_bytes()
    restore_bytes(arena / "out", data, case_hack=CaseHackMode.OFF)
    assert os.path.islink(arena / "out" / "a\u0302")
    assert os.path.isdir(arena / "out" / "\u00e2")
    assert not os.path.islink(arena / "out" / "\u00e2")
    assert dumped(arena / "out") == data
