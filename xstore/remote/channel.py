"""Moving a protocol's bytes: a byte stream to a peer with every wait bounded, and the processes that
carry one (ssh, or the command itself for `localhost`).

`Channel` reads and writes non-blocking file descriptors (a socket, or a process's two pipes) with
`poll()`: every wait has a deadline (the connection's timeout, counted from the last progress, so a slow
but moving transfer never times out), says what it waits for in a notice when it lasts, and is
interrupted by Ctrl-C (the interpreter raises `KeyboardInterrupt` out of `poll`). `send_watching`
sends while taking in what the peer says meanwhile, for protocols where the far end may report an error
in the middle of an upload (the daemon's framed AddToStoreNar).

`RemoteProcess` runs the command line Nix would run (`ssh HOST -x -a <NIX_SSHOPTS> ... COMMAND`, or
`bash -c COMMAND` for `localhost`, as Nix 2.8 does), connects a channel to its stdin and stdout, and
keeps the last lines of its stderr: the serve protocol has no error messages of its own, so what the
far end printed before exiting is what a failure must say. `close()` ends the process: stdin closed,
a short wait, then SIGTERM and SIGKILL.

Nix: libstore/ssh.cc (`SSHMaster::startCommand`, `addCommonSSHOpts`), util.cc (`shellEscape`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
import os
import select
import threading
import time
from collections.abc import Callable, Sequence

from xstore.errors import InvalidStoreUrlError, RemoteConnectionError, RemoteTimeoutError
from xstore.fsops import CopySink
from xstore.notices import notice

# Neither typing nor subprocess, re or tempfile at import: `xstore serve ssh` runs on this module and
# needs none of them (they are imported where a process is started, a message cleaned or a file made).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from xstore.storeurl import StoreUrl

CHUNK: Final = 1 << 20
# Reads go into a buffer of this size, kept for the channel's life, while the peer sends little at a time
# (requests, answers): a fresh CHUNK-sized bytes object per read costs the allocator an mmap, an mremap
# and a munmap, even for a read that finds nothing. A read that fills it switches to reads of CHUNK,
# which then need no copy; one that does not switches back.
SMALL_READ: Final = 64 << 10
# A read that finds nothing tries again for this long before sleeping in poll() (on a machine with more
# than one processor to run on). A peer in a request-and-answer exchange (the serve protocol adds one
# path per exchange) usually answers within it, and a processor left idle for that long comes back
# slowly and with its caches cold, on a virtual machine above all: xstore serve ssh took 248 ms for 501
# paths from Nix without this, 201 ms with it (median of 8 runs each; 100 us to 1 ms made no difference).
SPIN: Final = 100e-6
_SPINS: Final = (
    len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) > 1
)
_SEND_STEP: Final = 1 << 30  # bytes per sendfile call: large, but bounded
# sendfile's errors for descriptors it cannot serve (then the bytes go through a buffer instead).
_NO_SENDFILE: Final = (errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK, errno.EOPNOTSUPP, errno.ESPIPE)
DEFAULT_TIMEOUT: Final = 300.0
# A wait longer than this is announced once (what is awaited, and from whom).
NOTICE_AFTER: Final = 5.0
STDERR_LINES: Final = 20
STDERR_LINE_MAX: Final = 2048

_ANSI = r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]"


def plain(text: str) -> str:
    """`text` without terminal escape sequences (Nix colours its messages) and control characters."""
    import re  # compiled once, in re's own cache

    text = re.sub(_ANSI, "", text)
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)


def one_line(text: str) -> str:
    """A message of several lines (Nix's errors have indented detail lines) as one line."""
    return " ".join(part.strip() for part in plain(text).splitlines() if part.strip())


def shell_escape(text: str) -> str:
    """Quote `text` for a POSIX shell as Nix's `shellEscape` does: in single quotes, each `'` as `'\\''`."""
    return "'" + text.replace("'", "'\\''") + "'"


class Channel:
    """A byte stream to `peer` over `read_fd` and `write_fd` (the same descriptor for a socket), both
    made non-blocking. `timeout` bounds each wait (seconds without progress); `None` means no bound
    (only for waits a person controls). The descriptors are not closed here."""

    def __init__(
        self, read_fd: int, write_fd: int, *, peer: str, timeout: float | None = DEFAULT_TIMEOUT
    ) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.peer = peer
        self.timeout = timeout
        self.eof = False
        self._small = bytearray(SMALL_READ)
        self._bulk = False  # the last read filled `_small`: read CHUNK at a time
        os.set_blocking(read_fd, False)
        if write_fd != read_fd:
            os.set_blocking(write_fd, False)

    # -- waiting -----------------------------------------------------------------------------------

    def _wait(
        self, fd: int, events: int, what: str, limit: float | None, started: float, noticed: bool
    ) -> bool:
        """Poll `fd` for `events` until it is ready; returns whether the wait has been announced.
        Raises `RemoteTimeoutError` once `limit` seconds have passed since `started`."""
        poller = select.poll()
        poller.register(fd, events)
        while True:
            waited = time.monotonic() - started
            if limit is not None and waited >= limit:
                raise RemoteTimeoutError(
                    f"{self.peer} did not answer for {limit:g} seconds (xstore was waiting for {what})"
                )
            if not noticed and waited < NOTICE_AFTER:
                step = NOTICE_AFTER - waited
            else:
                step = limit - waited if limit is not None else 3600.0
            if limit is not None:
                step = min(step, limit - waited)
            if poller.poll(math.ceil(step * 1000)):
                return noticed
            if not noticed and time.monotonic() - started >= NOTICE_AFTER:
                until = f"; giving up after {limit:g} seconds" if limit is not None else ""
                notice(f"waiting for {self.peer} ({what}){until}")
                noticed = True

    # -- reading -----------------------------------------------------------------------------------

    def recv(self, what: str, *, timeout: float | bool | None = True) -> bytes:
        """Up to `CHUNK` bytes from the peer, `b""` once its stream has ended. `what` names what is
        awaited, for the notice and the timeout error. `timeout=True` means the channel's timeout."""
        limit = self.timeout if timeout is True else (None if timeout is False else timeout)
        started = time.monotonic()
        noticed = False
        spin_until = time.perf_counter() + SPIN if _SPINS else 0.0
        while True:
            data = self.try_recv()
            if data is not None:
                return data
            if time.perf_counter() < spin_until:
                continue
            noticed = self._wait(self.read_fd, select.POLLIN, what, limit, started, noticed)

    def try_recv(self) -> bytes | None:
        """What the peer has sent already, without waiting: None when nothing, `b""` at its end."""
        try:
            if self._bulk:
                data = os.read(self.read_fd, CHUNK)
                self._bulk = len(data) >= SMALL_READ
            else:
                n = os.readv(self.read_fd, (self._small,))
                data = bytes(memoryview(self._small)[:n])
                self._bulk = n == SMALL_READ
        except BlockingIOError:
            return None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        return data

    # -- writing -----------------------------------------------------------------------------------

    def send(self, data: bytes, what: str) -> None:
        """Write all of `data`. Raises `RemoteConnectionError` if the peer has gone, and
        `RemoteTimeoutError` if it stops reading for longer than the timeout."""
        view = memoryview(data)
        started = time.monotonic()
        noticed = False
        while view:
            try:
                n = os.write(self.write_fd, view)
            except BlockingIOError:
                noticed = self._wait(self.write_fd, select.POLLOUT, what, self.timeout, started, noticed)
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise RemoteConnectionError(
                    f"{self.peer} closed the connection while xstore was sending {what}"
                ) from None
            view = view[n:]
            started = time.monotonic()

    def send_file(self, src_fd: int, count: int, what: str) -> int:
        """Send `count` bytes of the file at `src_fd` from its position on (which advances past them),
        moved in the kernel (`sendfile`) where the system can, else read and sent in blocks. Returns the
        bytes sent: fewer than `count` only when the file ended first. Raises as `send` does, and
        `OSError` for a failure to read the file."""
        offset = os.lseek(src_fd, 0, os.SEEK_CUR)
        done = 0
        in_kernel = hasattr(os, "sendfile")
        started = time.monotonic()
        noticed = False
        try:
            while done < count:
                step = min(count - done, _SEND_STEP)
                if in_kernel:
                    try:
                        n = os.sendfile(self.write_fd, src_fd, offset + done, step)
                    except BlockingIOError:
                        noticed = self._wait(
                            self.write_fd, select.POLLOUT, what, self.timeout, started, noticed
                        )
                        continue
                    except (BrokenPipeError, ConnectionResetError):
                        raise RemoteConnectionError(
                            f"{self.peer} closed the connection while xstore was sending {what}"
                        ) from None
                    except OSError as e:
                        if done or e.errno not in _NO_SENDFILE:
                            raise
                        in_kernel = False  # not to this kind of descriptor (macOS: sockets only)
                        continue
                else:
                    data = os.pread(src_fd, min(step, CHUNK), offset + done)
                    n = len(data)
                    self.send(data, what)
                if not n:
                    break  # the file ended
                done += n
                started = time.monotonic()
        finally:
            os.lseek(src_fd, offset + done, os.SEEK_SET)
        return done

    def send_watching(self, data: bytes, what: str, on_data: Callable[[bytes], bool]) -> bool:
        """Write all of `data` while passing whatever the peer sends meanwhile to `on_data` (`b""` at its
        end). Stops early, returning False, when `on_data` returns False (the peer reported a failure);
        True when everything was written."""
        view = memoryview(data)
        started = time.monotonic()
        poller = select.poll()
        same = self.read_fd == self.write_fd
        if same:
            poller.register(self.read_fd, select.POLLIN | select.POLLOUT)
        else:
            poller.register(self.read_fd, select.POLLIN)
            poller.register(self.write_fd, select.POLLOUT)
        noticed = False
        while view:
            if not self.eof:
                incoming = self.try_recv()
                if incoming is not None and not on_data(incoming):
                    return False
            try:
                n = os.write(self.write_fd, view)
            except BlockingIOError:
                waited = time.monotonic() - started
                if self.timeout is not None and waited >= self.timeout:
                    raise RemoteTimeoutError(
                        f"{self.peer} did not read for {self.timeout:g} seconds (xstore was sending {what})"
                    ) from None
                if not poller.poll(1000) and not noticed and waited >= NOTICE_AFTER:
                    notice(f"waiting for {self.peer} to read {what}")
                    noticed = True
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise RemoteConnectionError(
                    f"{self.peer} closed the connection while xstore was sending {what}"
                ) from None
            view = view[n:]
            started = time.monotonic()
        return True


class ChannelSink(CopySink):
    """A NAR sink onto a channel: blocks are sent as they come, the contents of large files with
    `Channel.send_file` (in the kernel where the system can)."""

    __slots__ = ("channel", "what")

    def __init__(self, channel: Channel, what: str) -> None:
        self.channel = channel
        self.what = what

    def __call__(self, data: bytes) -> None:
        self.channel.send(data, self.what)

    def copy_from(self, src_fd: int, count: int) -> int:
        return self.channel.send_file(src_fd, count, self.what)


class _StderrTail:
    """The last lines a process wrote to stderr, collected by a thread."""

    def __init__(self, fd: int) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._thread = threading.Thread(
            target=self._run, args=(fd,), name="xstore-remote-stderr", daemon=True
        )
        self._thread.start()

    def _run(self, fd: int) -> None:
        pending = b""
        with contextlib.suppress(OSError), os.fdopen(fd, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._add(line)
                pending = pending[-STDERR_LINE_MAX:]
        if pending:
            self._add(pending)

    def _add(self, line: bytes) -> None:
        text = one_line(line[:STDERR_LINE_MAX].decode("utf-8", "replace"))
        if text:
            self._lines.append(text)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def lines(self) -> list[str]:
        return list(self._lines)


class RemoteProcess:
    """A process carrying a protocol on its stdin and stdout (`argv`), its stderr kept for messages.

    Raises `RemoteConnectionError` if it cannot be started. Use `channel` for the protocol, `failure()`
    for the message of a connection that broke, `close()` at the end (idempotent).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        peer: str,
        timeout: float | None,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        import subprocess

        self.argv = list(argv)
        self.peer = peer
        self._cleanup = cleanup
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
            )
        except OSError as e:
            if cleanup is not None:
                cleanup()
            raise RemoteConnectionError(
                f"cannot run '{self.argv[0]}' to reach {peer}: {e.strerror or e}"
            ) from None
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._stderr = _StderrTail(os.dup(self.proc.stderr.fileno()))
        self.proc.stderr.close()
        self.channel = Channel(
            self.proc.stdout.fileno(), self.proc.stdin.fileno(), peer=peer, timeout=timeout
        )
        self._closed = False

    def stderr_lines(self, wait: float = 2.0) -> list[str]:
        """The last lines of the process's stderr; when it has exited (or is about to), after waiting up
        to `wait` seconds for the rest of them."""
        import subprocess

        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(wait)
        if self.proc.poll() is not None:
            self._stderr.join(wait)
        return self._stderr.lines()

    def failure(self, reason: str) -> str:
        """`reason`, with what the far end said last (its stderr) and how it exited, on one line."""
        lines = self.stderr_lines()
        status = self.proc.poll()
        said = ""
        if lines:
            errors = [line for line in lines if line.startswith("error:")]
            last = (errors or lines)[-1]
            said = f": {last.removeprefix('error: ')}"
        elif status is not None and status != 0:
            said = (
                f" ('{self.argv[0]}' exited with status {status})"
                if status > 0
                else f" (killed by signal {-status})"
            )
        return f"{reason}{said}"

    def close(self, wait: float = 10.0, *, forward: bool = False) -> None:
        """Close stdin (the far end's sign to finish), wait up to `wait` seconds, then terminate. With
        `forward`, what the far end printed on stderr (warnings of a session that went well) is passed
        on as notices, `remote: ...`."""
        if self._closed:
            return
        import subprocess

        self._closed = True
        proc = self.proc
        try:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._stderr.join(2.0)
            if forward:
                for line in self._stderr.lines():
                    notice(f"remote: {line}")
        finally:
            if self._cleanup is not None:
                self._cleanup()

    def kill(self) -> None:
        """End the process at once (after an error that leaves the protocol out of step)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.close(wait=2.0)


# -- ssh --------------------------------------------------------------------------------------------


def ssh_argv(
    host: str,
    command: str,
    *,
    ssh_key: str | None = None,
    host_key_file: str | None = None,
    compress: bool = False,
) -> list[str]:
    """What Nix 2.8 runs to reach `host` with `command` (one argument, a shell string): `bash -c COMMAND`
    for `localhost`, else `ssh HOST -x -a <NIX_SSHOPTS, split on whitespace> [-i KEY]
    [-oUserKnownHostsFile=FILE] [-C] COMMAND`, the first `ssh` on PATH."""
    if host == "localhost":
        return ["bash", "-c", command]
    import re

    argv = ["ssh", host, "-x", "-a"]
    # Split as Nix's `tokenizeString` does: on spaces, tabs and line ends, without any quoting.
    argv += [t for t in re.split(r"[ \t\n\r]+", os.environ.get("NIX_SSHOPTS", "")) if t]
    if ssh_key:
        argv += ["-i", ssh_key]
    if host_key_file:
        argv.append(f"-oUserKnownHostsFile={host_key_file}")
    if compress:
        argv.append("-C")
    argv.append(command)
    return argv


def known_hosts_file(host: str, base64_key: str) -> tuple[str, Callable[[], None]]:
    """A temporary known-hosts file holding `host`'s public key (the store parameter
    `base64-ssh-public-host-key`, the base64 of an OpenSSH public key line), and a function removing it."""
    import base64
    import binascii
    import tempfile

    try:
        key = base64.b64decode(base64_key, validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidStoreUrlError(
            "parameter 'base64-ssh-public-host-key' is not valid base64 text"
        ) from None
    directory = tempfile.mkdtemp(prefix="xstore-ssh-")
    path = os.path.join(directory, "host-key")
    bare_host = host.rpartition("@")[2]
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{bare_host} {key}\n")

    def remove() -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)

    return path, remove


# -- the ssh parameters of a store URL ------------------------------------------------------------------

PARAMS: Final = frozenset(
    {
        "ssh-key",
        "base64-ssh-public-host-key",
        "compress",
        "remote-program",
        "remote-store",
        "max-connections",
        "timeout",
    }
)


def check_host(url: StoreUrl) -> str:
    host = url.authority
    if not host or host.startswith("-"):
        raise InvalidStoreUrlError(f"invalid SSH host name '{host}' in store URL '{url.text}'")
    return host


def timeout_param(url: StoreUrl) -> float | None:
    value = url.param("timeout")
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InvalidStoreUrlError(
            f"store URL '{url.text}': parameter 'timeout' must be a number of seconds > 0"
        )
    return seconds


def start_remote(url: StoreUrl, command: str, *, timeout: float | None) -> RemoteProcess:
    """The process that carries a protocol to `url`'s host: `command` run through ssh (or locally for
    `localhost`) with the URL's ssh parameters."""
    host = check_host(url)
    host_key = url.param("base64-ssh-public-host-key")
    host_key_file, cleanup = known_hosts_file(host, host_key) if host_key else (None, None)
    argv = ssh_argv(
        host,
        command,
        ssh_key=url.param("ssh-key") or None,
        host_key_file=host_key_file,
        compress=url.flag("compress"),
    )
    return RemoteProcess(argv, peer=f"'{host}'", timeout=timeout, cleanup=cleanup)
