"""The mount lifecycle, for real: `xstore mount` returns once the filesystem answers, `xstore umount`
unmounts, SIGINT and SIGTERM unmount cleanly (foreground and background), a killed filesystem is
unmounted by `xstore umount` with a clear message, bad mount points and failures while starting give
one line and leave no mount, and without FUSE the commands say what is missing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.fusehelpers import (
    XSTORE,
    errno_of,
    force_unmount,
    foreground,
    is_mounted,
    mounted,
    xstore,
)
from tests.narbuild import archive, directory, regular, symlink
from xstore.errors import FuseUnavailableError

pytestmark = pytest.mark.fuse


@pytest.fixture
def nar(tmp_path: Path) -> Path:
    path = tmp_path / "small.nar"
    # `big` is larger than what a first open puts into the page cache (`common.STORE_ON_OPEN_MAX`).
    contents = directory((b"big", regular(bytes(range(256)) * 1024)), (b"file", regular(b"contents\n")))
    path.write_bytes(archive(directory((b"dir", contents), (b"link", symlink(b"dir")))))
    return path


def daemon_pids(mountpoint: Path) -> list[int]:
    """Processes running `xstore mount ... MOUNTPOINT` (the background daemon keeps its parent's argv)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"xstore" in argv and b"mount" in argv and os.fsencode(mountpoint) in argv:
            pids.append(int(entry))
    return pids


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.usefixtures("fuse_here")
def test_mount_returns_mounted_and_umount_unmounts(nar: Path, mountpoint: Path) -> None:
    with mounted(["nar", nar, mountpoint], mountpoint):
        # Answering right away, without waiting.
        assert is_mounted(mountpoint)
        assert sorted(os.listdir(mountpoint)) == ["dir", "link"]
        assert (mountpoint / "link" / "file").read_bytes() == b"contents\n"
        (pid,) = daemon_pids(mountpoint)
        result = xstore("umount", mountpoint)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == f"unmounted '{mountpoint}'\n"
        assert not is_mounted(mountpoint)
        assert wait_gone(pid), "the daemon did not exit after the unmount"


@pytest.mark.usefixtures("fuse_here")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_foreground_unmounts_cleanly(signum: int, nar: Path, mountpoint: Path) -> None:
    with foreground(["nar", nar, mountpoint], mountpoint) as proc:
        assert (mountpoint / "dir" / "file").read_bytes() == b"contents\n"
        proc.send_signal(signum)
        assert proc.wait(30) == 0
        _, err = proc.communicate()
        assert err == b""
        assert not is_mounted(mountpoint)


@pytest.mark.usefixtures("fuse_here")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_background_daemon_unmounts_cleanly(signum: int, nar: Path, mountpoint: Path) -> None:
    with mounted(["nar", nar, mountpoint], mountpoint):
        (pid,) = daemon_pids(mountpoint)
        os.kill(pid, signum)
        assert wait_gone(pid)
        assert not is_mounted(mountpoint)


@pytest.mark.usefixtures("fuse_here")
def test_signal_while_a_file_is_open(nar: Path, mountpoint: Path) -> None:
    # The unmount on the way out is lazy: an open file does not keep the mount (or the process) alive.
    # (What the kernel cached of the file stays readable: the read is of a part never read.)
    with foreground(["nar", nar, mountpoint], mountpoint) as proc:
        fd = os.open(mountpoint / "dir" / "big", os.O_RDONLY)
        try:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert not is_mounted(mountpoint)
            assert errno_of(os.pread, fd, 100, 200_000) in (errno.ENOTCONN, errno.EIO)
        finally:
            with contextlib.suppress(OSError):  # closing says ENOTCONN: nobody answers the flush
                os.close(fd)


@pytest.mark.usefixtures("fuse_here")
def test_killed_foreground_process_then_umount(nar: Path, mountpoint: Path) -> None:
    with foreground(["nar", nar, mountpoint], mountpoint) as proc:
        proc.kill()
        proc.wait(30)
        assert is_mounted(mountpoint)
        assert errno_of(os.listdir, mountpoint) == errno.ENOTCONN
        result = xstore("umount", mountpoint)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == (
            f"unmounted '{mountpoint}': its filesystem process had died "
            "(Transport endpoint is not connected)\n"
        )
        assert not is_mounted(mountpoint)


@pytest.mark.usefixtures("fuse_here")
def test_killed_daemon_then_umount(nar: Path, mountpoint: Path) -> None:
    with mounted(["nar", nar, mountpoint], mountpoint):
        (pid,) = daemon_pids(mountpoint)
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        assert is_mounted(mountpoint)
        result = xstore("umount", mountpoint)
        assert result.returncode == 0, result.stderr
        assert "its filesystem process had died" in result.stdout.decode()
        assert not is_mounted(mountpoint)
        # A new mount on the same point works.
        with mounted(["nar", nar, mountpoint], mountpoint):
            assert sorted(os.listdir(mountpoint)) == ["dir", "link"]


@pytest.mark.usefixtures("fuse_here")
def test_mount_point_not_a_directory(nar: Path, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    line = one_line_error(xstore("mount", "nar", nar, target))
    assert line == f"error: mount point '{target}' is not a directory"
    assert not is_mounted(target)


@pytest.mark.usefixtures("fuse_here")
def test_mount_point_missing(nar: Path, tmp_path: Path) -> None:
    line = one_line_error(xstore("mount", "nar", nar, tmp_path / "missing"))
    assert line == f"error: mount point '{tmp_path / 'missing'}' does not exist"


@pytest.mark.usefixtures("fuse_here")
def test_mount_point_already_mounted(nar: Path, mountpoint: Path) -> None:
    with mounted(["nar", nar, mountpoint], mountpoint):
        line = one_line_error(xstore("mount", "nar", nar, mountpoint))
        assert line.startswith(f"error: '{mountpoint}' is already a mount point")
        # The first mount is untouched.
        assert (mountpoint / "dir" / "file").read_bytes() == b"contents\n"
        assert len(daemon_pids(mountpoint)) == 1


@pytest.mark.usefixtures("fuse_here")
def test_umount_of_something_not_mounted(mountpoint: Path) -> None:
    line = one_line_error(xstore("umount", mountpoint))
    assert line == f"error: '{mountpoint}' is not a mount point"


@pytest.mark.usefixtures("fuse_here")
def test_umount_while_busy(nar: Path, mountpoint: Path) -> None:
    with mounted(["nar", nar, mountpoint], mountpoint), open(mountpoint / "dir" / "file", "rb"):
        line = one_line_error(xstore("umount", mountpoint))
        assert "busy" in line
        assert is_mounted(mountpoint)


@pytest.mark.usefixtures("fuse_here")
def test_log_file(nar: Path, mountpoint: Path, tmp_path: Path) -> None:
    log = tmp_path / "fuse.log"
    env = {**os.environ, "XSTORE_FUSE_LOG": str(log)}
    with mounted(["nar", nar, mountpoint], mountpoint, env=env):
        (pid,) = daemon_pids(mountpoint)
    assert wait_gone(pid)
    text = log.read_text()
    assert f"mounted on {mountpoint}" in text
    assert f"unmounted {mountpoint}" in text


# -- failures inside the filesystem process, through the library ----------------------------------------

FAILING_MOUNT = textwrap.dedent(
    """
    import errno, sys
    import pyfuse3
    from xstore.errors import XstoreError
    from xstore.fuse.lifecycle import mount_filesystem

    class Broken(pyfuse3.Operations):
        async def getattr(self, inode, ctx):
            raise pyfuse3.FUSEError(errno.EIO)

    def make_failing():
        raise XstoreError("the filesystem cannot be built")

    make = {"raises": make_failing, "broken": Broken}[sys.argv[1]]
    try:
        mount_filesystem(
            make, sys.argv[2], fsname="xstore-test", read_only=True, foreground=sys.argv[3] == "fg"
        )
    except XstoreError as e:
        print(f"error: {e}")
        sys.exit(1)
    """
)


@pytest.mark.usefixtures("fuse_here")
@pytest.mark.parametrize("mode", ["bg", "fg"])
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("raises", "error: the filesystem cannot be built\n"),
        ("broken", "error: the new mount does not answer: Input/output error\n"),
    ],
)
def test_failure_in_the_filesystem_process_leaves_no_mount(
    kind: str, message: str, mode: str, mountpoint: Path
) -> None:
    try:
        result = subprocess.run(
            [sys.executable, "-c", FAILING_MOUNT, kind, str(mountpoint), mode],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert result.stdout.decode() == message
        assert not is_mounted(mountpoint)
    finally:
        force_unmount(mountpoint)


@pytest.mark.usefixtures("fuse_here")
def test_libfuse_refusal_is_one_line(nar: Path, mountpoint: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from xstore.errors import XstoreError
        from xstore.fuse.lifecycle import mount_filesystem
        from xstore.fuse.narfs import NarOperations
        from xstore.nar.listing import index_file

        with open(sys.argv[1], "rb") as f:
            index = index_file(f)
        try:
            mount_filesystem(
                lambda: NarOperations(sys.argv[1], index),
                sys.argv[2],
                fsname="xstore-test",
                read_only=True,
                options=["no_such_option"],
            )
        except XstoreError as e:
            print(f"error: {e}")
            sys.exit(1)
        """
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, str(nar), str(mountpoint)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert result.stdout.decode() == (
            f"error: cannot mount on '{mountpoint}': fuse: unknown option(s): `-o no_such_option'\n"
        )
        assert not is_mounted(mountpoint)
    finally:
        force_unmount(mountpoint)


# -- without FUSE ------------------------------------------------------------------------------------


NO_PYFUSE3 = "\n".join(
    [
        "import sys",
        "sys.modules['pyfuse3'] = None  # import pyfuse3 raises ImportError",
        "from xstore.cli.app import main",
        "sys.argv[0] = 'xstore'",
        "main()",
    ]
)


def test_without_pyfuse3_the_commands_say_so(nar: Path, mountpoint: Path) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-c", NO_PYFUSE3, *argv], capture_output=True, timeout=60, check=False
        )

    help_ = run("--help")
    assert help_.returncode == 0
    assert b"mount" in help_.stdout
    assert b"umount" in help_.stdout
    for argv in (("mount", "nar", str(nar), str(mountpoint)), ("mount", "store", "/none", str(mountpoint))):
        line = one_line_error(run(*argv))
        assert "pyfuse3 cannot be imported" in line
        assert "pip install 'xstore[fuse]'" in line
    assert not is_mounted(mountpoint)


def test_without_dev_fuse(monkeypatch: pytest.MonkeyPatch) -> None:
    from xstore.fuse import lifecycle

    monkeypatch.setattr(lifecycle, "FUSE_DEVICE", "/nonexistent/fuse")
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(FuseUnavailableError, match=r"no /nonexistent/fuse \(load the module"):
        lifecycle.check_fuse()


def test_on_macos_without_macfuse(monkeypatch: pytest.MonkeyPatch) -> None:
    from xstore.fuse import lifecycle

    monkeypatch.setattr(lifecycle, "MACFUSE_BUNDLE", "/nonexistent/macfuse.fs")
    monkeypatch.setattr(lifecycle, "PLATFORM", "darwin")
    with pytest.raises(FuseUnavailableError, match="macFUSE is not installed"):
        lifecycle.check_fuse()


def test_help_texts_have_examples() -> None:
    for argv in (["mount", "nar"], ["mount", "store"], ["mount", "casefold"], ["umount"]):
        result = subprocess.run([*XSTORE, *argv, "--help"], capture_output=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        assert b"Example: xstore " in result.stdout
