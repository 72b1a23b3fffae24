"""What every command shares: the error boundary, binary input/output, progress, option types.

This is the single place where errors become messages and exit codes: an `XstoreError` or `OSError`
becomes one line `error: ...` on stderr and exit status 1; Ctrl-C exits 130 after cleanup; a closed
stdout pipe exits quietly. `XSTORE_DEBUG=1` lets the traceback through instead. It does not import
typer: the fast path (`fast.py`) runs commands without it.
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat
import sys
import threading
import time

from xstore.errors import UsageError, XstoreError

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO, Final, NoReturn


class CaseHackOpt(enum.StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


class FoldOpt(enum.StrEnum):
    auto = "auto"
    ascii = "ascii"
    apfs = "apfs"


# Control characters, shown escaped: a newline, a carriage return or a terminal escape in a hostile name
# or a remote's message must neither break a message into lines nor drive the user's terminal.
_CONTROLS: Final = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F) if c != 0x09} | {0x0A: "\\n", 0x0D: "\\r"}


def one_line(message: str) -> str:
    """`message` with its control characters (but tabs) escaped, as `\\n`, `\\r`, `\\x1b`."""
    return message.translate(_CONTROLS)


def err(message: str) -> None:
    """One line on stderr. Names in messages come from `os.fsdecode`; they are written back as the bytes
    they were, as Nix prints them (no `b'...'`), but with control characters escaped (`one_line`).
    Dropped when stderr is closed."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        sys.stderr.buffer.write(one_line(message).encode("utf-8", "surrogateescape") + b"\n")
        sys.stderr.buffer.flush()


class ClosedStream:
    """Stands in for a standard stream that was closed when the process started (`>&-`): any use raises
    `StreamClosedError` (one line, exit 1) instead of Python failing on `None`."""

    def __init__(self, name: str) -> None:
        self._what = f"standard {name} is closed"

    def _fail(self, *_args: object, **_kwargs: object) -> NoReturn:
        from xstore.errors import StreamClosedError

        raise StreamClosedError(self._what)

    write = read = readline = fileno = _fail

    def flush(self) -> None:
        """Nothing to flush (the interpreter flushes standard streams at exit)."""

    @property
    def buffer(self) -> ClosedStream:
        return self

    def isatty(self) -> bool:
        return False

    def __enter__(self) -> ClosedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def require_stdout() -> None:
    """Raise `StreamClosedError` now if standard output was closed at start: for commands that must not
    begin work whose result they could not report."""
    if isinstance(sys.stdout, ClosedStream):
        sys.stdout.write("")


def guard_standard_streams() -> None:
    """Replace standard streams that were closed at start (Python sets them to None) by `ClosedStream`s."""
    for name, what in (("stdin", "input"), ("stdout", "output"), ("stderr", "error")):
        if getattr(sys, name) is None:
            setattr(sys, name, ClosedStream(what))


def _terminate(signum: int, _frame: object) -> None:
    # Unwind like Ctrl-C, so every `finally` runs: restores and imports remove their temporaries.
    raise KeyboardInterrupt


def prepare_process() -> None:
    """What every run does before its command: SIGTERM and SIGHUP unwind like Ctrl-C (a terminal that
    goes away must not leave half-written temporaries behind), and closed standard streams get stand-ins."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    guard_standard_streams()


def _describe_os_error(e: OSError) -> str:
    where = f" '{os.fsdecode(e.filename)}'" if e.filename is not None else ""
    return f"{e.strerror or e}{':' if where else ''}{where}"


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn expected failures into `error: ...` and exit 1 (130 for Ctrl-C)."""
    from xstore.notices import listening

    if os.environ.get("XSTORE_DEBUG") == "1":
        with listening(err):
            yield
        return
    try:
        with listening(err):
            yield
    except UsageError as e:
        err(f"error: {e}")
        raise SystemExit(2) from None
    except XstoreError as e:
        err(f"error: {e}")
        raise SystemExit(1) from None
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
    except OSError as e:
        err(f"error: {_describe_os_error(e)}")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        err("error: interrupted")
        raise SystemExit(130) from None


def descriptor_of(f: BinaryIO) -> int | None:
    """The file descriptor behind `f`, or None when it has none (an in-memory stream under test)."""
    try:
        return f.fileno()
    except (OSError, ValueError):
        return None


def stdout_binary() -> BinaryIO:
    out = sys.stdout.buffer
    if out.isatty():
        raise XstoreError("refusing to write binary data to a terminal; use -o FILE or a redirection")
    return out


@contextlib.contextmanager
def atomic_output(path: str | None) -> Iterator[Callable[[bytes], object]]:
    """A sink for binary output: stdout when `path` is None or "-", else `fsops.atomic_file(path)`."""
    from xstore.fsops import FdSink, atomic_file

    if path is None or path == "-":
        out = stdout_binary()
        out.flush()
        fd = descriptor_of(out)
        if fd is None:
            yield out.write
            out.flush()
            return
        yield FdSink(fd)  # straight to the descriptor: large contents can move in the kernel
        return

    with atomic_file(path) as write:
        yield write


def open_input(path: str | None, *, raw: bool = False) -> BinaryIO:
    """`path` opened for binary reading; stdin when None or "-". Opening a FIFO waits for a writer:
    that wait is announced, and Ctrl-C ends it. With `raw`, reads take from the descriptor exactly what
    they return (no read-ahead), so what follows can be moved from the descriptor in the kernel."""
    if path is None or path == "-":
        stdin = sys.stdin.buffer
        raw_stdin = getattr(stdin, "raw", None)
        return raw_stdin if raw and raw_stdin is not None else stdin
    from xstore.fsops import announce_fifo

    announce_fifo(path, "a writer")
    return open(path, "rb", buffering=0 if raw else -1)


class Progress:
    """A progress line on stderr, drawn only when stderr is a terminal.

    `update(done)` sets the bytes done (`total`, when known, adds a percentage), `item()` names what is
    being worked on and counts it, and `echo()` prints a line of other output: the progress line is
    cleared first, so the two never run together. While active, a ticker thread redraws the line a few
    times a second, so the elapsed time keeps moving through long steps that report nothing (a
    canonicalisation, a wait for a lock). Use as a context manager; `close()` clears the line.
    Notices from the library (`xstore.notices`) are shown through `echo()` while it is open.
    """

    _SPIN: Final = "|/-\\"

    def __init__(self, label: str, total: int | None = None, *, unit: str = "bytes") -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.enabled = sys.stderr.isatty()
        self.done = 0
        self.items = 0
        self.current = ""
        self._start = time.monotonic()
        self._drawn = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._listening: contextlib.ExitStack | None = None

    def __enter__(self) -> Progress:
        from xstore.notices import listening

        self._listening = contextlib.ExitStack()
        self._listening.enter_context(listening(lambda message: self.echo(message, err=True)))
        if self.enabled:
            with self._lock:
                self._draw()
            self._ticker = threading.Thread(target=self._tick, name="xstore-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, done: int) -> None:
        self.update(done)

    def update(self, done: int) -> None:
        self.done = done

    def item(self, name: str, done: int | None = None) -> None:
        """One more item (a store path) is being worked on."""
        self.items += 1
        self.current = name
        if done is not None:
            self.done = done

    def echo(self, line: str, *, err: bool = False) -> None:
        """Print `line` (to stdout, or stderr with `err`) without mixing it into the progress line."""
        with self._lock:
            self._clear()
            stream = sys.stderr if err else sys.stdout
            stream.write((one_line(line) if err else line) + "\n")
            stream.flush()

    def _text(self) -> str:
        elapsed = time.monotonic() - self._start
        spin = self._SPIN[int(elapsed * 4) % len(self._SPIN)]
        details = []
        if self.items:
            details.append(f"{self.items} path{'s' if self.items != 1 else ''}")
        if self.unit == "bytes":
            amount = _mib(self.done)
            if self.total:
                amount += f" of {_mib(self.total)} ({min(100, 100 * self.done // self.total)}%)"
            if elapsed >= 1 and self.done:
                amount += f", {_mib(int(self.done / elapsed))}/s"
            details.append(amount)
        else:
            details.append(f"{self.done}" + (f" of {self.total}" if self.total else "") + f" {self.unit}")
        details.append(f"{int(elapsed)}s")
        text = f"{spin} {self.label}: " + ", ".join(details)
        if self.current:
            text += f" {one_line(self.current)}"
        return text[: max(20, _columns() - 1)]

    def _draw(self) -> None:
        sys.stderr.write("\r" + self._text() + "\x1b[K")
        sys.stderr.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._drawn = False

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            with self._lock:
                self._draw()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            self._clear()
        if self._listening is not None:
            self._listening.close()
            self._listening = None


def _columns() -> int:
    """The terminal's width: $COLUMNS, else what the terminal says, else 100 (as shutil's, without
    importing shutil at start-up)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.stderr.fileno()).columns
        except (OSError, ValueError):
            columns = 0
    return columns if columns > 0 else 100


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def file_size(f: BinaryIO) -> int | None:
    try:
        st = os.fstat(f.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if st.st_size > 0 and stat.S_ISREG(st.st_mode) else None
