"""Garbage collection side by side with Nix 2.8, and against it.

- With roots set as Nix keeps them (`nix-store --add-root`, a link in gcroots, a profile), `xstore gc`
  finds the roots Nix finds, calls live and dead what Nix calls live and dead (with Nix's keep settings,
  default and changed), and deletes exactly what `nix-store --gc --print-dead` listed; afterwards Nix's
  `--verify --check-contents` passes and its `--print-dead` is empty. The same on a store xstore wrote,
  with roots made by `xstore add-root`, where Nix's own `--gc` deletes what xstore said it would.
- `xstore delete` refuses what `nix-store --delete` refuses, and deletes what it deletes.
- Racing: an `xstore gc` after each path of a `nix-store --import` (and mid-way through one), and a
  `nix-store --gc` after each path of an `xstore import` (and while one is unpacking a NAR): both
  imports finish, and the store verifies. The same with the collectors running in a loop beside the
  import, not in step with it.
- A SIGKILL at each step of a collection leaves a store that Nix verifies, that the next collection
  (xstore's or Nix's) finishes cleaning, and whose `--print-dead` is then empty.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import Nix
from tests.nixstores import NixStore, build_nix_store
from tests.upkeep import build_chain, gc_killed_at, lines, nix_at, xstore, xstore_ok
from xstore.import_export import list_stream

LIVE_LABELS = ("dep", "text_a")  # rooted below: dep by --add-root, text_c by a profile


@pytest.fixture(scope="module")
def built(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """A store Nix built, without roots (tests work on copies)."""
    return build_nix_store(nix, tmp_path_factory.mktemp("gc-nix") / "root")


def copy_of(store: NixStore, dest: Path) -> NixStore:
    shutil.copytree(store.root, dest, symlinks=True)
    return NixStore(dest, dict(store.paths))


def nix_roots(nix: Nix, store: NixStore, tmp_path: Path) -> None:
    """Roots as Nix makes them: an indirect root (`--add-root`), a link in gcroots, a profile."""
    nix_at(nix, store, "--add-root", tmp_path / "result", "--realise", store.paths["dep"])
    gcroots = store.root / "nix" / "var" / "nix" / "gcroots" / "mine"
    gcroots.mkdir(parents=True, exist_ok=True)
    (gcroots / "tree").symlink_to(store.paths["tree"])
    profiles = store.root / "nix" / "var" / "nix" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "texts").symlink_to(store.paths["text_c"])


def nix_gc(nix: Nix, store: NixStore, *flags: str) -> list[str]:
    return lines(nix_at(nix, store, "--gc", *flags))


def xstore_gc(store: NixStore, *flags: str) -> list[str]:
    return lines(xstore_ok("gc", "--store", store.root, *flags))


def valid(store: NixStore | Path) -> set[str]:
    root = store.root if isinstance(store, NixStore) else store
    db = sqlite3.connect(f"file:{root / 'nix/var/nix/db/db.sqlite'}?mode=ro", uri=True)
    try:
        return {p for (p,) in db.execute("select path from ValidPaths")}
    finally:
        db.close()


def entries(store: NixStore) -> list[str]:
    """The store directory's entries, but `.links`."""
    return sorted(name for name in os.listdir(store.store_dir) if name != ".links")


def nix_verifies(nix: Nix, store: NixStore | Path) -> None:
    root = store.root if isinstance(store, NixStore) else store
    result = nix.run([nix.nix_store_exe, *NixStore(root, {}).store_args(), "--verify", "--check-contents"])
    for complaint in (b"modified", b"disappeared", b"error", b"warning: path"):
        assert complaint not in result.stderr, result.stderr.decode()
    assert xstore("verify", "--store", root, "--check-contents").returncode == 0


# -- the same roots, the same dead set ------------------------------------------------------------------


@pytest.mark.parametrize("keep", [[], ["keep-outputs"], ["no-keep-derivations"]])
def test_gc_deletes_what_nix_calls_dead(nix: Nix, built: NixStore, tmp_path: Path, keep: list[str]) -> None:
    store = copy_of(built, tmp_path / "root")
    nix_roots(nix, store, tmp_path)
    nix_options: list[str] = []
    mine: list[str] = []
    if "keep-outputs" in keep:
        nix_options, mine = ["--option", "keep-outputs", "true"], ["--keep-outputs"]
        # keep-outputs needs a live derivation: root out's .drv.
        (store.root / "nix" / "var" / "nix" / "gcroots" / "mine" / "drv").symlink_to(store.paths["drv"])
    if "no-keep-derivations" in keep:
        nix_options, mine = ["--option", "keep-derivations", "false"], ["--no-keep-derivations"]
    assert xstore_gc(store, "--print-roots") == nix_gc(nix, store, "--print-roots")
    dead = nix_gc(nix, store, *nix_options, "--print-dead")
    live = nix_gc(nix, store, *nix_options, "--print-live")
    assert dead
    assert set(dead) | set(live) == valid(store)
    assert xstore_gc(store, *mine, "--print-dead") == dead
    assert xstore_gc(store, *mine, "--print-live") == live
    for label in ("text_a", "dep", "out", "file"):
        path = store.paths[label]
        # Nix prints them in the order of a hash table; xstore sorted.
        expected = sorted(lines(nix_at(nix, store, *nix_options, "-q", "--roots", path)))
        assert lines(xstore_ok("query", "--store", store.root, *mine, "--roots", path)) == expected
    before = valid(store)
    result = xstore("gc", "--store", store.root, *mine)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(f"{len(dead)} store paths deleted, ")
    assert sorted(before - valid(store)) == dead
    deleted = [line[len("deleting '") : -1] for line in lines(result.stderr) if line.startswith("deleting '")]
    assert sorted(deleted) == dead
    assert entries(store) == sorted(p.split("/")[-1] for p in live)
    nix_verifies(nix, store)
    assert nix_gc(nix, store, *nix_options, "--print-dead") == []
    assert xstore_gc(store, *mine, "--print-dead") == []


def test_nix_gc_on_store_xstore_wrote(nix: Nix, built: NixStore, tmp_path: Path) -> None:
    """An xstore import with roots made by `xstore add-root`: Nix sees the same roots and the same dead
    paths, and its own --gc deletes them, leaving a store both verify."""
    closure = lines(nix_at(nix, built, "-q", "--requisites", built.paths["out"], built.paths["file"]))
    root = tmp_path / "root"
    xstore_ok("import", "--store", root, input=built.export(nix, *closure))
    store = NixStore(root, dict(built.paths))
    link = xstore_ok("add-root", "--store", root, tmp_path / "result", built.paths["dep"]).decode().strip()
    assert link == str(tmp_path / "result")
    assert os.readlink(link) == built.paths["dep"]
    assert nix_gc(nix, store, "--print-roots") == [f"{link} -> {built.paths['dep']}"]
    dead = xstore_gc(store, "--print-dead")
    assert dead == nix_gc(nix, store, "--print-dead")
    assert dead == sorted(built.paths[label] for label in ("out", "text_b", "text_c", "file"))
    printed = nix_at(nix, store, "--gc").decode()
    assert printed.startswith(f"{len(dead)} store paths deleted")
    assert valid(store) == {built.paths["dep"], built.paths["text_a"]}
    nix_verifies(nix, store)
    assert xstore_gc(store, "--print-dead") == []
    # Removing the link frees the path again, for both.
    os.unlink(link)
    assert xstore_gc(store, "--print-dead") == nix_gc(nix, store, "--print-dead") == sorted(valid(store))


def test_delete_as_nix(nix: Nix, built: NixStore, tmp_path: Path) -> None:
    mine = copy_of(built, tmp_path / "mine")
    theirs = copy_of(built, tmp_path / "theirs")
    for store in (mine, theirs):
        nix_at(nix, store, "--add-root", tmp_path / f"{store.root.name}-result", "-r", store.paths["tree"])
    for labels in (["text_a"], ["tree"], ["out"], ["out", "text_c", "text_b"]):
        paths = [built.paths[label] for label in labels]
        argv = [nix.nix_store_exe, *(os.fsdecode(a) for a in theirs.store_args()), "--delete", *paths]
        nix_says = subprocess.run(argv, env=dict(nix.env), capture_output=True, check=False)
        result = xstore("delete", "--store", mine.root, *paths)
        assert result.returncode == (0 if nix_says.returncode == 0 else 1), (labels, result.stderr)
        assert valid(mine) == valid(theirs), labels
        if result.returncode:
            assert lines(result.stderr)[-1].startswith("error: cannot delete '"), result.stderr
        else:
            assert result.stdout == nix_says.stdout
    nix_verifies(nix, mine)


# -- racing an import -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], bytes]:
    """A chain of 6 text paths (each refers to the one before) and Nix's export of it."""
    root = tmp_path_factory.mktemp("gc-chain") / "root"
    paths = build_chain(nix, root, 6)
    return paths, nix_at(nix, root, "--export", *paths)


def wait_until_valid(root: Path, path: str, process: subprocess.Popen[bytes]) -> None:
    """Wait (up to a minute) until `path` is valid in the store at `root`, or the process has ended."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (root / "nix/var/nix/db/db.sqlite").exists() and path in valid(root):
            return
        if process.poll() is not None:
            raise AssertionError(
                f"the import ended early: {process.stderr.read() if process.stderr else b''!r}"
            )
        time.sleep(0.02)
    raise AssertionError(f"'{path}' did not become valid")


def wait_for(condition: Callable[[], bool]) -> None:
    """Wait (up to a minute) until `condition()` holds."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "waited a minute in vain"
        time.sleep(0.01)


def records(stream: bytes) -> tuple[list[bytes], bytes]:
    """The export stream cut into each path's record, and the closing 0 (which ends the import)."""
    ends = list_stream(io.BytesIO(stream).read)
    cuts = [0, *(end.end for end in ends)]
    return [stream[a:b] for a, b in itertools.pairwise(cuts)], stream[cuts[-1] :]


def in_step(
    importer: list[str],
    collector: list[str],
    root: Path,
    chain: tuple[list[str], bytes],
    *,
    split: bool,
    unpacks: bool = False,
) -> bytes:
    """Feed the chain's export to `importer` a record at a time and run `collector` to completion after
    each path is valid; with `split`, also with half of the next record sent (a NAR being unpacked).
    Returns what the importer printed."""
    paths, stream = chain
    process = subprocess.Popen(
        importer, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None
    parts, closing = records(stream)
    for path, record in zip(paths, parts, strict=True):
        half = len(record) // 2 if split else len(record)
        process.stdin.write(record[:half])
        process.stdin.flush()
        if split:
            if unpacks:
                # xstore unpacks a NAR as it arrives (Nix 2.8 buffers it): wait until it is at it.
                wait_for(lambda: any(n.endswith("-xstore-tmp") for n in os.listdir(root / "nix" / "store")))
            subprocess.run(collector, check=True, capture_output=True)
            process.stdin.write(record[half:])
            process.stdin.flush()
        wait_until_valid(root, path, process)
        subprocess.run(collector, check=True, capture_output=True)
    # Everything imported so far is still there: each collection kept the importer's temporary roots.
    assert set(paths) <= valid(root)
    out, err = process.communicate(closing, timeout=120)
    assert process.returncode == 0, err
    return out


def nix_argv(nix: Nix, root: Path, *args: str) -> list[str]:
    return [nix.nix_store_exe, *(os.fsdecode(a) for a in NixStore(root, {}).store_args()), *args]


XSTORE = [sys.executable, "-X", "dev", "-bb", "-W", "error", "-m", "xstore"]


@pytest.mark.parametrize("split", [False, True], ids=["between-paths", "mid-nar"])
def test_xstore_gc_beside_nix_import(
    nix: Nix, chain: tuple[list[str], bytes], tmp_path: Path, split: bool
) -> None:
    root = tmp_path / "root"
    nix_at(nix, root, "--init")
    printed = in_step(
        nix_argv(nix, root, "--import"), [*XSTORE, "gc", "--store", str(root)], root, chain, split=split
    )
    assert lines(printed) == chain[0]
    nix_verifies(nix, root)
    # The import is over: its temporary roots are gone, and the chain is garbage.
    assert sorted(xstore_gc(NixStore(root, {}), "--print-dead")) == sorted(chain[0])


@pytest.mark.parametrize("split", [False, True], ids=["between-paths", "mid-nar"])
def test_nix_gc_beside_xstore_import(
    nix: Nix, chain: tuple[list[str], bytes], tmp_path: Path, split: bool
) -> None:
    root = tmp_path / "root"
    nix_at(nix, root, "--init")
    importer = [*XSTORE, "import", "--store", str(root)]
    printed = in_step(importer, nix_argv(nix, root, "--gc"), root, chain, split=split, unpacks=True)
    assert lines(printed) == chain[0]
    nix_verifies(nix, root)
    assert sorted(nix_gc(nix, NixStore(root, {}), "--print-dead")) == sorted(chain[0])
    assert [n for n in os.listdir(root / "nix" / "store") if "xstore" in n] == []


@contextlib.contextmanager
def looping(argv: list[str]) -> Iterator[list[subprocess.CompletedProcess[bytes]]]:
    """Run `argv` again and again in the background while the block runs; yields the runs so far."""
    runs: list[subprocess.CompletedProcess[bytes]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            runs.append(subprocess.run(argv, capture_output=True, check=False, timeout=120))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield runs
    finally:
        stop.set()
        thread.join()


def slowly(importer: list[str], stream: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run `importer` on `stream`, fed in small pieces with pauses, so that collections overlap it."""
    process = subprocess.Popen(
        importer, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None
    for at in range(0, len(stream), 16384):
        process.stdin.write(stream[at : at + 16384])
        process.stdin.flush()
        time.sleep(0.01)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(importer, process.returncode, out, err)


@pytest.mark.parametrize("who", ["xstore-gc-nix-import", "nix-gc-xstore-import", "xstore-gc-xstore-import"])
def test_gc_loop_beside_import(nix: Nix, chain: tuple[list[str], bytes], tmp_path: Path, who: str) -> None:
    root = tmp_path / "root"
    nix_at(nix, root, "--init")
    collector = (
        nix_argv(nix, root, "--gc") if who.startswith("nix-gc") else [*XSTORE, "gc", "--store", str(root)]
    )
    importer = (
        nix_argv(nix, root, "--import")
        if who.endswith("nix-import")
        else [*XSTORE, "import", "--store", str(root)]
    )
    with looping(collector) as runs:
        imported = slowly(importer, chain[1])
        while len(runs) < 2:  # at least one collection started after the import
            time.sleep(0.05)
    assert imported.returncode == 0, imported.stderr
    assert lines(imported.stdout) == chain[0]
    assert [r.returncode for r in runs] == [0] * len(runs), [r.stderr for r in runs if r.returncode]
    nix_verifies(nix, root)


# -- killed while collecting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "count", "then"),
    [
        ("unregister", 2, "xstore"),
        ("unregistered", 1, "nix"),
        ("unregistered", 3, "xstore"),
        ("trashed", 2, "nix"),
        ("unlinked", 3, "xstore"),
        ("unlinked", 5, "nix"),
        ("removed", 2, "xstore"),
    ],
)
def test_sigkill_during_gc(
    nix: Nix, built: NixStore, tmp_path: Path, step: str, count: int, then: str
) -> None:
    store = copy_of(built, tmp_path / "root")
    nix_roots(nix, store, tmp_path)
    dead = nix_gc(nix, store, "--print-dead")
    assert gc_killed_at(store.root, step, count) == -signal.SIGKILL
    nix_verifies(nix, store)
    gone = set(dead) - valid(store)
    assert gone  # the collection got somewhere before it was killed
    # Left behind: what was still to go, perhaps the lock file of the path at hand, the trash (which
    # Nix 2.8's --print-dead deletes on the way, as it deletes anything not named like a store path).
    leftovers = {*dead, *(p + ".lock" for p in dead), "/nix/store/.xstore-trash"}
    assert set(nix_gc(nix, store, "--print-dead")) <= leftovers
    if then == "nix":
        nix_at(nix, store, "--gc")
    else:
        xstore_ok("gc", "--store", store.root)
    assert nix_gc(nix, store, "--print-dead") == []
    assert valid(store) == valid(built) - set(dead)
    assert entries(store) == sorted(p.split("/")[-1] for p in valid(store))
    nix_verifies(nix, store)
