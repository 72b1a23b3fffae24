"""What both benchmarks (`bench.run`, `bench.fuse`) share: progress, inputs, hashing, cleanup."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import random
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

MIB: Final = 1 << 20


def nix_environment(base: Path) -> dict[str, str]:
    """Environment variables that keep every Nix command of a benchmark under `base`: state, logs,
    configuration (no substituters, no sandbox), cache, home and the default store, so nothing touches
    the host's /nix. The store directory stays /nix/store: store path hashes depend on it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NIX_")}
    places = {
        "NIX_STATE_DIR": "state",
        "NIX_LOG_DIR": "log",
        "NIX_CONF_DIR": "conf",
        "XDG_CACHE_HOME": "cache",
        "XDG_CONFIG_HOME": "conf",
        "HOME": "home",
        "NIX_REMOTE": "default-store",
    }
    for variable, name in places.items():
        (base / name).mkdir(parents=True, exist_ok=True)
        env[variable] = str(base / name)
    (base / "conf" / "nix.conf").write_text("sandbox = false\nsubstituters =\n")
    env["LC_ALL"] = "C"
    return env


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the report."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def make_big_file(path: Path, mib: int, rng: random.Random) -> None:
    """`mib` MiB of pseudo-random bytes: 16 distinct random 1 MiB blocks, cycled (fast to write, and
    nothing on the way compresses or deduplicates)."""
    blocks = [rng.randbytes(MIB) for _ in range(16)]
    with path.open("wb") as f:
        for i in range(mib):
            f.write(blocks[i % len(blocks)])


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path`, from the longest matching mount point; for ext4, whether
    it has a journal (without one, creating files is slow for a minute after many were deleted)."""
    best, fstype, device = "", "unknown", ""
    resolved = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mount = fields[1].replace("\\040", " ")
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, fstype, device = mount, fields[2], fields[0]
    if fstype == "ext4":
        with contextlib.suppress(OSError):
            journal = Path("/sys/fs/ext4", os.path.basename(device), "journal_task").read_text().strip()
            fstype += " without a journal" if journal == "<none>" else " with a journal"
    return fstype


def remove(path: Path) -> None:
    """Remove a file or tree, also one Nix made read-only (store paths are 0555/0444)."""

    def writable_and_retry(function: Callable[[str], object], name: str, _exc: object) -> None:
        os.chmod(os.path.dirname(name), 0o700)  # unlink and rmdir need a writable parent
        function(name)

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=writable_and_retry)  # `onexc` is Python 3.12+
    elif path.exists() or path.is_symlink():
        path.unlink()


class Trash:
    """Where a run's output goes once measured: moved out of the way now, removed with the working
    directory at the end, except its large files, removed now.

    Removing a tree of many files between runs would slow the next runs down: after many files are
    deleted, ext4 without a journal skips the freed inodes for a minute or more (`recently_deleted`),
    and each file created meanwhile pays for the scan (3-10x slower creation of 5,000 files here). It
    does not hit both tools alike: it hits whichever creates its files where the inodes were freed, so
    one tool's figures could depend on where the other's output had been. Keeping large files would slow
    the runs down too: their page cache stays, and the next 300 MiB written needs fresh memory, which
    the kernel (and, in a virtual machine, the host) must supply (restoring 300 MiB took 0.8 s instead
    of 0.15 s, for both tools alike). Removing only the files of 1 MiB or more frees that memory at the
    cost of a few inodes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._count = 0

    def discard(self, path: Path) -> None:
        if not (path.exists() or path.is_symlink()):
            return
        self.directory.mkdir(exist_ok=True)
        self._count += 1
        moved = self.directory / f"{self._count}-{path.name}"
        path.rename(moved)
        files = [moved] if not moved.is_dir() else [Path(d, f) for d, _, fs in os.walk(moved) for f in fs]
        for file in files:
            if not file.is_symlink() and file.stat().st_size >= MIB:
                os.chmod(file.parent, 0o700)  # Nix's store paths are read-only
                file.unlink()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real cache server has it
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_http_server(root: Path) -> Iterator[str]:
    """A static file server over `root` on 127.0.0.1 (GET and HEAD, keep-alive), in a thread of this
    process while the block runs; yields its base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bench-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
