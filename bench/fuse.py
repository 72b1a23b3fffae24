"""Benchmark of xstore's FUSE filesystems against the plain directory they show: the issue's three FUSE
targets side by side in one run, and the reads and the mount time the earlier benchmark measured.

Inputs, in one temporary working directory: a copy of /usr/include (`--source`), dumped to a NAR and
restored (`xstore nar restore --case-hack off`); one file of `--file-mib` MiB (300 by default, seeded
pseudo-random bytes), likewise as a NAR and restored; and the export stream of /usr/include added to a
store (`nix-store --store ROOT --add`, then `--export`: one store path, the "headers closure"; without
Nix, `xstore` itself builds the store through its library).

The targets (the issue's figures are ratios of wall time, view / plain; reported, never asserted):

- `grep`: `grep -r -F PATTERN` over the tree, with a pattern no header holds (so every byte is read):
  on the restored tree, through `xstore mount nar` of its NAR, and through `xstore mount casefold` over the
  restored tree. Each timed run mounts afresh (untimed) and greps twice: "first" (every name, attribute
  and block goes through the filesystem's process) and "again" (what the kernel kept of the first).
  Target: first grep <= 3x the plain tree's, both views.
- `import`: `xstore import -i HEADERS.export` into a new store on a fresh casefold mount over an empty
  directory, against the same import into a new store in a plain directory of the same filesystem. Both
  stores are made before the timing with `xstore store init --case-hack on --case-fold apfs`, so both
  do the same work (the headers hold names that fold together, which the hack renames). Target: <= 5x.
- `cold-read`: the large file read start to end with 1 MiB `read` calls, with nothing of it in the page
  cache: directly, through the NAR view, through the casefold layer. Every view is mounted afresh
  (untimed; mounting the NAR view reads the whole archive to index it), then the page cache is dropped
  (`sync; echo 1 > /proc/sys/vm/drop_caches`, the page-cache-only form of `echo 3`, when this runs as
  root; otherwise `posix_fadvise(POSIX_FADV_DONTNEED)` on the backing files, which evicts their clean
  pages without privileges), and `fincore` (util-linux), when present, confirms how much of the backing
  file is still resident just before the read. Target: <= 2x the direct cold read, both views.

Further cases, for context: `warm-read` (the large file with the backing file in the page cache: the
views' own cost per block; first read on a fresh mount, then again), `many-files` (every file of the tree
opened and read from Python) and `mount` (`xstore mount nar` of the tree's NAR until the command returns,
target < 2 s, with its parts measured in-process).

Memory: the peak RSS (VmHWM) of every filesystem process just before its unmount, and of every `xstore
import` (GNU time's %M, which does not inherit this Python's peak), largest per kind; target 64 MiB.
CPU: the filesystem process's user + system time per first grep, which other load on the machine
disturbs less than wall time.

Runs alternate the views (each first, middle and last in turn) so drift on the machine hits all alike;
figures are medians of `--runs` runs after one untimed warm-up run, which also checks that every view
gives the same results (grep output, file hashes, the imported store's export equal to the stream).
Every mount is removed in a `finally` (`xstore umount`, then `fusermount3 -u -z`), also on Ctrl-C and
SIGTERM, and the filesystem's process is waited for; the working directory is removed after.

Usage: .venv/bin/python -m bench.fuse [--runs N] [--quick] [--only CASE ...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

from bench.common import MIB, filesystem_of, log, make_big_file, nix_environment, remove, sha256_file

SEED: Final = 20240601
READ_SIZE: Final = MIB
FULL_BIG_MIB: Final = 300
QUICK_BIG_MIB: Final = 30
FULL_SOURCE: Final = "/usr/include"
QUICK_SOURCE: Final = "/usr/include/linux"
GREP_PATTERN: Final = "xstore-bench: a line that no header holds"
GNU_TIME: Final = "/usr/bin/time"
DROP_CACHES: Final = "/proc/sys/vm/drop_caches"
UNMOUNT_WAIT_S: Final = 10.0

GREP_TARGET: Final = 3.0  # view / plain, wall time of the first grep
IMPORT_TARGET: Final = 5.0  # casefold / plain
COLD_TARGET: Final = 2.0  # view / direct, first read with a cold page cache
WARM_TARGET: Final = 2.0  # the earlier benchmark's ">= 0.5x of the direct throughput", as a time ratio
MOUNT_TARGET_S: Final = 2.0
MOUNT_TARGET_MIN_BYTES: Final = 100 * 1000 * 1000  # the mount target is about a 100+ MB NAR
RSS_TARGET_KIB: Final = 64 * 1024

VIEWS: Final = ("direct", "nar", "casefold")
CASES: Final = ("grep", "import", "cold-read", "warm-read", "many-files", "mount")


# --- processes ------------------------------------------------------------------------------------------


def mount_points() -> set[str]:
    """Every mount point in this process's mount namespace (/proc/self/mountinfo, octal escapes decoded)."""
    points: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = line.split()[4]
            points.add(raw.decode("unicode_escape").encode("latin-1").decode("utf-8", "replace"))
    return points


def daemon_pids(mountpoint: Path) -> list[int]:
    """The processes whose command line is `... mount ... MOUNTPOINT`: the one serving that mount (its
    temporary path is unique to this benchmark)."""
    wanted = os.fsencode(mountpoint)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv and wanted in argv:
            pids.append(int(entry))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system time of `pid` so far (0.0 if it is gone)."""
    try:
        fields = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """The peak resident set size (VmHWM) of `pid`, in KiB (0 if it is gone)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (not ours to reap) counts as gone.
    with contextlib.suppress(OSError):
        return Path("/proc", str(pid), "stat").read_text().split(")")[-1].split()[0] != "Z"
    return False


def _is_gnu_time(path: str) -> bool:
    try:
        result = subprocess.run([path, "--version"], capture_output=True, check=False, timeout=10)
    except OSError:
        return False
    return b"GNU" in result.stdout + result.stderr


class Mounts:
    """Mounts xstore filesystems, records their processes' peak memory, and leaves none behind."""

    def __init__(self, xstore: str, env: dict[str, str]) -> None:
        self.xstore = xstore
        self.env = env
        self.pending: list[Path] = []  # mount points that may hold a mount of ours
        self.kinds: dict[Path, str] = {}
        self.peak_kib: dict[str, int] = {}  # largest VmHWM per kind of mount, just before unmounting

    def mount(self, kind: str, source: Path, mountpoint: Path, *options: str) -> float:
        """`xstore mount KIND SOURCE MOUNTPOINT`; returns the seconds until the command returned."""
        mountpoint.mkdir(exist_ok=True)
        self.pending.append(mountpoint)  # before starting: an interrupted mount may still complete
        self.kinds[mountpoint] = kind
        argv = [self.xstore, "mount", kind, str(source), str(mountpoint), *options]
        start = time.perf_counter()
        result = subprocess.run(
            argv, env=self.env, capture_output=True, stdin=subprocess.DEVNULL, check=False
        )
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            message = result.stderr.decode("utf-8", "replace").strip()
            raise RuntimeError(f"`{' '.join(argv)}` exited with {result.returncode}: {message}")
        if str(mountpoint) not in mount_points():
            raise RuntimeError(f"`{' '.join(argv)}` returned, but nothing is mounted on {mountpoint}")
        return elapsed

    def umount(self, mountpoint: Path) -> None:
        """Unmount (`xstore umount`, then a lazy `fusermount3 -u -z`) and wait for the filesystem's
        process to end (SIGTERM to it, by its pid, if it does not)."""
        pids = daemon_pids(mountpoint)
        kind = self.kinds.get(mountpoint, "?")
        for pid in pids:
            self.peak_kib[kind] = max(self.peak_kib.get(kind, 0), peak_rss_kib(pid))
        if str(mountpoint) in mount_points():
            result = subprocess.run(
                [self.xstore, "umount", str(mountpoint)],
                env=self.env,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if result.returncode != 0 or str(mountpoint) in mount_points():
                log(f"xstore umount {mountpoint}: {result.stderr.decode('utf-8', 'replace').strip()}")
                fusermount = shutil.which("fusermount3") or "fusermount3"
                subprocess.run(
                    [fusermount, "-u", "-z", str(mountpoint)],
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
        deadline = time.monotonic() + UNMOUNT_WAIT_S
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _alive(pid):
                log(f"the process serving {mountpoint} (pid {pid}) did not end: SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ValueError):
            self.pending.remove(mountpoint)

    def umount_all(self) -> None:
        for mountpoint in reversed(list(self.pending)):
            try:
                self.umount(mountpoint)
            except Exception as e:  # noqa: BLE001 (cleaning up: try every mount, report each failure)
                log(f"could not unmount {mountpoint}: {e}")

    @contextlib.contextmanager
    def mounted(self, kind: str, source: Path, mountpoint: Path, *options: str) -> Iterator[Path]:
        self.mount(kind, source, mountpoint, *options)
        try:
            yield mountpoint
        finally:
            self.umount(mountpoint)


# --- reading --------------------------------------------------------------------------------------------


@dataclass
class Totals:
    files: int = 0
    bytes: int = 0


def read_file(path: str, buffer: memoryview, totals: Totals) -> None:
    """Read `path` to its end with `read` calls of `len(buffer)` bytes (unbuffered: one system call each)."""
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            totals.bytes += n
    totals.files += 1


def read_tree(root: str, buffer: memoryview, totals: Totals) -> None:
    """Walk `root` (symlinks not followed) and read every regular file in it."""
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                read_tree(entry.path, buffer, totals)
            elif entry.is_file(follow_symlinks=False):
                read_file(entry.path, buffer, totals)


def files_under(root: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(root):
        for name in names:
            yield Path(directory, name)


class Evictor:
    """Makes reads cold: drops the page cache as root, evicts the given files' pages otherwise."""

    def __init__(self) -> None:
        self.method = "drop_caches" if os.geteuid() == 0 and os.access(DROP_CACHES, os.W_OK) else "fadvise"
        self.fincore = shutil.which("fincore")

    def describe(self) -> str:
        if self.method == "drop_caches":
            return f"`sync; echo 1 > {DROP_CACHES}` (page cache only) before every cold read"
        return "`posix_fadvise(POSIX_FADV_DONTNEED)` on the backing file before every cold read (not root)"

    def evict(self, files: Sequence[Path]) -> None:
        os.sync()
        if self.method == "drop_caches":
            with open(DROP_CACHES, "w") as f:
                f.write("1\n")
            return
        if sys.platform == "linux":  # FUSE benchmarks run on Linux only (main checks /dev/fuse)
            for path in files:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)

    def resident(self, path: Path) -> int | None:
        """Bytes of `path` in the page cache (util-linux `fincore`), None without it."""
        if self.fincore is None:
            return None
        result = subprocess.run(
            [self.fincore, "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        text = result.stdout.strip()
        return int(text) if result.returncode == 0 and text.isdigit() else None


# --- cases ----------------------------------------------------------------------------------------------


@dataclass
class ViewCase:
    """One job done on the plain directory (`direct`) and through both views: per view, samples of
    (first, again) seconds; the filesystem process's CPU seconds during the first pass; for cold reads,
    the backing bytes still resident just before the read."""

    name: str
    title: str
    target: float | None  # the highest view / direct time ratio the issue allows, reported only
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {v: [] for v in VIEWS})
    daemon_cpu: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VIEWS})
    resident: list[int] = field(default_factory=list)
    totals: dict[str, Totals] = field(default_factory=dict)


@dataclass
class ImportCase:
    title: str
    plain_s: list[float] = field(default_factory=list)
    casefold_s: list[float] = field(default_factory=list)
    daemon_cpu: list[float] = field(default_factory=list)
    import_peak_kib: int = 0


@dataclass
class MountCase:
    nar_bytes: int
    entries: int
    files: int
    mount_s: list[float] = field(default_factory=list)
    index_s: list[float] = field(default_factory=list)
    inodes_s: list[float] = field(default_factory=list)
    version_s: list[float] = field(default_factory=list)


def rotated(views: Sequence[str], i: int) -> list[str]:
    """The views in turn, starting at a different one each run."""
    k = i % len(views)
    return [*views[k:], *views[:k]]


class Bench:
    def __init__(self, workdir: Path, xstore: str, big_mib: int, source: Path) -> None:
        self.workdir = workdir
        self.xstore = xstore
        self.big_mib = big_mib
        self.source = source
        # Bytecode caches as an installed package has them, kept in the working directory (as bench/run.py).
        self.x_env = {
            key: value
            for key, value in os.environ.items()
            if key
            not in ("XSTORE_DEBUG", "XSTORE_FUSE_LOG", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
        }
        self.x_env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        self.nix_env = nix_environment(workdir / "nix")
        self.mounts = Mounts(xstore, self.x_env)
        self.evictor = Evictor()
        self.gnu_time = _is_gnu_time(GNU_TIME)
        self.buffer = memoryview(bytearray(READ_SIZE))
        self.big_nar = workdir / "big.nar"
        self.big_tree = workdir / "big-restored"
        self.inc_nar = workdir / "include.nar"
        self.inc_tree = workdir / "include-restored"
        self.inc_export = workdir / "include.export"
        self.inc_path = ""  # the store path the export stream holds
        self.nar_mnt = workdir / "mnt-nar"
        self.fold_mnt = workdir / "mnt-casefold"
        self.nix_store = shutil.which("nix-store")
        self.dumper = "nix-store --dump" if self.nix_store else "xstore nar dump"
        self.serial = 0

    def fresh(self, stem: str) -> Path:
        """A new path in the working directory that no earlier run used."""
        self.serial += 1
        return self.workdir / f"{stem}-{self.serial}"

    def run(self, *argv: str, stdout: Path | None = None) -> None:
        with open(stdout or os.devnull, "wb") as out:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, env=self.x_env, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(argv)}` failed: {result.stderr.decode('utf-8', 'replace').strip()}"
            )

    def timed_command(self, argv: Sequence[str], *, ok: tuple[int, ...] = (0,)) -> tuple[float, int]:
        """Run `argv` (stdout to /dev/null); returns (wall seconds, peak RSS in KiB from GNU time, or 0)."""
        with tempfile.NamedTemporaryFile(dir=self.workdir, prefix="rss-") as rss:
            full = [GNU_TIME, "-f", "%M", "-o", rss.name, *argv] if self.gnu_time else list(argv)
            start = time.perf_counter()
            result = subprocess.run(
                full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.x_env, check=False
            )
            elapsed = time.perf_counter() - start
            if result.returncode not in ok:
                raise RuntimeError(
                    f"`{' '.join(argv)}` exited with {result.returncode}: "
                    f"{result.stderr.decode('utf-8', 'replace').strip()[-2000:]}"
                )
            text = Path(rss.name).read_text().split()
            kib = int(text[-1]) if self.gnu_time and text and text[-1].isdigit() else 0
        return elapsed, kib

    def nix(self, *args: str, stdout: Path | None = None) -> str:
        """`nix-store ARGS...` in Nix's own environment; its output (or nothing, written to `stdout`)."""
        assert self.nix_store is not None
        options = ["--option", "substituters", "", "--option", "build-users-group", ""]
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(stdout, "wb")) if stdout is not None else subprocess.PIPE
            result = subprocess.run(
                [self.nix_store, *options, *args],
                stdout=out,
                stderr=subprocess.PIPE,
                env=self.nix_env,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"nix-store {' '.join(args)}: {result.stderr.decode('utf-8', 'replace')}")
        return result.stdout.decode().strip() if stdout is None else ""

    def dump(self, path: Path, nar: Path) -> None:
        if self.nix_store is not None:
            with open(nar, "wb") as out:
                subprocess.run(
                    [self.nix_store, "--dump", str(path)], stdout=out, env=self.nix_env, check=True
                )
        else:
            self.run(self.xstore, "nar", "dump", str(path), "-o", str(nar))

    def restore(self, nar: Path, dest: Path) -> None:
        self.run(self.xstore, "nar", "restore", str(dest), "-i", str(nar), "--case-hack", "off")

    def export_headers(self) -> None:
        """The headers closure as an export stream: one store path holding the tree, made by Nix."""
        root = self.workdir / "nix-root"
        self.inc_path = self.nix("--store", str(root), "--add", str(self.source))
        self.nix("--store", str(root), "--export", self.inc_path, stdout=self.inc_export)

    def prepare(self, names: Sequence[str]) -> None:
        if {"cold-read", "warm-read"} & set(names):
            log(f"generating a {self.big_mib} MiB file and its NAR ...")
            source = self.workdir / "big"
            source.mkdir()
            make_big_file(source / "big.bin", self.big_mib, random.Random(SEED))
            self.dump(source, self.big_nar)
            shutil.rmtree(source)  # the restored copy is what the direct read reads
            self.restore(self.big_nar, self.big_tree)
        log(f"dumping {self.source} and restoring a copy ...")
        self.dump(self.source, self.inc_nar)
        self.restore(self.inc_nar, self.inc_tree)
        if "import" in names:
            log(f"adding {self.source} to a store and exporting it ...")
            self.export_headers()
        # Page cache warm: every backing file read once.
        for path in (self.big_nar, self.inc_nar, self.inc_export):
            if path.exists():
                sha256_file(path)
        for tree in (self.big_tree, self.inc_tree):
            if tree.exists():
                read_tree(str(tree), self.buffer, Totals())
        os.sync()

    # -- one view ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def view(self, view: str, *, large: bool) -> Iterator[tuple[Path, list[int]]]:
        """The root to work on for `view` (mounted afresh for the views), and the filesystem's pids."""
        tree = self.big_tree if large else self.inc_tree
        if view == "direct":
            yield tree, []
        elif view == "nar":
            with self.mounts.mounted("nar", self.big_nar if large else self.inc_nar, self.nar_mnt) as root:
                yield root, daemon_pids(root)
        else:
            with self.mounts.mounted("casefold", tree, self.fold_mnt, "--model", "apfs") as root:
                yield root, daemon_pids(root)

    def view_case(
        self,
        case: ViewCase,
        runs: int,
        *,
        large: bool,
        job: Callable[[Path], Totals],
        before: Callable[[str, Path], None] | None = None,
        twice: bool = True,
    ) -> None:
        """Warm-up, then `runs` runs of `job` on every view, alternating; `before(view, root)` runs
        untimed just before the first pass."""

        def once(view: str, record: bool) -> None:
            with self.view(view, large=large) as (root, pids):
                if before is not None:
                    before(view, root)
                cpu = sum(cpu_seconds(p) for p in pids)
                start = time.perf_counter()
                totals = job(root)
                first = time.perf_counter() - start
                cpu = sum(cpu_seconds(p) for p in pids) - cpu
                again = 0.0
                if twice:
                    start = time.perf_counter()
                    job(root)
                    again = time.perf_counter() - start
                case.totals[view] = totals
                if record:
                    case.samples[view].append((first, again))
                    case.daemon_cpu[view].append(cpu)

        log(f"{case.name}: warm-up")
        for view in VIEWS:
            once(view, record=False)
        direct = case.totals["direct"]
        for view in ("nar", "casefold"):
            got = case.totals[view]
            if (got.files, got.bytes) != (direct.files, direct.bytes):
                raise RuntimeError(
                    f"{case.name}: through the {view} view {got.files} files, {got.bytes} bytes; "
                    f"directly {direct.files} files, {direct.bytes} bytes"
                )
        case.resident.clear()
        for i in range(runs):
            log(f"{case.name}: run {i + 1}/{runs}")
            for view in rotated(VIEWS, i):
                once(view, record=True)

    # -- the cases -------------------------------------------------------------------------------------

    def grep_case(self, runs: int) -> ViewCase:
        grep = shutil.which("grep") or "grep"
        case = ViewCase("grep", f"`grep -r` over {self.source}", GREP_TARGET)

        def job(root: Path) -> Totals:
            # Exit status 1: nothing found, as intended; every byte of every file was read.
            self.timed_command([grep, "-r", "-F", "--", GREP_PATTERN, str(root)], ok=(1,))
            return Totals()

        outputs: dict[str, str] = {}
        for view in VIEWS:  # the views find the same lines in the same files as the plain tree
            with self.view(view, large=False) as (root, _):
                result = subprocess.run(
                    [grep, "-r", "-c", "-F", "--", "#include", str(root)],
                    capture_output=True,
                    check=False,
                )
                outputs[view] = "\n".join(
                    sorted(result.stdout.decode("utf-8", "replace").replace(str(root), "").splitlines())
                )
        if not outputs["direct"] or len(set(outputs.values())) != 1:
            raise RuntimeError("grep: the views give other results than the plain tree")
        self.view_case(case, runs, large=False, job=job)
        return case

    def cold_read_case(self, runs: int) -> ViewCase:
        case = ViewCase(
            "cold-read", f"first read of one {self.big_mib} MiB file, page cache dropped", COLD_TARGET
        )
        want = sha256_file(self.big_tree / "big.bin")
        for view in VIEWS:
            with self.view(view, large=True) as (root, _):
                if sha256_file(root / "big.bin") != want:
                    raise RuntimeError(f"cold-read: the {view} view reads other bytes than the file holds")

        def before(view: str, root: Path) -> None:
            backing = self.big_nar if view == "nar" else self.big_tree / "big.bin"
            self.evictor.evict([backing])
            resident = self.evictor.resident(backing)
            if resident is not None:
                case.resident.append(resident)

        def job(root: Path) -> Totals:
            totals = Totals()
            read_file(str(root / "big.bin"), self.buffer, totals)
            return totals

        self.view_case(case, runs, large=True, job=job, before=before, twice=False)
        return case

    def warm_read_case(self, runs: int) -> ViewCase:
        case = ViewCase(
            "warm-read", f"read of one {self.big_mib} MiB file, backing file in the page cache", WARM_TARGET
        )

        def before(view: str, root: Path) -> None:
            sha256_file(self.big_nar if view == "nar" else self.big_tree / "big.bin")

        def job(root: Path) -> Totals:
            totals = Totals()
            read_file(str(root / "big.bin"), self.buffer, totals)
            return totals

        self.view_case(case, runs, large=True, job=job, before=before)
        return case

    def many_files_case(self, runs: int) -> ViewCase:
        case = ViewCase("many-files", "", None)

        def job(root: Path) -> Totals:
            totals = Totals()
            read_tree(str(root), self.buffer, totals)
            return totals

        self.view_case(case, runs, large=False, job=job)
        totals = case.totals["direct"]
        size = f"{totals.files:,} files, {totals.bytes / 1e6:.1f} MB"
        case.title = f"every file of {self.source} read from Python ({size})"
        return case

    def _import_into(self, root: Path) -> tuple[float, int]:
        self.run(
            self.xstore, "store", "init", "--store", str(root), "--case-hack", "on", "--case-fold", "apfs"
        )
        os.sync()  # no writeback of earlier runs during the timing
        return self.timed_command([self.xstore, "import", "--store", str(root), "-i", str(self.inc_export)])

    def _check_store(self, root: Path) -> None:
        self.run(self.xstore, "verify", "--store", str(root), "--check-contents")
        check = self.workdir / "check.export"
        try:
            self.run(self.xstore, "export", "--store", str(root), self.inc_path, stdout=check)
            if sha256_file(check) != sha256_file(self.inc_export):
                raise RuntimeError(f"import: the export of the path imported into {root} is not the stream")
        finally:
            check.unlink(missing_ok=True)

    def import_case(self, runs: int) -> ImportCase:
        entries = sum(1 for _ in files_under(self.inc_tree))
        case = ImportCase(
            f"`xstore import` of the headers closure ({entries:,} files, "
            f"{self.inc_export.stat().st_size / 1e6:.1f} MB stream)"
        )
        mnt = self.workdir / "mnt-import"

        def once(view: str, record: bool) -> None:
            if view == "direct":
                root = self.fresh("plain-import") / "store"
                seconds, kib = self._import_into(root)
                if not record:
                    self._check_store(root)
            else:
                backing = self.fresh("casefold-import")
                backing.mkdir()
                with self.mounts.mounted("casefold", backing, mnt, "--model", "apfs"):
                    pids = daemon_pids(mnt)
                    cpu = sum(cpu_seconds(p) for p in pids)
                    seconds, kib = self._import_into(mnt / "store")
                    cpu = sum(cpu_seconds(p) for p in pids) - cpu
                    if not record:
                        self._check_store(mnt / "store")
                if record:
                    case.daemon_cpu.append(cpu)
            case.import_peak_kib = max(case.import_peak_kib, kib)
            if record:
                (case.plain_s if view == "direct" else case.casefold_s).append(seconds)

        log("import: warm-up")
        for view in ("direct", "casefold"):
            once(view, record=False)
        for i in range(runs):
            log(f"import: run {i + 1}/{runs}")
            for view in rotated(("direct", "casefold"), i):
                once(view, record=True)
        return case

    def mount_case(self, runs: int) -> MountCase:
        from xstore.fuse.narfs import NarOperations
        from xstore.nar.listing import DirectoryNode, NarIndex, Node, RegularNode, index_file

        def index() -> NarIndex:
            with open(self.inc_nar, "rb") as f:
                return index_file(f)

        def count(node: Node) -> tuple[int, int]:
            if isinstance(node, DirectoryNode):
                entries, files = 1, 0
                for child in node.entries.values():
                    e, f = count(child)
                    entries, files = entries + e, files + f
                return entries, files
            return 1, int(isinstance(node, RegularNode))

        entries, files = count(index().root)
        case = MountCase(self.inc_nar.stat().st_size, entries, files)
        log("mount: warm-up")
        self.mounts.mount("nar", self.inc_nar, self.nar_mnt)
        self.mounts.umount(self.nar_mnt)
        self.run(self.xstore, "--version")
        for i in range(runs):
            log(f"mount: run {i + 1}/{runs}")
            case.mount_s.append(self.mounts.mount("nar", self.inc_nar, self.nar_mnt))
            self.mounts.umount(self.nar_mnt)
            start = time.perf_counter()
            self.run(self.xstore, "--version")
            case.version_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            idx = index()
            case.index_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            NarOperations(str(self.inc_nar), idx).close()
            case.inodes_s.append(time.perf_counter() - start)
        return case


# --- report ---------------------------------------------------------------------------------------------


def _version(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=30)
    except OSError:
        return "unknown"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_facts(bench: Bench, load_before: float) -> dict[str, object]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    try:
        from importlib.metadata import version

        pyfuse3_version = version("pyfuse3")
    except Exception:  # noqa: BLE001 (a fact for the report, never a failure)
        pyfuse3_version = "unknown"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "filesystem": filesystem_of(bench.workdir),
        "xstore": _version([bench.xstore, "--version"], bench.x_env),
        "python": platform.python_version(),
        "pyfuse3": pyfuse3_version,
        "libfuse": _version([shutil.which("fusermount3") or "fusermount3", "-V"]),
        "grep": _version([shutil.which("grep") or "grep", "--version"]),
        "nar_made_by": bench.dumper,
        "cold_reads": bench.evictor.describe(),
        "as_root": os.geteuid() == 0,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise_view(case: ViewCase) -> dict[str, object]:
    row: dict[str, object] = {"case": case.name, "title": case.title, "target_ratio": case.target}
    direct = case.totals.get("direct", Totals())
    row["files"], row["bytes"] = direct.files, direct.bytes
    for pass_index, pass_name in enumerate(("first", "again")):
        base = _median([s[pass_index] for s in case.samples["direct"]])
        for view in VIEWS:
            median = _median([s[pass_index] for s in case.samples[view]])
            row[f"{view}_{pass_name}_median_s"] = median
            row[f"{view}_{pass_name}_ratio"] = median / base if base else float("nan")  # view / direct
            row[f"{view}_{pass_name}_range_s"] = (
                [
                    min(s[pass_index] for s in case.samples[view]),
                    max(s[pass_index] for s in case.samples[view]),
                ]
                if case.samples[view]
                else []
            )
    for view in ("nar", "casefold"):
        row[f"{view}_daemon_cpu_median_s"] = _median(case.daemon_cpu[view])
    row["resident_before_read_bytes"] = case.resident
    row["samples_s"] = {view: case.samples[view] for view in VIEWS}
    return row


def summarise_import(case: ImportCase) -> dict[str, object]:
    plain, fold = _median(case.plain_s), _median(case.casefold_s)
    return {
        "case": "import",
        "title": case.title,
        "target_ratio": IMPORT_TARGET,
        "plain_median_s": plain,
        "casefold_median_s": fold,
        "ratio": fold / plain,
        "plain_range_s": [min(case.plain_s), max(case.plain_s)],
        "casefold_range_s": [min(case.casefold_s), max(case.casefold_s)],
        "casefold_daemon_cpu_median_s": _median(case.daemon_cpu),
        "import_peak_rss_kib": case.import_peak_kib,
        "samples_s": {"plain": case.plain_s, "casefold": case.casefold_s},
    }


def summarise_mount(case: MountCase) -> dict[str, object]:
    mount = statistics.median(case.mount_s)
    return {
        "case": "mount",
        "nar_bytes": case.nar_bytes,
        "entries": case.entries,
        "files": case.files,
        "mount_median_s": mount,
        "target_s": MOUNT_TARGET_S if case.nar_bytes >= MOUNT_TARGET_MIN_BYTES else None,
        "index_median_s": statistics.median(case.index_s),
        "inodes_median_s": statistics.median(case.inodes_s),
        "version_median_s": statistics.median(case.version_s),
        "mount_s": case.mount_s,
        "index_s": case.index_s,
        "inodes_s": case.inodes_s,
        "version_s": case.version_s,
    }


def _seconds(value: object) -> str:
    assert isinstance(value, float)
    if value != value:  # NaN: no samples
        return "-"
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _float(value: object) -> float:
    assert isinstance(value, float)
    return value


def _verdict(ratio: float, target: float | None) -> str:
    if target is None:
        return ""
    return f"<= {target:g}x: {'met' if ratio <= target else 'missed'}"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def markdown(
    facts: dict[str, object],
    views: list[dict[str, object]],
    imports: dict[str, object] | None,
    mount: dict[str, object] | None,
    peaks: dict[str, int],
    runs: int,
) -> str:
    lines = [
        f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB, Linux "
        f"{facts['kernel']}, {facts['filesystem']}; {facts['xstore']} on Python {facts['python']}, pyfuse3 "
        f"{facts['pyfuse3']}, {facts['libfuse']}; {facts['grep']}; NARs by `{facts['nar_made_by']}`, the "
        f"headers' export stream by `nix-store --add`, `--export`; {facts['date']}; "
        f"{'as root' if facts['as_root'] else 'not root'}.",
        f"Median of {runs} runs after one warm-up (range in brackets); 1-minute load average "
        f"{facts['load_average_before']:.2f} before, {facts['load_average_after']:.2f} after. Cold reads: "
        f"{facts['cold_reads']}.",
        "",
        "| case | pass | plain / direct | NAR view | NAR / plain | casefold | casefold / plain | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]

    def cell(row: dict[str, object], view: str, which: str) -> str:
        median = row[f"{view}_{which}_median_s"]
        spread = row[f"{view}_{which}_range_s"]
        assert isinstance(spread, list)
        text = _seconds(median)
        if spread:
            text += f" [{_seconds(spread[0])}-{_seconds(spread[1])}]"
        return text

    for row in views:
        target = row["target_ratio"]
        assert target is None or isinstance(target, float)
        passes = [("first", "first, fresh mount")]
        if row["case"] in ("grep", "warm-read", "many-files"):
            passes.append(("again", "again, same mount"))
        for which, pass_title in passes:
            nar_ratio = _float(row[f"nar_{which}_ratio"])
            fold_ratio = _float(row[f"casefold_{which}_ratio"])
            verdict = ""
            if target is not None and which == "first":
                verdict = (
                    f"<= {target:g}x: NAR {'met' if nar_ratio <= target else 'missed'}, "
                    f"casefold {'met' if fold_ratio <= target else 'missed'}"
                )
            lines.append(
                f"| {row['title']} | {pass_title} | {cell(row, 'direct', which)} | "
                f"{cell(row, 'nar', which)} | {nar_ratio:.2f}x | {cell(row, 'casefold', which)} | "
                f"{fold_ratio:.2f}x | {verdict} |"
            )
    if imports is not None:
        plain_range = imports["plain_range_s"]
        fold_range = imports["casefold_range_s"]
        assert isinstance(plain_range, list)
        assert isinstance(fold_range, list)
        ratio = _float(imports["ratio"])
        lines.append(
            f"| {imports['title']} | into a new store | {_seconds(imports['plain_median_s'])} "
            f"[{_seconds(plain_range[0])}-{_seconds(plain_range[1])}] | | | "
            f"{_seconds(imports['casefold_median_s'])} "
            f"[{_seconds(fold_range[0])}-{_seconds(fold_range[1])}] | "
            f"{ratio:.2f}x | {_verdict(ratio, IMPORT_TARGET)} |"
        )
    cpu_parts = [
        f"{row['case']}: NAR view {_seconds(row['nar_daemon_cpu_median_s'])}, casefold "
        f"{_seconds(row['casefold_daemon_cpu_median_s'])}"
        for row in views
        if row["case"] in ("grep", "many-files")
    ]
    if imports is not None:
        cpu_parts.append(f"import: casefold {_seconds(imports['casefold_daemon_cpu_median_s'])}")
    if cpu_parts:
        lines += [
            "",
            "CPU time of the filesystem process during the first pass (median): "
            + "; ".join(cpu_parts)
            + ".",
        ]
    for row in views:
        resident = row["resident_before_read_bytes"]
        if row["case"] == "cold-read" and isinstance(resident, list) and resident:
            lines.append(
                f"Backing file resident in the page cache just before each cold read (fincore): at most "
                f"{max(resident) / 1e6:.1f} MB."
            )
    import_kib = imports["import_peak_rss_kib"] if imports is not None else 0
    assert isinstance(import_kib, int)
    memory = [f"{kind} view process {_mib(kib)}" for kind, kib in sorted(peaks.items())]
    if import_kib:
        memory.append(f"`xstore import` {_mib(import_kib)}")
    if memory:
        worst = max([*peaks.values(), import_kib])
        lines.append(
            f"Peak RSS (largest over all runs): {', '.join(memory)}; target <= {_mib(RSS_TARGET_KIB)}: "
            f"{'met' if worst <= RSS_TARGET_KIB else 'missed'}."
        )
    if mount is not None:
        target_s = mount["target_s"]
        median = _float(mount["mount_median_s"])
        verdict = (
            f"< {target_s:g} s ({'met' if median < target_s else 'missed'})"
            if isinstance(target_s, float)
            else f"(< {MOUNT_TARGET_S:g} s is for a 100+ MB NAR)"
        )
        nar_bytes = mount["nar_bytes"]
        assert isinstance(nar_bytes, int)
        lines += [
            "",
            "| mount of a NAR | `xstore mount nar` until it returns | target | index alone (in-process) "
            "| inode table (in-process) | `xstore --version` |",
            "|---|---:|---|---:|---:|---:|",
            f"| {nar_bytes / 1e6:.1f} MB, {mount['entries']:,} entries ({mount['files']:,} files) | "
            f"{_seconds(median)} | {verdict} | {_seconds(mount['index_median_s'])} | "
            f"{_seconds(mount['inodes_median_s'])} | {_seconds(mount['version_median_s'])} |",
        ]
    lines += [
        "",
        "Ratios are of wall time, view / plain (lower is better). 'First, fresh mount': the view was "
        "mounted just before (untimed), so every name, attribute and block goes through the filesystem's "
        "process; 'again, same mount': the same job repeated at once, served in part from what the kernel "
        "kept. Except for the cold reads, every backing file is in the page cache. Targets (from the issue) "
        "are reported, not asserted.",
    ]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def working_directory(parent: str | None) -> Iterator[Path]:
    """A fresh temporary directory, removed afterwards (never while something is mounted inside it),
    also on Ctrl-C and SIGTERM."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    path = Path(tempfile.mkdtemp(prefix="xstore-bench-fuse-", dir=parent)).resolve()
    try:
        yield path
    finally:
        inside = sorted(p for p in mount_points() if p == str(path) or p.startswith(str(path) + "/"))
        if inside:
            log(f"not removing {path}: still mounted there: {', '.join(inside)}")
        else:
            with contextlib.suppress(OSError):
                remove(path)
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case and view (default 5)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: a {QUICK_BIG_MIB} MiB file and {QUICK_SOURCE} (the targets' inputs are larger)",
    )
    parser.add_argument("--file-mib", type=int, help=f"size of the large file (default {FULL_BIG_MIB})")
    parser.add_argument("--source", help=f"the tree to grep, import and read (default {FULL_SOURCE})")
    parser.add_argument(
        "--only",
        action="append",
        choices=CASES,
        metavar="CASE",
        help=f"{', '.join(CASES)}; repeatable (default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (all samples) instead of the tables")
    parser.add_argument("--tmpdir", help="where to make the working directory (default: the system's)")
    parser.add_argument(
        "--xstore",
        default=str(Path(sys.executable).parent / "xstore"),
        help="the xstore executable (default: the one beside this Python)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.exists("/dev/fuse"):
        raise SystemExit("no /dev/fuse: FUSE is not available here")
    big_mib = args.file_mib or (QUICK_BIG_MIB if args.quick else FULL_BIG_MIB)
    source = Path(args.source or (QUICK_SOURCE if args.quick else FULL_SOURCE))
    names = [name for name in CASES if not args.only or name in args.only]
    if "import" in names and shutil.which("nix-store") is None:
        raise SystemExit("the import case needs nix-store (it builds the headers' export stream); use --only")
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        log(f"warning: 1-minute load average is {load_before:.2f}; other work will disturb the timings")
    views: list[dict[str, object]] = []
    imports: dict[str, object] | None = None
    mount: dict[str, object] | None = None
    with working_directory(args.tmpdir) as workdir:
        bench = Bench(workdir, args.xstore, big_mib, source)
        try:
            bench.prepare(names)
            if "grep" in names:
                views.append(summarise_view(bench.grep_case(args.runs)))
            if "import" in names:
                imports = summarise_import(bench.import_case(args.runs))
            if "cold-read" in names:
                views.append(summarise_view(bench.cold_read_case(args.runs)))
            if "warm-read" in names:
                views.append(summarise_view(bench.warm_read_case(args.runs)))
            if "many-files" in names:
                views.append(summarise_view(bench.many_files_case(args.runs)))
            if "mount" in names:
                mount = summarise_mount(bench.mount_case(args.runs))
            facts = machine_facts(bench, load_before)
        finally:
            bench.mounts.umount_all()
        peaks = dict(bench.mounts.peak_kib)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": facts,
                    "runs": args.runs,
                    "views": views,
                    "import": imports,
                    "mount": mount,
                    "peak_rss_kib": peaks,
                },
                indent=2,
            )
        )
    else:
        print(markdown(facts, views, imports, mount, peaks, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
