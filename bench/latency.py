"""Run a command with latency added to its stdin and stdout: a stand-in for a network link.

Each byte reaches the other side `LATENCY` seconds (default 0.001) after it was sent; bandwidth is not
limited and nothing is reordered. Put it in front of a far end with `remote-program`, for example a
wrapper script holding `exec python -m bench.latency nix-store "$@"`, then `xstore copy --to
'ssh://localhost?remote-store=DIR&remote-program=WRAPPER' ...` (`localhost` runs the command itself).
The README's figures for copies over ssh with latency were made this way.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _line(source: int, target: int, close: Callable[[], None], delay: float) -> None:
    """Copy `source` to `target`, each piece `delay` seconds after it was read; `close()` at the end."""
    pieces: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def read() -> None:
        while True:
            data = os.read(source, 1 << 20)
            pieces.put((time.monotonic() + delay, data))
            if not data:
                return

    threading.Thread(target=read, daemon=True).start()
    while True:
        due, data = pieces.get()
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if not data:
            close()
            return
        try:
            _write_all(target, data)
        except BrokenPipeError:
            return


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bench.latency COMMAND [ARGS...]  (LATENCY=seconds, default 0.001)")
        return 2
    delay = float(os.environ.get("LATENCY", "0.001"))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None
    assert proc.stdout is not None
    to_child = threading.Thread(
        target=_line, args=(0, proc.stdin.fileno(), proc.stdin.close, delay), daemon=True
    )
    from_child = threading.Thread(target=_line, args=(proc.stdout.fileno(), 1, lambda: os.close(1), delay))
    to_child.start()
    from_child.start()
    from_child.join()
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
