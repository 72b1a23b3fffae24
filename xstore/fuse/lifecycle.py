"""Mounting, serving and unmounting xstore's FUSE filesystems.

`mount_filesystem` checks everything it can before anything is mounted (FUSE present, the mount point an
existing directory that is not already a mount point), then mounts and serves. In the background mode
(the default, like sshfs) the process forks twice before any thread or trio run exists: the grandchild
leaves the session, points its standard streams at /dev/null, builds the filesystem (`make_ops()`),
mounts, checks that the mount answers, and reports "ready" or a one-line error through a pipe; the
caller returns only then. Whatever the user's input could get wrong (a bad NAR, a missing store) is
meant to be checked by the caller before it calls `mount_filesystem`, so such errors never get as far
as a mount.

Shutdown is always the same path: SIGINT, SIGTERM and SIGHUP are blocked from just before `pyfuse3.init`
until trio has a signal receiver, so a signal can arrive at any time and still end `pyfuse3.main`
through `pyfuse3.terminate()`; an unmount from outside (`xstore umount`, fusermount3 -u) ends it too;
then `pyfuse3.close(unmount=True)` removes the mount if it is still there (lazily, so a file left open
in it does not keep it). libfuse reports mount failures on
the C stderr, which is captured around `pyfuse3.init` to make the one-line error.

Requests. pyfuse3 serves requests with as many trio tasks as the filesystem's `fuse_tasks` says (99 if it
says nothing): a filesystem whose handlers never wait needs one. Once the mount answers, and when this
process runs as root, the mount's readahead (its backing device info's `read_ahead_kb`, 128 KiB by
default, which FUSE cannot raise itself) is raised to `READAHEAD_KIB`, the largest request libfuse 3
accepts: a large file is then read in 1 MiB requests instead of 128 KiB ones. Without root it stays.

pyfuse3 and trio are imported only inside the functions that serve, so the CLI can import this module
(for `check_fuse`, `unmount`, `is_mounted`) where pyfuse3 is missing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from xstore.errors import FuseMountError, FuseUnavailableError, XstoreError

# The platform as a plain string: the branches for Linux and for macOS are both checked by mypy,
# whichever platform it checks for.
PLATFORM: str = sys.platform

if TYPE_CHECKING:
    import pyfuse3

log = logging.getLogger("xstore.fuse")

FUSE_DEVICE: Final = "/dev/fuse"
MACFUSE_BUNDLE: Final = "/Library/Filesystems/macfuse.fs"
SUBTYPE: Final = "xstore"
# How long `mount_filesystem` waits for the background process to say the mount answers.
READY_TIMEOUT: Final = 120.0
# How long `unmount` waits for a mount to answer a stat before treating it as hung (not dead).
PROBE_TIMEOUT: Final = 5.0
LOG_ENV: Final = "XSTORE_FUSE_LOG"
# The readahead given to a mount when root (KiB): libfuse 3 takes requests of up to 256 pages (its
# FUSE_MAX_MAX_PAGES), so the kernel's readahead can fill the largest request it may send.
READAHEAD_KIB: Final = 1024
# pyfuse3's own default for the tasks that serve requests.
DEFAULT_TASKS: Final = 99

# SIGHUP too: a foreground mount whose terminal goes away unmounts instead of leaving a dead mount.
_STOP_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


# -- what is available --------------------------------------------------------------------------------


def check_fuse() -> None:
    """Raise `FuseUnavailableError` unless this process can mount a pyfuse3 filesystem: a supported
    platform, the FUSE device (or macFUSE), pyfuse3 importable, and either root or fusermount3."""
    if PLATFORM == "darwin":
        if not os.path.exists(MACFUSE_BUNDLE):
            raise FuseUnavailableError(
                "FUSE is not available: macFUSE is not installed (brew install --cask macfuse, "
                "or https://osxfuse.github.io)"
            )
    elif not PLATFORM.startswith("linux"):
        raise FuseUnavailableError(
            f"FUSE filesystems are supported on Linux and on macOS with macFUSE, not on {PLATFORM}"
        )
    elif not os.path.exists(FUSE_DEVICE):
        raise FuseUnavailableError(
            f"FUSE is not available: no {FUSE_DEVICE} (load the module with 'modprobe fuse'; in a "
            "container, pass the device, e.g. docker run --device /dev/fuse --cap-add SYS_ADMIN)"
        )
    try:
        import pyfuse3  # noqa: F401 (imported to see whether it can be)
    except ImportError as e:
        hint = (
            "pip install 'xstore[fuse]' (it builds against libfuse3: apt-get install libfuse3-dev "
            "pkg-config gcc python3-dev)"
            if PLATFORM != "darwin"
            else "the 'fuse' extra installs it on Linux only; on macOS build pyfuse3 against macFUSE"
        )
        raise FuseUnavailableError(f"FUSE is not available: pyfuse3 cannot be imported ({e}); {hint}") from e
    if PLATFORM != "darwin" and os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise FuseUnavailableError(
            "FUSE is not available: fusermount3 not found, and only root can mount without it "
            "(apt-get install fuse3)"
        )


# -- the mount table ----------------------------------------------------------------------------------


def _absolute(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _canonical(path: str | os.PathLike[str]) -> str:
    """`path` made absolute with symlinks resolved in its parent only: resolving the last component
    would look inside the mount, which hangs while its process is stopped."""
    absolute = _absolute(path)
    parent, name = os.path.split(absolute)
    if not name:
        return absolute
    return os.path.join(os.path.realpath(parent), name)


def _mount_types(path: str) -> list[str]:
    """The filesystem types mounted at exactly `path`, in mount order (empty if none)."""
    if not PLATFORM.startswith("linux"):
        return ["unknown"] if os.path.ismount(path) else []
    from xstore.mountns import mount_table

    return [entry.fstype for entry in mount_table() if entry.mount_point == path]


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """Whether something is mounted at `path` (after resolving symlinks in its parent), according to
    /proc/self/mountinfo. Never looks inside the mount, so a dead or hung FUSE mount answers too."""
    return bool(_mount_types(_canonical(path))) or bool(_mount_types(os.path.realpath(_absolute(path))))


def check_mountpoint(mountpoint: str | os.PathLike[str], *, nonempty: bool = False) -> str:
    """The absolute path of `mountpoint` if a filesystem can be mounted there: an existing directory
    that is not a mount point already, and empty unless `nonempty` (what it holds would be hidden while
    the filesystem is mounted). Raises `FuseMountError` saying what is wrong."""
    path = _canonical(mountpoint)
    if _mount_types(path):
        raise FuseMountError(
            f"'{path}' is already a mount point (unmount it first: xstore umount '{path}')", path=path
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FuseMountError(f"mount point '{path}' does not exist", path=path) from None
    except OSError as e:
        raise FuseMountError(f"cannot use '{path}' as a mount point: {e.strerror}", path=path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise FuseMountError(f"mount point '{path}' is not a directory", path=path)
    if not nonempty and os.listdir(path):
        raise FuseMountError(
            f"mount point '{path}' is not empty: what it holds would be hidden while mounted "
            "(use --nonempty to mount over it anyway)",
            path=path,
        )
    real = os.path.realpath(path)
    if real != path and _mount_types(real):
        raise FuseMountError(f"'{path}' is already a mount point (unmount it first)", path=path)
    return real


# -- mounting -----------------------------------------------------------------------------------------


def _option_value(text: str) -> str:
    # libfuse takes options as a comma-separated ASCII list (pyfuse3 encodes them as ASCII): keep the
    # value readable and make it unable to add options of its own.
    return "".join(c if c.isascii() and c.isprintable() and c not in ",\\ " else "?" for c in text)


def mount_options(fsname: str, *, read_only: bool, options: Sequence[str] = ()) -> set[str]:
    """The libfuse options xstore mounts with."""
    opts = {f"fsname={_option_value(fsname)}", f"subtype={SUBTYPE}", "default_permissions", *options}
    if read_only:
        opts.add("ro")
    return opts


def mount_filesystem(
    make_ops: Callable[[], pyfuse3.Operations],
    mountpoint: str | os.PathLike[str],
    *,
    fsname: str,
    read_only: bool,
    foreground: bool = False,
    options: Sequence[str] = (),
    nonempty: bool = False,
) -> None:
    """Mount the filesystem `make_ops()` returns on `mountpoint` and serve it (over a non-empty
    directory only with `nonempty`).

    `make_ops` is called in the process that serves (the background process, or this one with
    `foreground`); if the object it returns has a `close()` method, that is called after the unmount.
    `fsname` shows as the mount's source in the mount table, the type is `fuse.xstore`; `read_only`
    adds the `ro` option, so the kernel refuses every write with EROFS; `options` are further libfuse
    options.

    In the background (the default) this returns once the mount answers requests; the process serving
    it runs until unmounted or sent SIGINT, SIGTERM or SIGHUP. The calling process must not be running
    threads (it forks). With `foreground`, this serves in the calling process and returns after a clean
    unmount: `xstore umount`, SIGINT, SIGTERM or SIGHUP. Raises `FuseUnavailableError` without FUSE,
    and `FuseMountError` (one line, nothing left mounted) when the mount point is unusable, the mount
    fails or the new mount does not answer.
    """
    check_fuse()
    path = check_mountpoint(mountpoint, nonempty=nonempty)
    opts = mount_options(fsname, read_only=read_only, options=options)
    if foreground:
        _serve(make_ops, path, opts, report=None)
    else:
        _daemonize(make_ops, path, opts)


@contextlib.contextmanager
def _blocked(signals: frozenset[signal.Signals]) -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _raise_file_limit() -> None:
    # Every open file of a client holds a descriptor of ours (store view, casefold layer).
    import resource

    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _init_capturing_stderr(ops: pyfuse3.Operations, path: str, opts: set[str]) -> None:
    """`pyfuse3.init`, turning a failure into a one-line `FuseMountError` with libfuse's own message
    (which libfuse writes to file descriptor 2)."""
    import pyfuse3

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            pyfuse3.init(ops, path, opts)
        except (RuntimeError, OSError) as e:
            captured.seek(0)
            lines = [line.strip() for line in captured.read().decode("utf-8", "replace").splitlines()]
            said = next((line for line in reversed(lines) if line), "") or str(e)
            raise FuseMountError(f"cannot mount on '{path}': {said}", path=path) from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _serve(
    make_ops: Callable[[], pyfuse3.Operations],
    path: str,
    opts: set[str],
    report: Callable[[str], None] | None,
) -> None:
    """Mount and serve until unmounted or signalled. `report("ok")` once the mount answers; errors
    before that raise (and leave nothing mounted)."""
    import pyfuse3
    import trio

    _raise_file_limit()
    ops = make_ops()
    try:
        with _blocked(_STOP_SIGNALS):
            _init_capturing_stderr(ops, path, opts)
            log.info("mounted on %s", path)
            try:
                trio.run(_main, path, report, getattr(ops, "fuse_tasks", DEFAULT_TASKS))
            finally:
                pyfuse3.close(unmount=True)
                log.info("unmounted %s", path)
    finally:
        close = getattr(ops, "close", None)
        if callable(close):
            close()


def raise_readahead(path: str, device: int) -> None:
    """Raise the readahead of the mount at `path`, whose device number is `device`, to `READAHEAD_KIB`
    if it is lower (root only; a failure changes nothing and is logged). Looks nothing up in the mount
    (which the calling thread may be the one to serve)."""
    if os.geteuid() != 0 or not PLATFORM.startswith("linux"):
        return
    knob = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
    try:
        with open(knob, "r+") as f:
            if int(f.read().strip() or 0) < READAHEAD_KIB:
                f.seek(0)
                f.write(f"{READAHEAD_KIB}\n")
    except (OSError, ValueError) as e:
        log.info("the readahead of %s stays: %s", path, e)


async def _main(path: str, report: Callable[[str], None] | None, tasks: int = DEFAULT_TASKS) -> None:
    import pyfuse3
    import trio

    failure: FuseMountError | None = None
    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        # The receiver is in place: signals that came while blocked are delivered to it now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        try:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("%s: unmounting", signal.Signals(signum).name)
                        pyfuse3.terminate()
                        return

                async def check_serving() -> None:
                    # A stat of the mount point is answered only once the kernel's INIT handshake is
                    # done and the root's attributes come back: then the mount is usable.
                    nonlocal failure
                    try:
                        # Abandonable: if the loop stops first, nothing will ever answer this stat.
                        st = await trio.to_thread.run_sync(os.stat, path, abandon_on_cancel=True)
                    except OSError as e:
                        failure = FuseMountError(f"the new mount does not answer: {e.strerror}", path=path)
                        if report is not None:
                            report(str(failure))
                        pyfuse3.terminate()
                        return
                    raise_readahead(path, st.st_dev)
                    if report is not None:
                        report("ok")

                nursery.start_soon(stop_on_signal)
                nursery.start_soon(check_serving)
                try:
                    await pyfuse3.main(1, tasks)
                except Exception as e:  # noqa: BLE001 (re-raised below, outside the nursery's group)
                    log.error("the FUSE main loop failed: %r", e)
                    failure = FuseMountError(f"the filesystem on '{path}' stopped: {e}", path=path)
                nursery.cancel_scope.cancel()
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    if failure is not None:
        raise failure


# -- the background process ---------------------------------------------------------------------------


def _daemonize(make_ops: Callable[[], pyfuse3.Operations], path: str, opts: set[str]) -> None:
    if threading.active_count() > 1:
        raise XstoreError("internal error: cannot start a background mount from a process running threads")
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            grandchild = os.fork()
            code = 0 if grandchild else _daemon(make_ops, path, opts, write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        os.waitpid(child, 0)
        _await_ready(read_end, path)
    finally:
        os.close(read_end)


def _daemon(make_ops: Callable[[], pyfuse3.Operations], path: str, opts: set[str], pipe: int) -> int:
    """The body of the background process; returns its exit status. Never raises."""
    reported = False

    def report(message: str) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        line = "ok" if message == "ok" else "error " + " ".join(message.split())
        with contextlib.suppress(OSError):
            os.write(pipe, line.encode("utf-8", "replace") + b"\n")
            os.close(pipe)

    try:
        _detach()
        with contextlib.suppress(OSError):
            os.write(pipe, f"pid {os.getpid()}\n".encode())
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGHUP, _interrupt)

        def make_and_detach() -> pyfuse3.Operations:
            ops = make_ops()
            os.chdir("/")  # keep no directory busy; paths were made absolute by the caller
            return ops

        _serve(make_and_detach, path, opts, report)
    except XstoreError as e:
        report(str(e))
        return 1
    except KeyboardInterrupt:
        report("interrupted before the mount was ready")
        return 0
    except BaseException as e:
        log.exception("the filesystem process failed")
        report(f"unexpected {type(e).__name__}: {e}")
        return 1
    finally:
        report("the filesystem process ended before the mount was ready")
        logging.shutdown()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _detach() -> None:
    """Standard streams to /dev/null; a log file if XSTORE_FUSE_LOG names one."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    log_file = os.environ.get(LOG_ENV)
    if log_file:
        logging.basicConfig(
            filename=log_file,
            level=logging.DEBUG if os.environ.get("XSTORE_DEBUG") == "1" else logging.INFO,
            format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        )
    else:
        logging.disable(logging.CRITICAL)


def _await_ready(pipe: int, path: str) -> None:
    """Read the background process's report; raise its error (with nothing left mounted)."""
    deadline = time.monotonic() + READY_TIMEOUT
    buffer = b""
    pid: int | None = None
    try:
        while True:
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                if text.startswith("pid "):
                    pid = int(text[4:])
                elif text == "ok":
                    return
                elif text.startswith("error "):
                    _clean_up(path, pid)
                    raise FuseMountError(text[len("error ") :], path=path)
            left = deadline - time.monotonic()
            if left <= 0:
                _clean_up(path, pid, kill=True)
                raise FuseMountError(
                    f"the filesystem on '{path}' did not become ready within {READY_TIMEOUT:.0f} s", path=path
                )
            ready, _, _ = select.select([pipe], [], [], left)
            if not ready:
                continue
            data = os.read(pipe, 4096)
            if not data:
                _clean_up(path, pid)
                raise FuseMountError(
                    f"the filesystem process for '{path}' ended before the mount was ready", path=path
                )
            buffer += data
    except BaseException as e:
        if not isinstance(e, FuseMountError):
            _clean_up(path, pid, kill=True)
        raise


def _clean_up(path: str, pid: int | None, *, kill: bool = False) -> None:
    """After a failed start: stop the background process if asked, and make sure no mount is left."""
    if kill and pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    elif pid is not None:
        for _ in range(50):  # it unmounts on its way out
            if not _alive(pid):
                break
            time.sleep(0.1)
    if is_mounted(path):
        with contextlib.suppress(FuseMountError):
            _run_unmount(path, lazy=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- unmounting ---------------------------------------------------------------------------------------


def _unmount_argv(path: str, *, lazy: bool) -> list[str]:
    if PLATFORM == "darwin":
        return ["umount", *(["-f"] if lazy else []), path]
    umount = shutil.which("umount")
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if os.geteuid() == 0 and umount is not None:
        return [umount, *(["-l"] if lazy else []), path]
    if fusermount is None:
        raise FuseUnavailableError("cannot unmount: fusermount3 not found (apt-get install fuse3)")
    return [fusermount, "-u", *(["-z"] if lazy else []), path]


def _run_unmount(path: str, *, lazy: bool) -> None:
    argv = _unmount_argv(path, lazy=lazy)
    try:
        result = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False, timeout=60)
    except subprocess.TimeoutExpired:
        raise FuseMountError(
            f"unmounting '{path}' did not finish within 60 s ({argv[0]} hangs)", path=path
        ) from None
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        said = lines[-1].strip() if lines else f"{os.path.basename(argv[0])} exited with {result.returncode}"
        if "not connected" in said.lower():
            raise _NotConnectedError(said)
        if "busy" in said.lower():
            raise FuseMountError(
                f"cannot unmount '{path}': it is busy (a process has a file or its working directory there)",
                path=path,
            )
        raise FuseMountError(f"cannot unmount '{path}': {said}", path=path)


class _NotConnectedError(FuseMountError):
    pass


def _probe(path: str) -> int | None:
    """0 if the mount answers, the errno if it fails, None if it does not answer in time (its process
    is alive but stuck or stopped). Asks statfs, which the kernel never answers from its cache (a stat
    may be). Runs in a daemon thread so a hung mount cannot hang us."""
    result: list[int] = []

    def probe() -> None:
        try:
            os.statvfs(path)
        except OSError as e:
            result.append(e.errno or errno.EIO)
        else:
            result.append(0)

    thread = threading.Thread(target=probe, name="xstore-umount-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT)
    return result[0] if result else None


def unmount(mountpoint: str | os.PathLike[str]) -> str:
    """Unmount the FUSE filesystem at `mountpoint`; returns a message for the user.

    A filesystem whose process died ("Transport endpoint is not connected") is unmounted lazily and the
    message says so. Raises `FuseMountError` if nothing, or something other than a FUSE filesystem, is
    mounted there, or if the unmount fails (busy: a process has a file open there).
    """
    path = _canonical(mountpoint)
    types = _mount_types(path)
    if not types:
        real = os.path.realpath(_absolute(mountpoint))
        types = _mount_types(real)
        path = real
    if not types:
        raise FuseMountError(f"'{path}' is not a mount point", path=path)
    if PLATFORM.startswith("linux") and types[-1] != f"fuse.{SUBTYPE}":
        raise FuseMountError(
            f"'{path}' is not one of xstore's filesystems (it is {types[-1]}); xstore umount only unmounts "
            "what xstore mount mounted",
            path=path,
        )
    died = f"unmounted '{path}': its filesystem process had died (Transport endpoint is not connected)"
    if _probe(path) == errno.ENOTCONN:
        _run_unmount(path, lazy=True)
        return died
    try:
        _run_unmount(path, lazy=False)
    except _NotConnectedError:
        _run_unmount(path, lazy=True)
        return died
    return f"unmounted '{path}'"
