# mypy: disable-error-code="unreachable"
"""`xstore mount nar`, for real: what the mount shows must dump back (with the real `nix-store --dump`) to
the archive byte for byte, file contents must equal `xstore nar cat`, writes fail with EROFS, and an
archive that cannot be mounted is refused with one line before anything is mounted.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Nix, require_or_skip
from tests.integration.fusehelpers import (
    XSTORE,
    errno_of,
    is_mounted,
    mounted,
    xstore,
    xstore_mounts,
)
from tests.narbuild import Token, archive, directory, regular, symlink

if sys.platform != "linux":
    # FUSE tests run on Linux (pyfuse3 is installed there only); the mypy comment at the top lets
    # this guard hide the Linux-only calls below when type-checking for another platform.
    pytest.skip("FUSE tests run on Linux only", allow_module_level=True)

pytestmark = [pytest.mark.fuse, pytest.mark.usefixtures("fuse_here")]

VALID_FIXTURES = ["simple.nar", "empty-dir.nar", "empty-subdir.nar", "case.nar", "unnormalized.nar"]


def write_tree(root: Path) -> None:
    """A tree with what a NAR can hold and a filesystem view can get wrong: non-UTF-8 names, executable
    and empty files, absolute, relative and dangling symlinks, empty directories at several depths, a
    file larger than any single FUSE read, and names whose byte order differs from their text order."""
    root.mkdir()
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    (root / "empty").write_bytes(b"")
    (root / "empty-exe").write_bytes(b"")
    (root / "empty-exe").chmod(0o755)
    os.mkdir(os.path.join(os.fsencode(root), b"caf\xe9-latin1"))
    with open(os.path.join(os.fsencode(root), b"caf\xe9-latin1", b"\xff\xfe raw"), "wb") as f:
        f.write(b"non-UTF-8 names\n")
    (root / "caf\u00e9-utf8").write_text("UTF-8 name\n")
    (root / "Zebra").write_text("upper case sorts first\n")
    (root / "apple").write_text("lower case sorts later\n")
    (root / "empty-dir").mkdir()
    (root / "nested" / "deeper" / "empty").mkdir(parents=True)
    (root / "links").mkdir()
    (root / "links" / "absolute").symlink_to("/etc/passwd")
    (root / "links" / "relative").symlink_to("../bin/tool")
    (root / "links" / "dangling").symlink_to("does/not/exist")
    (root / "links" / "to-dir").symlink_to("../nested")
    rng = random.Random(1)
    with open(root / "big.bin", "wb") as f:
        for _ in range(9):
            f.write(rng.randbytes(1 << 20))
        f.write(rng.randbytes(12345))  # not a multiple of any block size


@pytest.fixture
def tree_nar(tmp_path: Path, nix: Nix) -> Path:
    tree = tmp_path / "tree"
    write_tree(tree)
    nar = tmp_path / "tree.nar"
    nar.write_bytes(nix.nix_store("--dump", tree))
    return nar


@pytest.mark.parametrize("fixture", VALID_FIXTURES)
def test_nix_fixtures_dump_back_byte_for_byte(
    fixture: str, nix_fixtures: Path, nix: Nix, mountpoint: Path
) -> None:
    nar = nix_fixtures / fixture
    with mounted(["nar", nar, mountpoint], mountpoint):
        assert nix.nix_store("--dump", mountpoint) == nar.read_bytes()


def test_generated_tree_dumps_back_and_reads_like_the_original(
    tree_nar: Path, tmp_path: Path, nix: Nix, mountpoint: Path
) -> None:
    tree = tmp_path / "tree"
    with mounted(["nar", tree_nar, mountpoint], mountpoint):
        assert nix.nix_store("--dump", mountpoint) == tree_nar.read_bytes()
        raw = os.fsencode(mountpoint)
        assert sorted(os.listdir(os.path.join(raw, b"caf\xe9-latin1"))) == [b"\xff\xfe raw"]
        assert os.readlink(mountpoint / "links" / "absolute") == "/etc/passwd"
        assert (mountpoint / "links" / "relative").read_bytes() == (tree / "bin" / "tool").read_bytes()
        assert os.listdir(mountpoint / "nested" / "deeper" / "empty") == []
        assert os.access(mountpoint / "bin" / "tool", os.X_OK)
        assert not os.access(mountpoint / "apple", os.X_OK)
        st = os.lstat(mountpoint / "bin" / "tool")
        assert st.st_mode & 0o7777 == 0o555
        assert os.lstat(mountpoint / "apple").st_mode & 0o7777 == 0o444
        assert os.lstat(mountpoint / "nested").st_mode & 0o7777 == 0o555
        assert (mountpoint / "big.bin").stat().st_size == (tree / "big.bin").stat().st_size
        fs = os.statvfs(mountpoint)
        assert fs.f_namemax == 255


def test_reads_equal_nar_cat(tree_nar: Path, tmp_path: Path, mountpoint: Path) -> None:
    cat = xstore("nar", "cat", tree_nar, "/big.bin")
    assert cat.returncode == 0, cat.stderr
    expected = cat.stdout
    with mounted(["nar", tree_nar, mountpoint], mountpoint):
        assert (mountpoint / "big.bin").read_bytes() == expected
        # Random reads at any offset and size, including past the end.
        rng = random.Random(7)
        fd = os.open(mountpoint / "big.bin", os.O_RDONLY)
        try:
            for _ in range(200):
                offset = rng.randrange(0, len(expected) + 100)
                size = rng.choice([1, 7, 4096, 65536, 131072, 1 << 20, rng.randrange(1, 300000)])
                assert os.pread(fd, size, offset) == expected[offset : offset + size]
        finally:
            os.close(fd)


def test_nar_of_linux_headers(tmp_path: Path, nix: Nix, mountpoint: Path) -> None:
    headers = Path("/usr/include/linux")
    require_or_skip(headers.is_dir(), "/usr/include/linux not found (apt-get install linux-libc-dev)")
    nar = tmp_path / "linux.nar"
    nar.write_bytes(nix.nix_store("--dump", headers))
    with mounted(["nar", nar, mountpoint], mountpoint):
        assert nix.nix_store("--dump", mountpoint) == nar.read_bytes()


def test_writes_fail_with_erofs(tree_nar: Path, mountpoint: Path) -> None:
    with mounted(["nar", tree_nar, mountpoint], mountpoint) as m:
        writes: list[tuple[Callable[..., object], tuple[object, ...]]] = [
            (open, (m / "new-file", "wb")),
            (open, (m / "apple", "r+b")),
            (os.open, (m / "apple", os.O_WRONLY | os.O_TRUNC)),
            (os.truncate, (m / "apple", 0)),
            (os.mkdir, (m / "new-dir",)),
            (os.unlink, (m / "apple",)),
            (os.rmdir, (m / "empty-dir",)),
            (os.rename, (m / "apple", m / "pear")),
            (os.chmod, (m / "apple", 0o777)),
            (os.utime, (m / "apple", (0, 0))),
            (os.symlink, ("apple", m / "new-link")),
            (os.link, (m / "apple", m / "hard")),
            (os.setxattr, (m / "apple", "user.x", b"1")),
        ]
        for action, args in writes:
            assert errno_of(action, *args) == errno.EROFS, (action, args)
        assert (m / "apple").read_text() == "lower case sorts later\n"


def test_invalid_nar_is_refused_before_mounting(nix_fixtures: Path, mountpoint: Path) -> None:
    result = xstore("mount", "nar", nix_fixtures / "duplicate.nar", mountpoint)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: bad archive: NAR directory is not sorted")
    assert not is_mounted(mountpoint)


def test_truncated_nar_is_refused(tree_nar: Path, tmp_path: Path, mountpoint: Path) -> None:
    cut = tmp_path / "cut.nar"
    cut.write_bytes(tree_nar.read_bytes()[:-1000])
    result = xstore("mount", "nar", cut, mountpoint)
    assert result.returncode == 1
    assert len(result.stderr.decode().splitlines()) == 1
    assert result.stderr.startswith(b"error: ")
    assert not is_mounted(mountpoint)


@pytest.mark.parametrize(
    ("name", "root"),
    [("file", regular(b"x")), ("symlink", symlink(b"/target"))],
)
def test_archive_of_a_single_file_is_refused(
    name: str, root: tuple[Token, ...], tmp_path: Path, mountpoint: Path
) -> None:
    nar = tmp_path / f"{name}.nar"
    nar.write_bytes(archive(root))
    result = xstore("mount", "nar", nar, mountpoint)
    assert result.returncode == 1
    message = result.stderr.decode()
    assert message.count("\n") == 1
    assert "not a directory: there is nothing to mount" in message
    assert not is_mounted(mountpoint)


def test_missing_nar(tmp_path: Path, mountpoint: Path) -> None:
    result = xstore("mount", "nar", tmp_path / "nope.nar", mountpoint)
    assert result.returncode == 1
    missing = tmp_path / "nope.nar"
    assert result.stderr.decode().splitlines() == [f"error: No such file or directory: '{missing}'"]
    assert not is_mounted(mountpoint)


def test_archive_must_be_a_regular_file(tree_nar: Path, mountpoint: Path) -> None:
    with subprocess.Popen(["cat", str(tree_nar)], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None
        fifo = f"/dev/fd/{cat.stdout.fileno()}"
        result = subprocess.run(
            [*XSTORE, "mount", "nar", fifo, mountpoint],
            capture_output=True,
            pass_fds=[cat.stdout.fileno()],
            timeout=60,
            check=False,
        )
        cat.stdout.close()
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"error: '{fifo}' is not a regular file: files are read from the archive in place"
    ]
    assert not is_mounted(mountpoint)


def test_archive_shrinking_under_the_mount_gives_eio_not_a_crash(tmp_path: Path, mountpoint: Path) -> None:
    data = os.urandom(300_000)
    nar = tmp_path / "shrinks.nar"
    nar.write_bytes(archive(directory((b"a", regular(b"small")), (b"big", regular(data)))))
    with mounted(["nar", nar, mountpoint], mountpoint) as m:
        os.truncate(nar, nar.stat().st_size - 200_000)
        assert errno_of((m / "big").read_bytes) == errno.EIO
        # The daemon is still serving.
        assert (m / "a").read_bytes() == b"small"
        assert sorted(os.listdir(m)) == ["a", "big"]


def test_mount_table_entry(tree_nar: Path, mountpoint: Path) -> None:
    with mounted(["nar", tree_nar, mountpoint], mountpoint):
        lines = [line for line in xstore_mounts() if f" {mountpoint} " in line]
        assert len(lines) == 1
        assert f" - fuse.xstore xstore-nar:{tree_nar} ro," in lines[0]


def test_many_files_in_one_directory(tmp_path: Path, mountpoint: Path) -> None:
    names = sorted(f"f{i:05d}".encode() for i in range(5000))
    nar = tmp_path / "wide.nar"
    nar.write_bytes(archive(directory(*((n, regular(n)) for n in names))))
    with mounted(["nar", nar, mountpoint], mountpoint) as m:
        assert sorted(os.listdir(os.fsencode(m))) == names
        assert (m / "f04999").read_bytes() == b"f04999"


def test_relative_paths(tree_nar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rel").mkdir()
    shutil.copy(tree_nar, tmp_path / "rel.nar")
    monkeypatch.chdir(tmp_path)
    with mounted(["nar", "rel.nar", "rel"], tmp_path / "rel") as m:
        assert (m / "apple").read_text() == "lower case sorts later\n"


def test_small_files_read_the_same_however_they_are_opened(tmp_path: Path, mountpoint: Path) -> None:
    """A small file goes into the page cache when first opened (`common.STORE_ON_OPEN_MAX`); one open
    while another is, reopened after both closed, and either side of the size bound: always its bytes."""
    from xstore.fuse.common import STORE_ON_OPEN_MAX

    rng = random.Random(3)
    files = {
        b"small": rng.randbytes(100),
        b"at-bound": rng.randbytes(STORE_ON_OPEN_MAX),
        b"past-bound": rng.randbytes(STORE_ON_OPEN_MAX + 1),
    }
    nar = tmp_path / "small.nar"
    nar.write_bytes(archive(directory(*((name, regular(data)) for name, data in sorted(files.items())))))
    with mounted(["nar", nar, mountpoint], mountpoint) as m:
        for name, data in files.items():
            path = os.path.join(os.fsencode(m), name)
            first = os.open(path, os.O_RDONLY)
            second = os.open(path, os.O_RDONLY)
            try:
                assert os.pread(second, len(data) + 10, 0) == data
                assert os.pread(first, 50, len(data) - 50) == data[-50:]
            finally:
                os.close(first)
                os.close(second)
            with open(path, "rb") as f:
                assert f.read() == data


@pytest.fixture
def nar_ops(tmp_path: Path) -> Iterator[Any]:
    """`NarOperations` (not mounted) of an archive holding `f` (4 bytes) and `big` (past the bound)."""
    from xstore.fuse.common import STORE_ON_OPEN_MAX
    from xstore.fuse.narfs import NarOperations
    from xstore.nar.listing import index_file

    nar = tmp_path / "two.nar"
    big = regular(bytes(STORE_ON_OPEN_MAX + 1))
    nar.write_bytes(archive(directory((b"big", big), (b"f", regular(b"data")))))
    with open(nar, "rb") as f:
        ops = NarOperations(nar, index_file(f))
    yield ops
    ops.close()


async def test_a_file_goes_into_the_page_cache_only_while_none_of_its_files_is_open(nar_ops: Any) -> None:
    """The NAR view's handlers, called as the kernel would (no mount), with a notifier that records:
    `store` only on an open when no file of that inode is open (else a read of it may be in progress,
    holding the pages `store` must lock), until it worked once, and never for a file past the bound."""
    import pyfuse3

    stored: list[int] = []
    accept = [False]  # the first store fails (as on a kernel that refuses it): later opens try again

    class Recorder:
        mounted = True
        epoch = False

        def invalidate_attributes(self, inode: int) -> None:
            pass

        def increment_epoch(self) -> None:
            pass

        def store(self, inode: int, data: bytes) -> bool:
            assert data == b"data"
            stored.append(inode)
            return accept[0]

    ops = nar_ops
    ops.notifier = Recorder()
    ctx: Any = None
    small = (await ops.lookup(pyfuse3.ROOT_INODE, b"f", ctx)).st_ino
    big = (await ops.lookup(pyfuse3.ROOT_INODE, b"big", ctx)).st_ino
    one = await ops.open(small, os.O_RDONLY, ctx)
    assert stored == [small]
    two = await ops.open(small, os.O_RDONLY, ctx)  # `one` is open: no store
    assert stored == [small]
    await ops.release(one.fh)
    three = await ops.open(small, os.O_RDONLY, ctx)  # `two` is still open
    assert stored == [small]
    await ops.release(two.fh)
    await ops.release(three.fh)
    accept[0] = True
    await ops.release((await ops.open(small, os.O_RDONLY, ctx)).fh)  # none open: store
    assert stored == [small, small]
    await ops.release((await ops.open(small, os.O_RDONLY, ctx)).fh)  # stored once: enough
    assert stored == [small, small]
    await ops.release((await ops.open(big, os.O_RDONLY, ctx)).fh)
    assert stored == [small, small]


def test_readahead_is_raised_as_root(tree_nar: Path, mountpoint: Path) -> None:
    """As root, the mount's readahead (its backing device info) is 1 MiB, so large files are read in
    requests of 1 MiB; otherwise the kernel's 128 KiB stays."""
    from xstore.fuse.lifecycle import READAHEAD_KIB

    with mounted(["nar", tree_nar, mountpoint], mountpoint):
        device = os.stat(mountpoint).st_dev
        knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        require_or_skip(knob.exists(), f"{knob} does not exist (no sysfs?)")
        value = int(knob.read_text())
        if os.geteuid() == 0:
            assert value == READAHEAD_KIB
        else:
            assert value <= READAHEAD_KIB
