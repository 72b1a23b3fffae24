"""What every command shares: the error boundary, binary input/output, progress, option types.

This is the single place where errors become messages and exit codes: an `XstoreError` or `OSError`
becomes one line `error: ...` on stderr and exit status 1; Ctrl-C exits 130 after cleanup; a closed
stdout pipe exits quietly. `XSTORE_DEBUG=1` lets the traceback through instead.
"""

from __future__ import annotations

import contextlib
import enum
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

import typer

from xstore.errors import UsageError, XstoreError


class CaseHackOpt(enum.StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


class FoldOpt(enum.StrEnum):
    auto = "auto"
    ascii = "ascii"
    apfs = "apfs"


def err(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _describe_os_error(e: OSError) -> str:
    where = f" '{os.fsdecode(e.filename)}'" if e.filename is not None else ""
    return f"{e.strerror or e}{':' if where else ''}{where}"


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn expected failures into `error: ...` and exit 1 (130 for Ctrl-C)."""
    if os.environ.get("XSTORE_DEBUG") == "1":
        yield
        return
    try:
        yield
    except UsageError as e:
        err(f"error: {e}")
        raise typer.Exit(2) from None
    except XstoreError as e:
        err(f"error: {e}")
        raise typer.Exit(1) from None
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(1) from None
    except OSError as e:
        err(f"error: {_describe_os_error(e)}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err("error: interrupted")
        raise typer.Exit(130) from None


def open_input(path: str | None) -> BinaryIO:
    """`path` opened for binary reading; stdin when None or "-"."""
    if path is None or path == "-":
        return sys.stdin.buffer
    return open(path, "rb")


def stdout_binary() -> BinaryIO:
    out = sys.stdout.buffer
    if out.isatty():
        raise XstoreError("refusing to write binary data to a terminal; use -o FILE or a redirection")
    return out


@contextlib.contextmanager
def atomic_output(path: str | None) -> Iterator[Callable[[bytes], object]]:
    """A sink for binary output: stdout when `path` is None or "-", else a temporary file beside
    `path` that replaces it only when the block completes (so a failure leaves no partial file). A
    `path` that exists and is not a regular file (`/dev/null`, a FIFO) is written to directly: replacing
    it would destroy it."""
    if path is None or path == "-":
        out = stdout_binary()
        yield out.write
        out.flush()
        return
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if special:
        with open(path, "wb", buffering=0) as f:
            yield f.write
        return
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.xstore-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            yield f.write
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Progress:
    """A byte counter on stderr, only when stderr is a terminal; redrawn at most ten times a second."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label = label
        self.total = total
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        text = f"\r{self.label}: {_mib(done)}"
        if self.total:
            text += f" of {_mib(self.total)} ({100 * done // self.total}%)"
        sys.stderr.write(text + "\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._last:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def file_size(f: BinaryIO) -> int | None:
    try:
        st = os.fstat(f.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if st.st_size > 0 and stat.S_ISREG(st.st_mode) else None
