"""Side-by-side benchmark of xstore against the real Nix: wall time and peak memory per case.

Every case runs both tools as subprocesses on the same inputs in one temporary working directory (so
both read and write the same filesystem), one warm-up run each (page cache warm, outputs checked
against Nix once), then `--runs` timed runs, alternating xstore and Nix so that drift on the machine
hits both alike. Reported per case: the median wall time of each tool, the ratio xstore/Nix, and each
tool's peak resident set size. Two cases measure fixed costs: `startup` (`--version`) and `command` (a
dump of an empty file: interpreter, imports and argument parsing); the other cases' "work" is their
time minus the `command` median.

The cache cases copy from binary caches Nix wrote (`nix copy --to file://...?compression=zstd&secret-
key=...`, the key trusted by both tools) into an empty store of each tool's own: the large path, and a
closure of 501 small paths from `file://` and from `http://127.0.0.1` (a static server in this process).

The store cases work on a chroot store Nix makes in the working directory (`nix-store --store ROOT --add`
of the tree and of a directory holding the large file: one store path each) and on its `nix-store
--export` streams: `import-*` imports a stream into an empty store (one per tool, created before every
run outside the timing: `xstore store init --case-hack off`, `nix-store --init`), `export-*` exports the
path from Nix's store to /dev/null.

Peak RSS is the child's `ru_maxrss` from `wait4`. On Linux a child's `ru_maxrss` starts from its
parent's peak RSS (the value is carried across `fork` and `exec`), so measured directly from this
Python process every figure would be at least this process's own size. Each command is therefore
started through GNU time (`/usr/bin/time -f %M`), a 1 MiB process that forks the command, waits for it
with `wait4` and prints its `ru_maxrss`. Without GNU time the figures come from our own `wait4` and
the report states the floor they cannot go below.

Nix runs in an environment of its own (state, logs, configuration, cache and default store in the
working directory, `bench/common.py`'s `nix_environment`), so nothing touches
/nix. Inputs are generated from a fixed seed. Everything the benchmark creates is removed at the end,
also on Ctrl-C or SIGTERM. Targets are reported, never asserted: benchmarks are not tests.

Usage: .venv/bin/python -m bench.run [--runs N] [--quick] [--only CASE ...] [--json] [--save-json FILE]
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

from bench.common import (
    Trash,
    filesystem_of,
    log,
    make_big_file,
    nix_environment,
    remove,
    sha256_file,
    static_http_server,
)

SEED: Final = 20240601
GNU_TIME: Final = "/usr/bin/time"
RSS_TARGET_KIB: Final = 64 * 1024

FULL_FILES: Final = 5000
FULL_BIG_MIB: Final = 300
QUICK_FILES: Final = 500
QUICK_BIG_MIB: Final = 30

CASE_NAMES: Final = (
    "startup",
    "command",
    "dump-tree",
    "restore-tree",
    "restore-include",
    "dump-file",
    "restore-file",
    "hash-file",
    "import-tree",
    "export-tree",
    "import-file",
    "export-file",
    "cache-big-file",
    "cache-small-file",
    "cache-small-http",
)
TREE_CASES: Final = frozenset({"dump-tree", "restore-tree", "import-tree", "export-tree"})
FILE_CASES: Final = frozenset(
    {"dump-file", "restore-file", "hash-file", "import-file", "export-file", "cache-big-file"}
)
STORE_CASES: Final = frozenset({"import-tree", "export-tree", "import-file", "export-file"})
CACHE_CASES: Final = frozenset({"cache-big-file", "cache-small-file", "cache-small-http"})
SMALL_PATHS: Final = 500  # plus one that refers to them all: 501 paths

# 500 text files and one that names them all (so refers to them): a closure of 501 small paths, made by
# evaluation alone.
SMALL_CLOSURE_NIX: Final = (
    'let fs = map (i: builtins.toFile "f${toString i}" "content ${toString i}\\n") '
    "(builtins.genList (x: x) @N@); "
    'in builtins.toFile "root" (builtins.concatStringsSep "\\n" fs)'
)

# Given to every Nix command on a store (as tests/nixstores.py): build as the calling user whatever groups
# the machine has, and never ask cache.nixos.org for anything.
NIX_STORE_OPTIONS: Final = ("--option", "substituters", "", "--option", "build-users-group", "")


# --- inputs ---------------------------------------------------------------------------------------------


def make_tree(root: Path, n_files: int, rng: random.Random) -> int:
    """Create `n_files` regular files of 0-4 KiB (a tenth executable) in about `n_files / 50` leaf
    directories two levels deep, plus a symlink for every twentieth file (some dangling, some to
    directories). Returns the number of entries created, directories included."""
    n_leaves = max(1, n_files // 50)
    n_top = max(1, n_leaves // 5)
    leaves = [root / f"d{i % n_top:03d}" / f"sub{i:03d}" for i in range(n_leaves)]
    entries = 1
    root.mkdir()
    for top in sorted({leaf.parent for leaf in leaves}):
        top.mkdir()
        entries += 1
    for leaf in leaves:
        leaf.mkdir()
        entries += 1
    for i in range(n_files):
        leaf = leaves[i % n_leaves]
        path = leaf / f"file-{i:05d}.dat"
        path.write_bytes(rng.randbytes(rng.randint(0, 4096)))
        if rng.random() < 0.1:
            path.chmod(0o755)
        entries += 1
        if i % 20 == 0:
            target = rng.choice([path.name, "../../" + leaf.parent.name, "does-not-exist", "/nix/store"])
            (leaf / f"link-{i:05d}").symlink_to(target)
            entries += 1
    return entries


# --- running and measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One tool invocation: argv, where stdin comes from and stdout goes (None: /dev/null), environment."""

    argv: Sequence[str]
    env: dict[str, str]
    stdin: Path | None = None
    stdout: Path | None = None


@dataclass
class Sample:
    wall_s: float
    cpu_s: float  # user + system, the command's and its waited-for children's (GNU time's ~1 ms too)
    maxrss_kib: int


class Runner:
    """Runs commands and measures wall time and the peak RSS of the command itself."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.use_gnu_time = _is_gnu_time(GNU_TIME)
        self._rss_file = workdir / "maxrss"
        self._stderr_file = workdir / "stderr"

    def floor_kib(self) -> int:
        """The lowest `ru_maxrss` a command can show under this runner (what /bin/true shows)."""
        true = shutil.which("true") or "/bin/true"
        return min(self.run(Command([true], dict(os.environ))).maxrss_kib for _ in range(3))

    def run(self, command: Command) -> Sample:
        """Run `command` to completion; raise RuntimeError with its stderr unless it exits 0."""
        argv = list(command.argv)
        if self.use_gnu_time:
            argv = [GNU_TIME, "-f", "%M", "-o", str(self._rss_file), *argv]
        with contextlib.ExitStack() as stack:
            stdin = stack.enter_context(open(command.stdin or os.devnull, "rb"))
            stdout = stack.enter_context(open(command.stdout or os.devnull, "wb"))
            stderr = stack.enter_context(open(self._stderr_file, "wb"))
            start = time.perf_counter()
            # A process group of its own, so an interrupted benchmark can stop GNU time and the command
            # together before it removes their working directory.
            proc = subprocess.Popen(
                argv, stdin=stdin, stdout=stdout, stderr=stderr, env=command.env, process_group=0
            )
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            message = self._stderr_file.read_text(errors="replace").strip()
            raise RuntimeError(f"`{' '.join(command.argv)}` exited with {proc.returncode}: {message}")
        # GNU time's %M is its own wait4 ru_maxrss of the command.
        maxrss = int(self._rss_file.read_text().split()[-1]) if self.use_gnu_time else usage.ru_maxrss
        return Sample(wall, usage.ru_utime + usage.ru_stime, maxrss)


def _is_gnu_time(path: str) -> bool:
    try:
        result = subprocess.run([path, "--version"], capture_output=True, check=False, timeout=10)
    except OSError:
        return False
    return b"GNU" in result.stdout + result.stderr


# --- cases ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One comparison: the same job done by xstore and by Nix."""

    name: str
    title: str
    target: float | None  # the bound on xstore/Nix, reported only
    xstore: Command
    nix: Command
    target_s: float | None = None  # the bound on xstore's own median, reported only
    reset: Callable[[], None] = lambda: None  # before every run, untimed (remove a restore's output)
    verify: Callable[[], None] = lambda: None  # after the warm-up runs, untimed
    xstore_samples: list[Sample] = field(default_factory=list)
    nix_samples: list[Sample] = field(default_factory=list)


class Bench:
    """Builds the inputs and the cases in `workdir`."""

    def __init__(self, workdir: Path, xstore: str, n_files: int, big_mib: int) -> None:
        self.workdir = workdir
        self.runner = Runner(workdir)
        self.nix_env = nix_environment(workdir / "nix")
        # Bytecode caches as an installed package has them (pip compiles on install), kept in the
        # working directory: the warm-up run writes them, whatever PYTHONDONTWRITEBYTECODE said.
        self.x_env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("XSTORE_DEBUG", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
        }
        self.x_env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        self.xstore_exe = xstore
        self.nix_store = _which("nix-store")
        self.nix_hash = _which("nix-hash")
        self.n_files = n_files
        self.big_mib = big_mib
        self.tree = workdir / "tree"
        self.tree_nar = workdir / "tree.nar"
        self.include_nar = workdir / "include.nar"  # /usr/include: a real tree of about 8,000 files
        self.big_dir = workdir / "big"  # what `nix-store --add` makes the large store path of
        self.big = self.big_dir / "big.bin"
        self.big_nar = workdir / "big.nar"
        self.tree_entries = 0
        self.trash = Trash(workdir / "trash")
        # The source store, made by Nix: the tree and the large file's directory added as one path each,
        # and their `nix-store --export` streams.
        self.store = workdir / "store"
        self.store_paths: dict[str, str] = {}  # "tree" / "file": logical store path
        self.exports: dict[str, Path] = {}
        # Binary caches Nix wrote (zstd, signed), for the cache cases: the large path's and the small
        # closure's, the small closure's source store and root, the key, and an HTTP server.
        self.nix_exe = _which("nix")
        self.secret_key = workdir / "cache.sk"
        self.public_key = ""
        self.small_store = workdir / "small-store"
        self.small_root = ""
        self.small_closure: list[str] = []
        self.caches: dict[str, Path] = {}
        self.http_url = ""
        self.services = contextlib.ExitStack()

    def nix(self, *args: str) -> Command:
        return Command([self.nix_store, *args], self.nix_env)

    def nix_on(
        self, store: Path, *args: str, stdin: Path | None = None, stdout: Path | None = None
    ) -> Command:
        """`nix-store --store STORE` with the options every store command gets."""
        argv = [self.nix_store, "--store", str(store), *NIX_STORE_OPTIONS, *args]
        return Command(argv, self.nix_env, stdin, stdout)

    def x(self, *args: str, stdout: Path | None = None) -> Command:
        return Command([self.xstore_exe, *args], self.x_env, None, stdout)

    def prepare(self, names: Sequence[str]) -> None:
        """Generate the inputs the selected cases need, and their NARs (made by Nix, the reference)."""
        wanted = set(names)
        if TREE_CASES & wanted:
            log(f"generating {self.n_files} small files ...")
            self.tree_entries = make_tree(self.tree, self.n_files, random.Random(SEED))
        if "restore-include" in wanted:
            log("dumping /usr/include with nix-store ...")
            self.runner.run(
                Command([self.nix_store, "--dump", "/usr/include"], self.nix_env, None, self.include_nar)
            )
        if {"dump-tree", "restore-tree"} & wanted:
            self.runner.run(
                Command([self.nix_store, "--dump", str(self.tree)], self.nix_env, None, self.tree_nar)
            )
        if FILE_CASES & wanted:
            log(f"generating a {self.big_mib} MiB file ...")
            self.big_dir.mkdir()
            make_big_file(self.big, self.big_mib, random.Random(SEED + 1))
        if {"dump-file", "restore-file", "hash-file"} & wanted:
            self.runner.run(
                Command([self.nix_store, "--dump", str(self.big)], self.nix_env, None, self.big_nar)
            )
        for label, source, cases, exported in (
            ("tree", self.tree, {"import-tree", "export-tree"}, True),
            ("file", self.big_dir, {"import-file", "export-file"}, True),
            ("file", self.big_dir, {"cache-big-file"}, False),
        ):
            if cases & wanted and label not in self.store_paths:
                log(f"adding {source.name} to a Nix store ...")
                added = self.workdir / "added"
                self.runner.run(self.nix_on(self.store, "--add", str(source), stdout=added))
                self.store_paths[label] = added.read_text().strip()
                added.unlink()
            if cases & wanted and exported and label not in self.exports:
                log(f"exporting {source.name} ...")
                self.exports[label] = self.workdir / f"{label}.export"
                self.runner.run(
                    self.nix_on(self.store, "--export", self.store_paths[label], stdout=self.exports[label])
                )
        if CACHE_CASES & wanted:
            self._prepare_caches(wanted)
        os.sync()  # no writeback of the inputs while we measure

    def nix_cmd(self, *args: str, stdout: Path | None = None) -> Command:
        """`nix --extra-experimental-features nix-command ARGS...`."""
        return Command(
            [self.nix_exe, "--extra-experimental-features", "nix-command", *args], self.nix_env, None, stdout
        )

    def _capture(self, command: Command) -> str:
        out = self.workdir / "captured"
        self.runner.run(Command(command.argv, command.env, command.stdin, out))
        text = out.read_text()
        out.unlink()
        return text

    def _prepare_caches(self, wanted: set[str]) -> None:
        """Nix writes the caches both tools read: `nix copy --to file://...?compression=zstd&secret-key=..`,
        of the large path, and of a closure of 501 small paths made by evaluation."""
        log("making a signing key and the binary caches (nix copy --to file://) ...")
        self.runner.run(
            self.nix_cmd("key", "generate-secret", "--key-name", "bench-1", stdout=self.secret_key)
        )
        self.public_key = self._capture(
            Command(
                [
                    self.nix_exe,
                    "--extra-experimental-features",
                    "nix-command",
                    "key",
                    "convert-secret-to-public",
                ],
                self.nix_env,
                self.secret_key,
            )
        ).strip()
        params = f"compression=zstd&secret-key={self.secret_key}"
        if "cache-big-file" in wanted:
            self.caches["big"] = self.workdir / "cache-big"
            url = f"file://{self.caches['big']}?{params}"
            self.runner.run(
                self.nix_cmd(
                    "copy",
                    "--store",
                    str(self.store),
                    *NIX_STORE_OPTIONS,
                    "--to",
                    url,
                    self.store_paths["file"],
                )
            )
        if {"cache-small-file", "cache-small-http"} & wanted:
            instantiate = str(Path(self.nix_store).parent / "nix-instantiate")
            expression = SMALL_CLOSURE_NIX.replace("@N@", str(SMALL_PATHS))
            argv = [instantiate, "--store", str(self.small_store), *NIX_STORE_OPTIONS, "--read-write-mode",
                    "--eval", "--json", "-E", expression]  # fmt: skip
            self.small_root = json.loads(self._capture(Command(argv, self.nix_env)))
            self.small_closure = self._capture(self.nix_on(self.small_store, "-qR", self.small_root)).split()
            self.caches["small"] = self.workdir / "cache-small"
            url = f"file://{self.caches['small']}?{params}"
            self.runner.run(
                self.nix_cmd(
                    "copy", "--store", str(self.small_store), *NIX_STORE_OPTIONS, "--to", url, self.small_root
                )
            )
            if "cache-small-http" in wanted:
                self.http_url = self.services.enter_context(static_http_server(self.caches["small"]))

    def cases(self, names: Sequence[str]) -> list[Case]:
        made: dict[str, Callable[[], Case]] = {
            "startup": self._startup,
            "command": self._command,
            "dump-tree": lambda: self._dump("dump-tree", self.tree, self.tree_nar, 1.5),
            "restore-tree": lambda: self._restore("restore-tree", self.tree_nar, 1.5),
            "restore-include": lambda: self._restore("restore-include", self.include_nar, 1.2),
            "dump-file": lambda: self._dump("dump-file", self.big, self.big_nar, 1.0),
            "restore-file": lambda: self._restore("restore-file", self.big_nar, 1.0),
            "hash-file": self._hash_file,
            "import-tree": lambda: self._import("import-tree", "tree", 1.2),
            "export-tree": lambda: self._export("export-tree", "tree", 1.5),
            "import-file": lambda: self._import("import-file", "file", 1.5),
            "export-file": lambda: self._export("export-file", "file", 1.5),
            "cache-big-file": lambda: self._cache_copy("cache-big-file", 1.0),
            "cache-small-file": lambda: self._cache_copy("cache-small-file", 1.5),
            "cache-small-http": lambda: self._cache_copy("cache-small-http", 1.5),
        }
        return [made[name]() for name in CASE_NAMES if name in names]

    def _startup(self) -> Case:
        return Case(
            "startup",
            "startup: `xstore --version` vs `nix-store --version`",
            2.5,
            self.x("--version"),
            self.nix("--version"),
        )

    def _command(self) -> Case:
        empty = self.workdir / "empty"
        empty.touch()
        return Case(
            "command",
            "fixed cost of a command: `nar dump` of an empty file vs `nix-store --dump`",
            None,
            self.x("nar", "dump", str(empty)),
            self.nix("--dump", str(empty)),
            target_s=0.045,
        )

    def _dump(self, name: str, source: Path, reference: Path, target: float) -> Case:
        out = self.workdir / "check.nar"

        def verify() -> None:
            self.runner.run(Command([self.xstore_exe, "nar", "dump", str(source)], self.x_env, None, out))
            try:
                if sha256_file(out) != sha256_file(reference):
                    raise RuntimeError(f"{name}: xstore's NAR differs from nix-store --dump's")
            finally:
                out.unlink()

        what = self._describe(source)
        return Case(
            name,
            f"`nar dump` {what} > /dev/null vs `nix-store --dump`",
            target,
            self.x("nar", "dump", str(source)),
            self.nix("--dump", str(source)),
            verify=verify,
        )

    def _restore(self, name: str, nar: Path, target: float) -> Case:
        dest = self.workdir / "restored"

        def reset() -> None:
            if dest.exists() or dest.is_symlink():
                self.trash.discard(dest)
                os.sync()  # the previous run's writeback must not land in the next measurement

        def verify() -> None:
            reset()
            self.runner.run(self.x("nar", "restore", str(dest), "-i", str(nar)))
            check = self.workdir / "check.nar"
            try:
                self.runner.run(Command([self.nix_store, "--dump", str(dest)], self.nix_env, None, check))
                if sha256_file(check) != sha256_file(nar):
                    raise RuntimeError(f"{name}: the tree xstore restored dumps to a different NAR")
            finally:
                check.unlink(missing_ok=True)
                reset()

        what = (
            "/usr/include's NAR"
            if nar == self.include_nar
            else self._describe(self.tree if nar == self.tree_nar else self.big)
        )
        return Case(
            name,
            f"`nar restore` {what} vs `nix-store --restore`",
            target,
            self.x("nar", "restore", str(dest), "-i", str(nar)),
            Command([self.nix_store, "--restore", str(dest)], self.nix_env, stdin=nar),
            reset=reset,
            verify=verify,
        )

    def _hash_file(self) -> Case:
        x_cmd = self.x("hash", "path", str(self.big), "--format", "nix32")
        n_cmd = Command([self.nix_hash, "--type", "sha256", "--base32", str(self.big)], self.nix_env)
        x_out, n_out = self.workdir / "x.hash", self.workdir / "n.hash"

        def verify() -> None:
            try:
                self.runner.run(Command(x_cmd.argv, x_cmd.env, None, x_out))
                self.runner.run(Command(n_cmd.argv, n_cmd.env, None, n_out))
                if x_out.read_text().strip() != n_out.read_text().strip():
                    raise RuntimeError(f"hash-file: {x_out.read_text()!r} != {n_out.read_text()!r}")
            finally:
                x_out.unlink(missing_ok=True)
                n_out.unlink(missing_ok=True)

        return Case(
            "hash-file",
            f"`hash path --format nix32` {self._describe(self.big)} vs `nix-hash --type sha256 --base32`",
            1.1,
            x_cmd,
            n_cmd,
            verify=verify,
        )

    def _import(self, name: str, label: str, target: float) -> Case:
        """`xstore import` and `nix-store --import` of one export stream, each into an empty store of its
        own, created before every run outside the timing."""
        stream, path = self.exports[label], self.store_paths[label]
        x_store, n_store = self.workdir / "import-xstore", self.workdir / "import-nix"

        def reset() -> None:
            for store in (x_store, n_store):
                self.trash.discard(store)
            self.runner.run(self.x("store", "init", "--store", str(x_store), "--case-hack", "off"))
            self.runner.run(self.nix_on(n_store, "--init"))
            os.sync()  # the previous run's writeback must not land in the next measurement

        def verify() -> None:
            reset()
            self.runner.run(self.x("import", "--store", str(x_store), "-i", str(stream)))
            self.runner.run(self.nix_on(n_store, "--import", stdin=stream))
            self.runner.run(self.x("verify", "--store", str(x_store), "--check-contents"))
            for store in (n_store, x_store):  # Nix accepts the store xstore wrote, too
                self.runner.run(self.nix_on(store, "--verify", "--check-contents"))
            check = self.workdir / "check.export"
            try:
                self.runner.run(self.x("export", "--store", str(x_store), path, stdout=check))
                if sha256_file(check) != sha256_file(stream):
                    raise RuntimeError(f"{name}: xstore's export of the imported path is not the stream")
            finally:
                check.unlink(missing_ok=True)

        return Case(
            name,
            f"`import` of a path of {self._describe(self.tree if label == 'tree' else self.big)} "
            "vs `nix-store --import`",
            target,
            self.x("import", "--store", str(x_store), "-i", str(stream)),
            self.nix_on(n_store, "--import", stdin=stream),
            reset=reset,
            verify=verify,
        )

    def _export(self, name: str, label: str, target: float) -> Case:
        """`xstore export` and `nix-store --export` of one path of the store Nix made, to /dev/null."""
        path = self.store_paths[label]

        def verify() -> None:
            check = self.workdir / "check.export"
            try:
                self.runner.run(self.x("export", "--store", str(self.store), path, stdout=check))
                if sha256_file(check) != sha256_file(self.exports[label]):
                    raise RuntimeError(f"{name}: xstore's export differs from nix-store --export's")
            finally:
                check.unlink(missing_ok=True)

        return Case(
            name,
            f"`export` of a path of {self._describe(self.tree if label == 'tree' else self.big)} "
            "> /dev/null vs `nix-store --export`",
            target,
            self.x("export", "--store", str(self.store), path),
            self.nix_on(self.store, "--export", path),
            verify=verify,
        )

    def _cache_copy(self, name: str, target: float) -> Case:
        """`xstore copy --from CACHE` and `nix copy --from CACHE` of a closure, each into an empty store of
        its own (made before every run, outside the timing), the cache's key trusted by both."""
        if name == "cache-big-file":
            url, root, closure = (
                f"file://{self.caches['big']}",
                self.store_paths["file"],
                [self.store_paths["file"]],
            )
            source, what = self.store, f"a path of one {self.big_mib} MiB file from a zstd file:// cache"
        else:
            http = name == "cache-small-http"
            url = self.http_url if http else f"file://{self.caches['small']}"
            root, closure, source = self.small_root, self.small_closure, self.small_store
            where = "over http:// on 127.0.0.1" if http else "from a zstd file:// cache"
            what = f"{len(closure)} small paths {where}"
        x_store, n_store = self.workdir / f"{name}-xstore", self.workdir / f"{name}-nix"
        disk_cache = Path(self.nix_env["XDG_CACHE_HOME"]) / "nix"

        def reset() -> None:
            for store in (x_store, n_store):
                self.trash.discard(store)
            # Nix keeps narinfos of http caches in a disk cache between runs; each run starts cold.
            if disk_cache.exists():
                remove(disk_cache)
            self.runner.run(self.x("store", "init", "--store", str(x_store), "--case-hack", "off"))
            self.runner.run(self.nix_on(n_store, "--init"))
            os.sync()

        x_cmd = self.x(
            "copy", "--from", url, "--to", str(x_store), "--trusted-public-keys", self.public_key, "-r", root
        )
        n_cmd = self.nix_cmd(
            "copy", "--store", str(n_store), *NIX_STORE_OPTIONS, "--option", "trusted-public-keys",
            self.public_key, "--from", url, root,
        )  # fmt: skip

        def verify() -> None:
            reset()
            self.runner.run(x_cmd)
            self.runner.run(n_cmd)
            mine, theirs = self.workdir / "check-x.export", self.workdir / "check-n.export"
            try:
                self.runner.run(self.x("export", "--store", str(x_store), *closure, stdout=mine))
                self.runner.run(self.nix_on(source, "--export", *closure, stdout=theirs))
                if sha256_file(mine) != sha256_file(theirs):
                    raise RuntimeError(f"{name}: the closure xstore copied does not export as the original")
                self.runner.run(self.nix_on(x_store, "--verify", "--check-contents"))
            finally:
                mine.unlink(missing_ok=True)
                theirs.unlink(missing_ok=True)

        return Case(
            name,
            f"`copy --from` {what} vs `nix copy --from`",
            target,
            x_cmd,
            n_cmd,
            reset=reset,
            verify=verify,
        )

    def _describe(self, source: Path) -> str:
        if source == self.tree:
            return f"{self.n_files} files ({self.tree_entries} entries)"
        return f"one {self.big_mib} MiB file"


def _which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found on PATH (Debian: apt-get install nix-bin)")
    return found


def measure(bench: Bench, case: Case, runs: int) -> None:
    """One untimed warm-up run of each tool, the case's check, then `runs` alternating timed runs."""
    log(f"{case.name}: warm-up")
    for command in (case.xstore, case.nix):
        case.reset()
        bench.runner.run(command)
    case.reset()
    case.verify()
    for i in range(runs):
        log(f"{case.name}: run {i + 1}/{runs}")
        case.reset()
        case.xstore_samples.append(bench.runner.run(case.xstore))
        case.reset()
        case.nix_samples.append(bench.runner.run(case.nix))
    case.reset()


# --- report ---------------------------------------------------------------------------------------------


def machine_facts(bench: Bench, rss_floor_kib: int, load_before: float) -> dict[str, object]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nix_version = subprocess.run(
        [bench.nix_store, "--version"], capture_output=True, text=True, env=bench.nix_env, check=True
    ).stdout.strip()
    x_version = subprocess.run(
        [bench.xstore_exe, "--version"], capture_output=True, text=True, env=bench.x_env, check=True
    ).stdout.strip()
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "filesystem": filesystem_of(bench.workdir),
        "nix": nix_version,
        "xstore": x_version,
        "python": platform.python_version(),
        "rss_method": "GNU time %M (wait4 ru_maxrss of the command)"
        if bench.runner.use_gnu_time
        else "wait4 ru_maxrss from the benchmark process",
        "rss_floor_kib": rss_floor_kib,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def summarise(case: Case, baseline: Case | None) -> dict[str, object]:
    """Medians and peaks of `case`; with `baseline` (the fixed cost of a command), also the work proper."""
    x_wall = statistics.median(s.wall_s for s in case.xstore_samples)
    n_wall = statistics.median(s.wall_s for s in case.nix_samples)
    x_cpu = statistics.median(s.cpu_s for s in case.xstore_samples)
    n_cpu = statistics.median(s.cpu_s for s in case.nix_samples)
    row: dict[str, object] = {
        "case": case.name,
        "title": case.title,
        "runs": len(case.xstore_samples),
        "xstore_median_s": x_wall,
        "nix_median_s": n_wall,
        "ratio": x_wall / n_wall,
        "target_ratio": case.target,
        "target_s": case.target_s,
        "xstore_cpu_median_s": x_cpu,
        "nix_cpu_median_s": n_cpu,
        "cpu_ratio": x_cpu / n_cpu if n_cpu > 0 else None,
        "xstore_peak_rss_kib": max(s.maxrss_kib for s in case.xstore_samples),
        "nix_peak_rss_kib": max(s.maxrss_kib for s in case.nix_samples),
        "xstore_wall_s": [s.wall_s for s in case.xstore_samples],
        "nix_wall_s": [s.wall_s for s in case.nix_samples],
        "xstore_cpu_s": [s.cpu_s for s in case.xstore_samples],
        "nix_cpu_s": [s.cpu_s for s in case.nix_samples],
    }
    if baseline is not None and case is not baseline:
        x_start = statistics.median(s.wall_s for s in baseline.xstore_samples)
        n_start = statistics.median(s.wall_s for s in baseline.nix_samples)
        row["xstore_work_s"] = x_wall - x_start
        row["nix_work_s"] = n_wall - n_start
        if n_wall - n_start > 0:
            row["work_ratio"] = (x_wall - x_start) / (n_wall - n_start)
    return row


def _seconds(value: object) -> str:
    assert isinstance(value, float)
    return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.2f} s"


def _mib(kib: object) -> str:
    assert isinstance(kib, int)
    return f"{kib / 1024:.1f} MiB"


def markdown(facts: dict[str, object], rows: list[dict[str, object]], runs: int) -> str:
    lines = [
        f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB, Linux "
        f"{facts['kernel']}, {facts['filesystem']}; {facts['nix']}; {facts['xstore']} on Python "
        f"{facts['python']}; {facts['date']}.",
        f"Median of {runs} runs after one warm-up; peak RSS is the largest of the timed runs "
        f"({facts['rss_method']}; a command that does nothing shows {_mib(facts['rss_floor_kib'])}). "
        f"1-minute load average {facts['load_average_before']:.2f} before, "
        f"{facts['load_average_after']:.2f} after.",
        "",
        "| case | xstore | Nix | xstore/Nix | target | xstore work | Nix work | work ratio | CPU ratio "
        "| xstore peak RSS | Nix peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        target = row["target_ratio"]
        ratio = row["ratio"]
        assert isinstance(ratio, float)
        verdict = ""
        if isinstance(target, float):
            verdict = f"<= {target:g}x ({'met' if ratio <= target else 'missed'})"
        target_s, x_median = row.get("target_s"), row["xstore_median_s"]
        if isinstance(target_s, float) and isinstance(x_median, float):
            verdict = f"xstore <= {_seconds(target_s)} ({'met' if x_median <= target_s else 'missed'})"
        work_ratio = row.get("work_ratio")
        cpu_ratio = row.get("cpu_ratio")
        x_work, n_work = row.get("xstore_work_s"), row.get("nix_work_s")
        rss = row["xstore_peak_rss_kib"]
        assert isinstance(rss, int)
        rss_text = _mib(rss) + ("" if rss <= RSS_TARGET_KIB else " (over 64 MiB)")
        lines.append(
            f"| {row['title']} | {_seconds(row['xstore_median_s'])} | {_seconds(row['nix_median_s'])} | "
            f"{ratio:.2f}x | {verdict} | "
            f"{_seconds(x_work) if x_work is not None else ''} | "
            f"{_seconds(n_work) if n_work is not None else ''} | "
            f"{f'{work_ratio:.1f}x' if isinstance(work_ratio, float) else ''} | "
            f"{f'{cpu_ratio:.2f}x' if isinstance(cpu_ratio, float) else ''} | "
            f"{rss_text} | {_mib(row['nix_peak_rss_kib'])} |"
        )
    lines += [
        "",
        "Targets (from the issue, reported not asserted): the ratios shown, and xstore peak RSS <= 64 MiB. "
        "'Work' is a tool's median minus its own fixed cost of a command (second row: interpreter, "
        "imports, argument parsing): the job proper. Where Nix's "
        "work is a few milliseconds, the work ratio is noisy. 'CPU ratio' compares median user + system "
        "time, which other load on the machine disturbs less than wall time.",
    ]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def working_directory(parent: str | None) -> Iterator[Path]:
    """A fresh temporary directory, removed afterwards, also on Ctrl-C and SIGTERM."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    path = Path(tempfile.mkdtemp(prefix="xstore-bench-", dir=parent))
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            remove(path)
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool and case (default 5)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_FILES} files and a {QUICK_BIG_MIB} MiB file",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=CASE_NAMES,
        metavar="CASE",
        help=f"one of {', '.join(CASE_NAMES)}; repeatable",
    )
    parser.add_argument("--files", type=int, help=f"small files in the tree (default {FULL_FILES})")
    parser.add_argument("--file-mib", type=int, help=f"size of the large file (default {FULL_BIG_MIB})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")
    parser.add_argument("--save-json", metavar="FILE", help="also write the JSON report to FILE")
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
    names: list[str] = args.only or list(CASE_NAMES)
    n_files = args.files or (QUICK_FILES if args.quick else FULL_FILES)
    big_mib = args.file_mib or (QUICK_BIG_MIB if args.quick else FULL_BIG_MIB)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        log(f"warning: 1-minute load average is {load_before:.2f}; other work will disturb the timings")
    with working_directory(args.tmpdir) as workdir:
        bench = Bench(workdir, args.xstore, n_files, big_mib)
        if not bench.runner.use_gnu_time:
            log(f"{GNU_TIME} is not GNU time: peak RSS comes from our own wait4 and has a floor")
        floor = bench.runner.floor_kib()
        bench.prepare(names)
        cases = bench.cases(names)
        with bench.services:
            for case in cases:
                measure(bench, case, args.runs)
            facts = machine_facts(bench, floor, load_before)
    baseline = next((c for c in cases if c.name == "command"), None)
    rows = [summarise(case, baseline if case.name != "startup" else None) for case in cases]
    report = json.dumps({"machine": facts, "runs": args.runs, "cases": rows}, indent=2)
    if args.save_json:
        Path(args.save_json).write_text(report + "\n")
    if args.json:
        print(report)
    else:
        print(markdown(facts, rows, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
