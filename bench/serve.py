"""`nix copy --from` against `xstore serve http`, side by side with the same closure served as a Nix-written
binary cache by a static file server.

Nix makes a chroot store ROOT holding a closure of 501 small paths (500 `builtins.toFile` texts and a
root naming them all) and a path of one 300 MiB file (`nix-store --add`), and writes them to binary caches
itself (`nix copy --to file://CACHE?compression=C&secret-key=SK`, C = none and zstd). Per case, Nix 2.8
copies the closure into an empty store (made before every run, outside the timing, with a fresh narinfo
disk cache) twice, alternating:

- from `xstore serve http --store ROOT --compression C --secret-key SK` (a subprocess started once per
  case, serving Nix's store directly: narinfos from its database, NARs dumped live);
- from Python's `http.server` (HTTP/1.1 keep-alive, in this process's thread) over CACHE.

Reported: the median wall time of each `nix copy`, the ratio, and the server's peak RSS (VmHWM from
/proc, over the whole case). After the warm-up, Nix's export of what it copied from xstore's server is
checked against the original. Targets (reported, never asserted): at most 1.5x for every case.

Usage: .venv/bin/python -m bench.serve [--runs N] [--quick] [--only CASE ...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.common import Trash, log, make_big_file, nix_environment, remove, sha256_file, static_http_server
from bench.run import NIX_STORE_OPTIONS, SMALL_CLOSURE_NIX, Command, Runner, Sample

SEED: Final = 20241201
CASES: Final = ("small-none", "small-zstd", "big-none", "big-zstd")
TARGET: Final = 1.5


@dataclass
class Case:
    name: str
    title: str
    compression: str
    label: str  # "small" or "big"
    xstore_samples: list[Sample] = field(default_factory=list)
    static_samples: list[Sample] = field(default_factory=list)
    server_peak_kib: int = 0


class Bench:
    def __init__(self, workdir: Path, xstore: str, big_mib: int, small_paths: int) -> None:
        self.workdir = workdir
        self.xstore = xstore
        self.big_mib = big_mib
        self.small_paths = small_paths
        self.runner = Runner(workdir)
        self.trash = Trash(workdir / "trash")
        self.env = nix_environment(workdir / "nix")
        self.nix = _which("nix")
        self.nix_store = _which("nix-store")
        self.root = workdir / "root"
        self.sk = workdir / "sk"
        self.pk = ""
        self.paths: dict[str, str] = {}
        self.closures: dict[str, list[str]] = {}

    def nix_cmd(self, *args: str, stdout: Path | None = None, stdin: Path | None = None) -> Command:
        return Command(
            [self.nix, "--extra-experimental-features", "nix-command", *args], self.env, stdin, stdout
        )

    def capture(self, command: Command) -> str:
        out = self.workdir / "captured"
        self.runner.run(Command(command.argv, command.env, command.stdin, out))
        text = out.read_text()
        out.unlink()
        return text

    def prepare(self) -> None:
        log("making the store (Nix) ...")
        instantiate = str(Path(self.nix_store).parent / "nix-instantiate")
        expression = SMALL_CLOSURE_NIX.replace("@N@", str(self.small_paths))
        argv = [instantiate, "--store", str(self.root), *NIX_STORE_OPTIONS, "--read-write-mode", "--eval",
                "--json", "-E", expression]  # fmt: skip
        self.paths["small"] = json.loads(self.capture(Command(argv, self.env)))
        big_dir = self.workdir / "big"
        big_dir.mkdir()
        make_big_file(big_dir / "big.bin", self.big_mib, random.Random(SEED))
        argv = [self.nix_store, "--store", str(self.root), *NIX_STORE_OPTIONS, "--add", str(big_dir)]
        self.paths["big"] = self.capture(Command(argv, self.env)).strip()
        remove(big_dir)
        for label, path in self.paths.items():
            argv = [self.nix_store, "--store", str(self.root), *NIX_STORE_OPTIONS, "-qR", path]
            self.closures[label] = self.capture(Command(argv, self.env)).split()
        self.runner.run(self.nix_cmd("key", "generate-secret", "--key-name", "bench-1", stdout=self.sk))
        self.pk = self.capture(self.nix_cmd("key", "convert-secret-to-public", stdin=self.sk)).strip()
        for compression in ("none", "zstd"):
            cache = self.workdir / f"cache-{compression}"
            url = f"file://{cache}?compression={compression}&secret-key={self.sk}"
            log(f"writing the {compression} cache (nix copy --to file://) ...")
            self.runner.run(
                self.nix_cmd(
                    "copy", "--store", str(self.root), *NIX_STORE_OPTIONS, "--to", url, *self.paths.values()
                )
            )
        os.sync()

    def copy_command(self, url: str, dest: Path, label: str) -> Command:
        return self.nix_cmd(
            "copy", "--store", str(dest), *NIX_STORE_OPTIONS, "--option", "trusted-public-keys", self.pk,
            "--from", url, self.paths[label],
        )  # fmt: skip

    def reset(self, dest: Path) -> None:
        self.trash.discard(dest)  # not removed now: see `Trash`
        disk_cache = Path(self.env["XDG_CACHE_HOME"]) / "nix"
        if disk_cache.exists():
            remove(disk_cache)
        self.runner.run(
            Command([self.nix_store, "--store", str(dest), *NIX_STORE_OPTIONS, "--init"], self.env)
        )
        os.sync()

    def measure(self, case: Case, runs: int) -> None:
        cache = self.workdir / f"cache-{case.compression}"
        dest = self.workdir / "dest"
        with xstore_server(self.xstore, self.root, self.sk, case.compression, self.workdir) as (url, pid), \
                static_http_server(cache) as static_url:  # fmt: skip
            x_cmd = self.copy_command(url, dest, case.label)
            s_cmd = self.copy_command(static_url, dest, case.label)
            log(f"{case.name}: warm-up")
            for command in (x_cmd, s_cmd):
                self.reset(dest)
                self.runner.run(command)
            self.reset(dest)
            self.runner.run(x_cmd)
            self.check(dest, case.label)
            for i in range(runs):
                log(f"{case.name}: run {i + 1}/{runs}")
                self.reset(dest)
                case.xstore_samples.append(self.runner.run(x_cmd))
                self.reset(dest)
                case.static_samples.append(self.runner.run(s_cmd))
            case.server_peak_kib = _status(pid, "VmHWM")
        self.trash.discard(dest)

    def check(self, dest: Path, label: str) -> None:
        closure = self.closures[label]
        mine, theirs = self.workdir / "mine.export", self.workdir / "theirs.export"
        try:
            for store, out in ((dest, mine), (self.root, theirs)):
                argv = [self.nix_store, "--store", str(store), *NIX_STORE_OPTIONS, "--export", *closure]
                self.runner.run(Command(argv, self.env, None, out))
            if sha256_file(mine) != sha256_file(theirs):
                raise RuntimeError("the closure copied from xstore's server does not export as the original")
        finally:
            mine.unlink(missing_ok=True)
            theirs.unlink(missing_ok=True)


@contextlib.contextmanager
def xstore_server(
    xstore: str, root: Path, sk: Path, compression: str, workdir: Path
) -> Iterator[tuple[str, int]]:
    """`xstore serve http` on a free port of 127.0.0.1 while the block runs; yields (URL, pid)."""
    log_file = workdir / f"serve-{compression}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "XSTORE_DEBUG")}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    with open(log_file, "wb") as f:
        proc = subprocess.Popen(
            [xstore, "serve", "http", "--store", str(root), "--listen", "127.0.0.1:0",
             "--secret-key", str(sk), "--compression", compression],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            lines = log_file.read_text().splitlines()
            if lines and lines[0].startswith("listening on "):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"xstore serve http did not start: {log_file.read_text()}")
            time.sleep(0.05)
        yield lines[0].split()[-1], proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _status(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _which(name: str) -> str:
    import shutil

    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found on PATH (Debian: apt-get install nix-bin)")
    return found


def markdown(cases: list[Case], runs: int, load: tuple[float, float]) -> str:
    lines = [
        f"Median of {runs} runs after one warm-up; 1-minute load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after.",
        "",
        "| case | from `xstore serve http` | from a static server over Nix's cache | ratio | target "
        "| CPU ratio (client) | server peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        x = statistics.median(s.wall_s for s in case.xstore_samples)
        s = statistics.median(s.wall_s for s in case.static_samples)
        xc = statistics.median(s.cpu_s for s in case.xstore_samples)
        sc = statistics.median(s.cpu_s for s in case.static_samples)
        verdict = "met" if x / s <= TARGET else "missed"
        lines.append(
            f"| {case.title} | {x * 1000:.0f} ms | {s * 1000:.0f} ms | {x / s:.2f}x | "
            f"<= {TARGET:g}x ({verdict}) | {xc / sc:.2f}x | {case.server_peak_kib / 1024:.1f} MiB |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a 30 MiB file and 51 small paths")
    parser.add_argument("--only", action="append", choices=CASES, metavar="CASE", help=", ".join(CASES))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmpdir")
    parser.add_argument("--xstore", default=str(Path(sys.executable).parent / "xstore"))
    args = parser.parse_args(argv)
    big_mib, small = (30, 50) if args.quick else (300, 500)
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="xstore-bench-serve-", dir=args.tmpdir))
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        bench = Bench(workdir, args.xstore, big_mib, small)
        bench.prepare()
        cases = []
        for name in args.only or CASES:
            label, compression = name.split("-")
            what = (
                f"{len(bench.closures['small'])} small paths"
                if label == "small"
                else f"one {big_mib} MiB file"
            )
            case = Case(name, f"`nix copy --from` {what}, {compression}", compression, label)
            bench.measure(case, args.runs)
            cases.append(case)
    finally:
        with contextlib.suppress(OSError):
            remove(workdir)
        signal.signal(signal.SIGTERM, previous)
    load = (load_before, os.getloadavg()[0])
    if args.json:
        print(json.dumps([
            {"case": c.name, "xstore_wall_s": [s.wall_s for s in c.xstore_samples],
             "static_wall_s": [s.wall_s for s in c.static_samples], "server_peak_kib": c.server_peak_kib}
            for c in cases
        ], indent=2))  # fmt: skip
    else:
        print(markdown(cases, args.runs, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
