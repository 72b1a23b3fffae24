"""`xstore serve http` as a real subprocess for the tests: started on a free port of 127.0.0.1 (port 0, the
URL read from its first log line), its log (stderr) kept in a file the test can read while it runs, and
stopped with SIGTERM afterwards, checking that it exits 0 and says `stopped` without a traceback.

Plus small raw-socket clients for what no well-behaved HTTP client sends (malformed targets, `..`, a
client that stops reading or vanishes mid-NAR), and /proc readings of the server process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import Arg

XSTORE = [sys.executable, "-X", "dev", "-bb", "-W", "error", "-m", "xstore"]
XSTORE_PLAIN = [sys.executable, "-m", "xstore"]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


@dataclass
class Server:
    """A running `xstore serve http`: its base URL, process and log file."""

    url: str
    proc: subprocess.Popen[bytes]
    log_file: Path
    stopped: bool = field(default=False)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        return self.log().splitlines()

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> str:
        """The first log line matching the regular expression `pattern`, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if re.search(pattern, line):
                    return line
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no log line matches {pattern!r}; the log:\n{self.log()}")
            time.sleep(0.05)

    def status(self, field_name: str) -> int:
        """A number from /proc/PID/status (VmHWM, VmRSS in kB; Threads)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise KeyError(field_name)

    def open_files(self) -> list[str]:
        """Where the server's open file descriptors lead."""
        out = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                out.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
        return out

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Send `signum`, wait for the exit; returns (exit status, log)."""
        if not self.stopped:
            self.stopped = True
            self.proc.send_signal(signum)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the server did not stop on {signum}; the log:\n{self.log()}") from None
        return self.proc.returncode, self.log()


@contextlib.contextmanager
def serving(
    root: Path | str, tmp_path: Path, *args: Arg, check_stop: bool = True, dev: bool = True
) -> Iterator[Server]:
    """`xstore serve http --store ROOT --listen 127.0.0.1:0 ARGS...` while the block runs; `dev` runs it
    under `python -X dev -bb -W error` (as every xstore subprocess of the suite), else as installed."""
    log_file = tmp_path / f"serve-{time.monotonic_ns()}.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [
                *(XSTORE if dev else XSTORE_PLAIN),
                "serve",
                "http",
                "--store",
                str(root),
                "--listen",
                "127.0.0.1:0",
                *map(os.fsdecode, args),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    server = Server("", proc, log_file)
    try:
        line = server.wait_for_log(r"^listening on http://", START_TIMEOUT)
        server.url = line.split()[-1]
        yield server
    finally:
        status, text = server.stop()
        if check_stop:
            assert status == 0, text
            assert "Traceback" not in text, text
            assert text.splitlines()[-1].startswith("stopped"), text


# -- raw HTTP ------------------------------------------------------------------------------------------


def raw_request(server: Server, request: bytes, *, timeout: float = 30.0) -> bytes:
    """Send `request` as is on a new connection and return everything the server sends until it closes
    the connection (ask with `Connection: close`)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(1 << 16):
            chunks.append(data)
    return b"".join(chunks)


def get_status(server: Server, target: bytes, method: bytes = b"GET") -> int:
    """The status the server answers `METHOD TARGET` with, the target sent exactly as given."""
    response = raw_request(
        server, method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    return int(response.split(b" ", 2)[1])
