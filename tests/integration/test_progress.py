"""The progress line, as a person at a terminal sees it: xstore runs in a pseudo-terminal that takes both
stdout and stderr, as an interactive shell gives them.

- Output lines never run into the progress line (it is cleared first).
- With `-i FILE` the size is known: totals and a percentage are shown.
- During a long step with nothing to report (here: input that arrives slowly) the line keeps moving.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.localstores import export_bytes
from xstore.store import LocalStore
from xstore.storepath import StorePath

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminal behaviour checked on Linux")

_ESCAPE = re.compile(rb"\x1b\[K")


def run_in_terminal(argv: list[str], *, feed: tuple[Path, list[tuple[float, bytes]]] | None = None) -> bytes:
    """Run xstore with stdout and stderr on one pseudo-terminal; return everything it showed. With
    `feed`, write the (delay, bytes) pieces into a FIFO at that path while it runs."""
    main, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", "-bb", "-W", "error", "-m", "xstore", *argv],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    writer = None
    if feed is not None:
        fifo, pieces = feed

        def write() -> None:
            with open(fifo, "wb") as f:
                for delay, data in pieces:
                    time.sleep(delay)
                    f.write(data)
                    f.flush()

        writer = threading.Thread(target=write)
        writer.start()
    shown = b""
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not data:
            break
        shown += data
    os.close(main)
    assert proc.wait(timeout=60) == 0, shown
    if writer is not None:
        writer.join()
    return shown


def visible_lines(shown: bytes) -> list[bytes]:
    """What remains on each terminal line once carriage returns and line clears have done their work."""
    return [_ESCAPE.sub(b"", line.split(b"\r")[-1]) for line in shown.replace(b"\r\n", b"\n").split(b"\n")]


def test_import_progress_in_a_terminal(store: LocalStore, filled: list[StorePath], tmp_path: Path) -> None:
    stream = tmp_path / "closure.export"
    stream.write_bytes(export_bytes(store, filled))
    shown = run_in_terminal(["import", "--store", str(tmp_path / "root"), "-i", str(stream)])
    # A percentage of the known total was drawn.
    assert re.search(rb"importing: .*MiB of .*MiB \(\d+%\)", shown), shown
    lines = visible_lines(shown)
    # Every path printed stands alone on its line: the progress line was cleared before it.
    printed = [line for line in lines if b"/nix/store/" in line]
    assert sorted(printed) == sorted(p.path.encode() for p in filled), lines
    # Nothing is left of the progress line at the end.
    assert lines[-1] == b""


def test_progress_keeps_moving_while_waiting(
    store: LocalStore, filled: list[StorePath], tmp_path: Path
) -> None:
    data = export_bytes(store, filled)
    fifo = tmp_path / "slow.export"
    os.mkfifo(fifo)
    half = len(data) // 2
    shown = run_in_terminal(
        ["import", "--store", str(tmp_path / "root"), "-i", str(fifo)],
        feed=(fifo, [(0.0, data[:half]), (2.2, data[half:])]),
    )
    drawn = re.findall(rb"([|/\\-]) importing: [^\r\n]*?(\d+)s", shown)
    assert len(drawn) >= 4, shown  # redrawn several times while nothing arrived
    assert len({seconds for _, seconds in drawn}) >= 2  # the elapsed time moved on
    assert len({spin for spin, _ in drawn}) >= 2  # and so did the spinner
