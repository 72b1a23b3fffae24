"""Side-by-side benchmark of the protocol routes: xstore against `nix copy` on the same route.

Routes (each with one 300 MiB path and with a closure of 501 small paths), xstore against Nix:

- `ssh-to`, `ssh-from`: `xstore copy --to/--from ssh://localhost` against `nix copy` on the same URL, with
  `nix-store --serve` at the far end;
- `serve-to`, `serve-from`: `nix copy --to/--from ssh://localhost` with `remote-program=xstore serve ssh`
  against the same with `nix-store` at the far end;
- `daemon-to`: `xstore copy --to unix://SOCKET` of a `nix-daemon` against `nix copy --to` the same;
- `daemon-from`: `xstore copy --from ssh-ng://localhost` (`nix-daemon --stdio`) against `nix copy`.

`localhost` makes Nix and xstore run the far end themselves (`bash -c`), so no ssh is involved: the
routes measure the protocols and the stores at both ends. The far end is started as `setsid -f PROGRAM`,
so it is not a descendant of the measured command and its memory is not counted with it (a process's
`ru_maxrss` includes its waited-for descendants); for the `serve-*` routes, where xstore is the far
end, the far end itself runs under GNU time and its peak is the one reported. Destinations are made
empty before every run, outside the timing (`xstore store init --case-hack off`, `nix-store --init`, a
fresh `nix-daemon`). Each case runs once to warm up (and its result is checked: the destination's
`nix-store --export` of the closure equals the source's, and `nix-store --verify --check-contents`
passes), then `--runs` times alternating xstore and Nix. Targets (reported, not asserted): at most 1.5x
Nix's time, peak RSS at most 64 MiB.

Usage: .venv/bin/python -m bench.remote [--runs N] [--quick] [--only ROUTE] [--json] [--tmpdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

from bench.common import Trash, log, make_big_file, nix_environment, remove

SEED: Final = 20240611
GNU_TIME: Final = "/usr/bin/time"
ROUTES: Final = ("ssh-to", "ssh-from", "serve-to", "serve-from", "daemon-to", "daemon-from")
NIX_OPTIONS: Final = ("--option", "build-users-group", "", "--option", "substituters", "")
RSS_TARGET_KIB: Final = 64 * 1024


def nix_copy_from(dst: Path, url: str, path: str) -> list[str]:
    """`nix copy --from URL PATH` into the store at `dst`. The far ends here sign nothing, so signatures
    are not checked (xstore's copy from them checks none either)."""
    return ["nix", "copy", "--no-check-sigs", "--store", str(dst), *NIX_OPTIONS, "--from", url, path]


def nix_env(base: Path) -> dict[str, str]:
    """`bench.common.nix_environment`, with `nix copy` enabled and no build users (the benchmark runs as
    root), and xstore's bytecode cached under `base` (xstore runs in it too, as the far end's program)."""
    env = nix_environment(base)
    with open(base / "conf" / "nix.conf", "a") as f:
        f.write("build-users-group =\nexperimental-features = nix-command\n")
    env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@dataclass
class Inputs:
    src: Path  # a Nix-made store holding both inputs
    big: str  # the 300 MiB path
    small: str  # the top of the 501-path closure
    small_closure: list[str]


@dataclass
class Sample:
    seconds: float
    rss_kib: int | None  # the measured side's peak (see the module docstring)


@dataclass
class Case:
    route: str
    size: str
    xstore: list[Sample] = field(default_factory=list)
    nix: list[Sample] = field(default_factory=list)


class Bench:
    def __init__(self, work: Path, xstore: str) -> None:
        self.work = work
        self.xstore = xstore
        self.env = nix_env(work / "nix-env")
        self.counter = 0
        self.trash = Trash(work / "trash")
        self.daemons: list[subprocess.Popen[bytes]] = []

    # -- running -------------------------------------------------------------------------------------

    def run(self, argv: list[str], *, measure: bool = True, check: bool = True) -> Sample:
        """Run `argv`; its wall time and (through GNU time) its peak RSS."""
        rss_file = self.fresh("rss")
        timed = (
            [GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv]
            if measure and os.path.exists(GNU_TIME)
            else argv
        )
        started = time.monotonic()
        result = subprocess.run(timed, env=self.env, capture_output=True, timeout=1800, check=False)
        seconds = time.monotonic() - started
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(argv)} failed:\n{result.stderr.decode(errors='replace')[-3000:]}"
            )
        rss = int(rss_file.read_text().split()[-1]) if measure and rss_file.exists() else None
        return Sample(seconds, rss)

    def nix(self, *args: str) -> bytes:
        result = subprocess.run(["nix", *args], env=self.env, capture_output=True, timeout=1800, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"nix {shlex.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def nix_store(self, *args: str) -> bytes:
        result = subprocess.run(
            ["nix-store", *args], env=self.env, capture_output=True, timeout=1800, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"nix-store {shlex.join(args)} failed: {result.stderr.decode(errors='replace')}"
            )
        return result.stdout

    def fresh(self, name: str) -> Path:
        self.counter += 1
        return self.work / f"{name}-{self.counter}"

    # -- inputs --------------------------------------------------------------------------------------

    def make_inputs(self, big_mib: int, small_count: int) -> Inputs:
        rng = random.Random(SEED)
        src = self.work / "src"
        data = self.work / "data"
        (data / "big").mkdir(parents=True)
        make_big_file(data / "big" / "blob", big_mib, rng)
        big = self.nix_store("--store", str(src), *NIX_OPTIONS, "--add", str(data / "big")).decode().strip()
        small_dir = data / "small"
        small_dir.mkdir()
        files = []
        for i in range(small_count - 1):
            f = small_dir / f"s{i:04d}"
            f.write_bytes(rng.randbytes(rng.randint(0, 4096)))
            files.append(str(f))
        leaves = self.nix_store("--store", str(src), *NIX_OPTIONS, "--add", *files).decode().split()
        paths = f"builtins.fromJSON ''{json.dumps(leaves)}''"
        expression = (
            f'builtins.toFile "all" (builtins.concatStringsSep "\\n" (map builtins.storePath ({paths})))'
        )
        top = json.loads(
            subprocess.run(
                [
                    "nix-instantiate",
                    "--store",
                    str(src),
                    *NIX_OPTIONS,
                    "--read-write-mode",
                    "--eval",
                    "--json",
                    "-E",
                    expression,
                ],
                env=self.env,
                capture_output=True,
                timeout=600,
                check=True,
            ).stdout
        )
        closure = self.nix_store("--store", str(src), *NIX_OPTIONS, "-qR", top).decode().split()
        assert len(closure) == small_count, len(closure)
        return Inputs(src, big, top, closure)

    # -- far ends ------------------------------------------------------------------------------------

    def xstore_program(self) -> str:
        return f"{self.xstore} serve ssh"

    def timed_far_end(self, program: str) -> tuple[str, Path]:
        """`program` run under GNU time, detached; the file its peak RSS goes to."""
        rss = self.fresh("far-rss")
        wrapper = self.fresh("far.sh")
        wrapper.write_text(f'#!/bin/sh\nexec {GNU_TIME} -f %M -o {rss} {program} "$@"\n')
        wrapper.chmod(0o755)
        return f"setsid -f {wrapper}", rss

    @contextlib.contextmanager
    def daemon(self) -> Iterator[str]:
        """A fresh `nix-daemon` on an empty chroot store; yields its socket."""
        root = self.fresh("daemon-root")
        root.mkdir()
        socket = self.fresh("d").with_suffix(".sock")
        env = dict(self.env, NIX_DAEMON_SOCKET_PATH=str(socket))
        proc = subprocess.Popen(
            ["nix-daemon", "--store", str(root)], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.daemons.append(proc)
        try:
            deadline = time.monotonic() + 60
            while not socket.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nix-daemon did not start")
                time.sleep(0.02)
            yield str(socket)
        finally:
            proc.terminate()
            proc.wait(60)
            self.daemons.remove(proc)
            self.last_daemon_root = root

    # -- one run of a route ---------------------------------------------------------------------------

    def empty_store(self, tool: str) -> Path:
        root = self.fresh(f"dst-{tool}")
        if tool == "xstore":
            self.run(
                [self.xstore, "store", "init", "--store", str(root), "--case-hack", "off"], measure=False
            )
        else:
            self.nix_store("--store", str(root), *NIX_OPTIONS, "--init")
        return root

    def once(self, route: str, tool: str, inputs: Inputs, path: str, verify: bool) -> Sample:
        src = str(inputs.src)
        x = self.xstore
        if route == "ssh-to":
            dst = self.empty_store("nix")
            url = f"ssh://localhost?remote-store={dst}&remote-program=setsid -f nix-store"
            argv = (
                [x, "copy", "--from", src, "--to", url, "-r", path]
                if tool == "xstore"
                else ["nix", "copy", "--store", src, *NIX_OPTIONS, "--to", url, path]
            )
            sample = self.run(argv)
        elif route == "ssh-from":
            dst = self.empty_store(tool)
            url = f"ssh://localhost?remote-store={src}&remote-program=setsid -f nix-store"
            argv = (
                [x, "copy", "--from", url, "--to", str(dst), "-r", path]
                if tool == "xstore"
                else nix_copy_from(dst, url, path)
            )
            sample = self.run(argv)
        elif route in ("serve-to", "serve-from"):
            program, far_rss = self.timed_far_end(self.xstore_program() if tool == "xstore" else "nix-store")
            if route == "serve-to":
                dst = self.empty_store(tool)
                url = f"ssh://localhost?remote-store={dst}&remote-program={program}"
                argv = ["nix", "copy", "--store", src, *NIX_OPTIONS, "--to", url, path]
            else:
                dst = self.empty_store("nix")
                url = f"ssh://localhost?remote-store={src}&remote-program={program}"
                argv = nix_copy_from(dst, url, path)
            sample = self.run(argv)
            deadline = time.monotonic() + 60
            while not (far_rss.exists() and far_rss.read_text().strip()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the far end did not report its memory")
                time.sleep(0.02)
            sample.rss_kib = int(far_rss.read_text().split()[-1])
        elif route == "daemon-to":
            with self.daemon() as socket:
                url = f"unix://{socket}"
                argv = (
                    [x, "copy", "--no-check-sigs", "--from", src, "--to", url, "-r", path]
                    if tool == "xstore"
                    else ["nix", "copy", "--no-check-sigs", "--store", src, *NIX_OPTIONS, "--to", url, path]
                )
                sample = self.run(argv)
            dst = self.last_daemon_root
        elif route == "daemon-from":
            dst = self.empty_store(tool)
            url = f"ssh-ng://localhost?remote-store={src}&remote-program=setsid -f nix-daemon"
            argv = (
                [x, "copy", "--from", url, "--to", str(dst), "-r", path]
                if tool == "xstore"
                else nix_copy_from(dst, url, path)
            )
            sample = self.run(argv)
        else:
            raise ValueError(route)
        if verify:
            self.check(inputs, dst, path)
        self.trash.discard(dst)  # not removed now: see `Trash`
        return sample

    def check(self, inputs: Inputs, dst: Path, path: str) -> None:
        closure = inputs.small_closure if path == inputs.small else [inputs.big]
        want = self.nix_store("--store", str(inputs.src), *NIX_OPTIONS, "--export", *closure)
        got = self.nix_store("--store", str(dst), *NIX_OPTIONS, "--export", *closure)
        if want != got:
            raise RuntimeError(f"the export of {path} from {dst} differs from the source's")
        self.nix_store("--store", str(dst), *NIX_OPTIONS, "--verify", "--check-contents")

    def case(self, route: str, size: str, inputs: Inputs, runs: int) -> Case:
        path = inputs.big if size == "big" else inputs.small
        result = Case(route, size)
        log(f"{route} {size}: warm-up and check")
        for tool in ("xstore", "nix"):
            self.once(route, tool, inputs, path, verify=True)
        for i in range(runs):
            log(f"{route} {size}: run {i + 1}/{runs}")
            result.xstore.append(self.once(route, "xstore", inputs, path, verify=False))
            result.nix.append(self.once(route, "nix", inputs, path, verify=False))
        return result

    def stop(self) -> None:
        for proc in list(self.daemons):
            proc.kill()


def median(samples: list[Sample]) -> float:
    return statistics.median(s.seconds for s in samples)


def peak(samples: list[Sample]) -> int | None:
    values = [s.rss_kib for s in samples if s.rss_kib is not None]
    return max(values) if values else None


def mib(kib: int | None) -> str:
    return f"{kib / 1024:.1f} MiB" if kib is not None else "n/a"


DESCRIPTIONS: Final = {
    "ssh-to": "`copy --to ssh://` (far end nix-store --serve)",
    "ssh-from": "`copy --from ssh://` (far end nix-store --serve)",
    "serve-to": "`nix copy --to ssh://`, far end `xstore serve ssh` vs `nix-store --serve`",
    "serve-from": "`nix copy --from ssh://`, far end `xstore serve ssh` vs `nix-store --serve`",
    "daemon-to": "`copy --to unix://` (nix-daemon)",
    "daemon-from": "`copy --from ssh-ng://` (nix-daemon --stdio)",
}


def table(cases: list[Case], big_mib: int, small_count: int) -> str:
    lines = [
        "| route | input | xstore | Nix | xstore/Nix | target | xstore peak RSS | Nix peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        x, n = median(c.xstore), median(c.nix)
        ratio = x / n
        met = "met" if ratio <= 1.5 else "missed"
        rss = peak(c.xstore)
        rss_note = "" if rss is None or rss <= RSS_TARGET_KIB else " (over 64 MiB)"
        size = f"one {big_mib} MiB path" if c.size == "big" else f"{small_count} small paths"
        lines.append(
            f"| {DESCRIPTIONS[c.route]} | {size} | {x * 1000:.0f} ms | {n * 1000:.0f} ms | {ratio:.2f}x | "
            f"<= 1.5x ({met}) | {mib(rss)}{rss_note} | {mib(peak(c.nix))} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a 30 MiB path and 51 small paths")
    parser.add_argument("--only", action="append", choices=ROUTES)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmpdir")
    parser.add_argument("--xstore", default=str(Path(sys.executable).with_name("xstore")))
    args = parser.parse_args(argv)
    big_mib, small_count = (30, 51) if args.quick else (300, 501)
    work = Path(tempfile.mkdtemp(prefix="xstore-bench-remote-", dir=args.tmpdir))
    bench = Bench(work, args.xstore)

    def terminate(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        log(f"working in {work}; making inputs")
        inputs = bench.make_inputs(big_mib, small_count)
        load_before = os.getloadavg()[0]
        cases = [
            bench.case(route, size, inputs, args.runs)
            for route in (args.only or ROUTES)
            for size in ("big", "small")
        ]
        load_after = os.getloadavg()[0]
    finally:
        bench.stop()
        remove(work)
    if args.json:
        out = [
            {
                "route": c.route,
                "size": c.size,
                "xstore": [s.__dict__ for s in c.xstore],
                "nix": [s.__dict__ for s in c.nix],
            }
            for c in cases
        ]
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
        return 0
    nix_version = (
        subprocess.run(["nix-store", "--version"], capture_output=True, check=False).stdout.decode().strip()
    )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}"
    sys.stdout.write(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {machine}; {nix_version}; "
        f"Python {platform.python_version()}; median of {args.runs} runs after a checked warm-up; "
        f"load {load_before:.2f} before, {load_after:.2f} after.\n\n"
    )
    sys.stdout.write(table(cases, big_mib, small_count) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
