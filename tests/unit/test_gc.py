"""Garbage collection without Nix: roots of every kind, temporary roots and their protocol, liveness with
Nix's keep settings, the deletion order, deleting specific paths, invalid entries and lock files, the
trash after a crash (a real SIGKILL of a collecting process), `.links` clean-up, limits and dry runs.

What Nix 2.8 says about the same stores is compared in `tests/compat/test_gc_compat.py`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.upkeep import Spec, gc_killed_at, make_store, store_path, write_path
from xstore.casehack import CaseHackMode
from xstore.errors import InvalidPathError, StoreError, UsageError
from xstore.gc import (
    MAX_ROOT_LINE,
    TRASH_DIR,
    Action,
    GcOptions,
    add_root,
    collect_garbage,
    delete_paths,
    find_roots,
    indirect_root_name,
    roots_keeping,
)
from xstore.hashing import encode_nix32
from xstore.notices import listening
from xstore.store import LocalStore
from xstore.storepath import StorePath
from xstore.temproots import GC_SOCKET, read_temp_roots
from xstore.verify import verify

# app -> lib -> base; app's deriver app.drv (valid, refers to src); tool -> base; junk -> nothing.
SPEC: Spec = {
    "base": ({b"lib/base.so": b"base\n"}, (), None),
    "lib": ({b"lib/lib.so": b"lib\n", b"share/": b""}, ("base",), None),
    "src": ({b"": b"source\n"}, (), None),
    "app.drv": ({b"": b"Derive(...)\n"}, ("src",), None),
    "app": ({b"bin/app": b"#!/bin/sh\n", b"doc": b"->bin/app"}, ("lib", "app"), "app.drv"),
    "tool": ({b"bin/tool": b"#!/bin/sh\ntool\n"}, ("base",), None),
    "junk": ({b"": b"junk\n"}, (), None),
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "root", case_hack=CaseHackMode.OFF) as s:
        yield s


@pytest.fixture
def paths(store: LocalStore) -> dict[str, StorePath]:
    return make_store(store, SPEC)


def valid_names(store: LocalStore, paths: dict[str, StorePath]) -> set[str]:
    return {name for name, p in paths.items() if store.is_valid(p)}


def gcroot(store: LocalStore, name: str, target: str) -> Path:
    link = store.state_dir / "gcroots" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


# -- roots -------------------------------------------------------------------------------------------------


def test_roots_of_every_kind(store: LocalStore, paths: dict[str, StorePath], tmp_path: Path) -> None:
    direct = gcroot(store, "direct", paths["app"].path + "/bin/app")  # inside a path: that path
    real = gcroot(store, "deep/real", os.fsdecode(store.real_path(paths["tool"])))  # the real directory
    result = tmp_path / "result"
    assert add_root(store, result, paths["lib"]) == str(result)
    # A regular file named after a path, and a profile.
    (store.state_dir / "gcroots" / paths["src"].base).write_bytes(b"")
    profile = store.state_dir / "profiles" / "default"
    profile.parent.mkdir(parents=True)
    profile.symlink_to(paths["base"].path)
    # Not roots: an invalid path, a link to a directory (never followed), a stale indirect root.
    gcroot(store, "invalid", "/nix/store/" + "1" * 32 + "-gone")
    gcroot(store, "dir", os.fspath(tmp_path))
    stale = gcroot(store, "auto/stale", os.fspath(tmp_path / "gone"))
    roots = find_roots(store, runtime=False, temporary=False)
    assert roots == {
        paths["app"]: {str(direct)},
        paths["tool"]: {str(real)},
        paths["lib"]: {str(result)},
        paths["src"]: {str(store.state_dir / "gcroots" / paths["src"].base)},
        paths["base"]: {str(profile)},
    }
    assert not stale.is_symlink()  # removed, as Nix does in gcroots/auto


def test_add_root_as_nix(store: LocalStore, paths: dict[str, StorePath], tmp_path: Path) -> None:
    link = tmp_path / "sub" / ".." / "result"
    made = add_root(store, link, paths["app"])
    assert made == str(tmp_path / "result")
    assert os.readlink(made) == paths["app"].path
    auto = indirect_root_name(store, made)
    assert auto.name == encode_nix32(hashlib.sha1(made.encode(), usedforsecurity=False).digest())
    assert os.readlink(auto) == made
    # Again for another path: the link is replaced.
    add_root(store, made, paths["tool"])
    assert os.readlink(made) == paths["tool"].path
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StoreError, match="already exists"):
        add_root(store, tmp_path / "file", paths["app"])
    with pytest.raises(UsageError, match="in the store is forbidden"):
        add_root(store, store.real_path(paths["app"]).decode() + "-link", paths["app"])
    with pytest.raises(InvalidPathError):
        add_root(store, tmp_path / "other", store_path("missing"))


def test_runtime_root_open_file(store: LocalStore, paths: dict[str, StorePath]) -> None:
    with open(os.path.join(store.real_path(paths["junk"])), "rb"):
        if sys.platform.startswith("linux"):
            assert paths["junk"] in find_roots(store)
            collect_garbage(store, GcOptions())
            assert store.is_valid(paths["junk"])


def test_query_roots(store: LocalStore, paths: dict[str, StorePath], tmp_path: Path) -> None:
    add_root(store, tmp_path / "result", paths["app"])
    # base is in app's closure; tool is not. add_root held app as a temporary root too (while this store
    # is open), as Nix's does. (app.drv, app's deriver, would count with keep-derivations if the store
    # had its DerivationOutputs rows, which Nix writes and these synthetic stores lack.)
    expected = [(str(tmp_path / "result"), paths["app"]), (f"{{temp:{os.getpid()}}}", paths["app"])]
    for name in ("base", "lib", "app"):
        assert roots_keeping(store, [paths[name]]) == expected, name
    assert roots_keeping(store, [paths["tool"]]) == []


# -- temporary roots -----------------------------------------------------------------------------------


def test_temp_roots_file_format(store: LocalStore, paths: dict[str, StorePath]) -> None:
    store.add_temp_root(paths["tool"])
    store.add_temp_root(paths["junk"])
    store.add_temp_root(paths["tool"])  # recorded once
    name = store.state_dir / "temproots" / str(os.getpid())
    assert name.read_bytes() == f"{paths['tool']}\0{paths['junk']}\0".encode()
    fd = os.open(name, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while the store is open
    finally:
        os.close(fd)
    assert read_temp_roots(store.state_dir) == {
        paths["tool"].path: {f"{{temp:{os.getpid()}}}"},
        paths["junk"].path: {f"{{temp:{os.getpid()}}}"},
    }
    result = collect_garbage(store, GcOptions())
    assert valid_names(store, paths) == {"base", "tool", "junk"}
    assert paths["tool"].path not in result.paths
    # A second store object in this process shares the file; the last to close removes it.
    with LocalStore.open(store.root) as other:
        other.add_temp_root(paths["base"])
    assert name.exists()
    store.close()
    assert not name.exists()


def test_stale_temp_roots_file_removed(store: LocalStore, paths: dict[str, StorePath]) -> None:
    stale = store.state_dir / "temproots" / "999999999"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(paths["junk"].path.encode() + b"\0")
    fd = os.open(stale, os.O_RDONLY)
    try:
        assert read_temp_roots(store.state_dir) == {}
        assert not stale.exists()
        assert os.read(fd, 1) == b"d"  # marked for a process that opened it meanwhile, as Nix marks it
    finally:
        os.close(fd)


def test_temp_root_from_another_process_kept(store: LocalStore, paths: dict[str, StorePath]) -> None:
    script = (
        "import sys; from xstore.store import LocalStore; from xstore.storepath import parse_store_path\n"
        "s = LocalStore.open(sys.argv[1]); s.add_temp_root(parse_store_path(sys.argv[2]))\n"
        "print('ready', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(store.root), paths["app"].path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        collect_garbage(store, GcOptions())
        assert valid_names(store, paths) == {"base", "lib", "src", "app.drv", "app"}
    finally:
        child.communicate(b"")
    collect_garbage(store, GcOptions())
    assert valid_names(store, paths) == set()


def test_temp_root_sent_while_collecting(store: LocalStore, paths: dict[str, StorePath]) -> None:
    """A root added during a collection goes through the socket; a root for the path being deleted
    right now waits until that deletion is over."""
    order = collect_garbage(store, GcOptions(dry_run=True)).paths
    by_path = {p.path: p for p in paths.values()}
    first, last = by_path[order[0]], by_path[order[-1]]
    paused = threading.Event()
    go_on = threading.Event()

    def hook(step: str, name: str) -> None:
        if step == "unregister" and name == first.base:
            paused.set()
            assert go_on.wait(60)

    other = LocalStore.open(store.root)
    done: list[str] = []
    collector = threading.Thread(
        target=lambda: done.extend(collect_garbage(store, GcOptions(), hook=hook).paths), daemon=True
    )
    collector.start()
    try:
        assert paused.wait(60)
        other.add_temp_root(last)  # not being deleted: answered at once
        adder = threading.Thread(target=other.add_temp_root, args=(first,), daemon=True)
        adder.start()
        adder.join(0.5)
        assert adder.is_alive()  # waits while `first` is being deleted
        go_on.set()
        adder.join(60)
        assert not adder.is_alive()
        collector.join(60)
    finally:
        go_on.set()
        other.close()
    assert done[0] == first.path
    assert store.is_valid(last)
    assert last.path not in done
    assert len(done) == len(order) - 1


def test_roots_socket_closes_on_a_line_without_end(store: LocalStore, paths: dict[str, StorePath]) -> None:
    """Any local user may connect to the collector's socket: a line that never ends is cut off at
    `MAX_ROOT_LINE` bytes, with a notice, instead of filling the collector's memory; garbage lines are
    answered, as Nix answers them, and the collection goes on."""
    paused = threading.Event()
    go_on = threading.Event()
    first = collect_garbage(store, GcOptions(dry_run=True)).paths[0]

    def hook(step: str, name: str) -> None:
        if step == "unregister" and name == first.rpartition("/")[2]:
            paused.set()
            assert go_on.wait(60)

    heard: list[str] = []
    done: list[str] = []

    def collect() -> None:
        with listening(heard.append):
            done.extend(collect_garbage(store, GcOptions(), hook=hook).paths)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    try:
        assert paused.wait(60)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(30)
            client.connect(str(store.state_dir / GC_SOCKET))
            client.sendall(b"not a path\n")
            assert client.recv(1) == b"1"
            endless = b"x" * 4096
            closed = False
            for _ in range(2 * MAX_ROOT_LINE // len(endless)):
                try:
                    client.sendall(endless)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
            if not closed:
                assert client.recv(1) == b""  # the collector closed its end
    finally:
        go_on.set()
    collector.join(60)
    assert done[:1] == [first]
    assert [line for line in heard if "client of the garbage collector" in line] == [
        "received garbage instead of a root from a client of the garbage collector",
        f"a client of the garbage collector sent more than {MAX_ROOT_LINE} bytes without a line break; "
        "closing its connection",
    ]


# -- liveness and order ------------------------------------------------------------------------------


def test_gc_keeps_closures_and_derivers(store: LocalStore, paths: dict[str, StorePath]) -> None:
    gcroot(store, "app", paths["app"].path)
    dead = collect_garbage(store, GcOptions(Action.RETURN_DEAD)).paths
    assert dead == sorted(paths[n].path for n in ("tool", "junk"))
    live = collect_garbage(store, GcOptions(Action.RETURN_LIVE)).paths
    assert live == sorted(paths[n].path for n in ("base", "lib", "src", "app.drv", "app"))
    without = GcOptions(Action.RETURN_DEAD, keep_derivations=False)
    assert collect_garbage(store, without).paths == sorted(
        paths[n].path for n in ("tool", "junk", "src", "app.drv")
    )
    order: list[str] = []
    result = collect_garbage(store, GcOptions(), on_delete=order.append)
    assert sorted(order) == dead
    assert valid_names(store, paths) == {"base", "lib", "src", "app.drv", "app"}
    assert not os.path.lexists(store.real_path(paths["tool"]))
    assert result.paths == order
    assert verify(store, check_contents=True) == []
    assert not (store.real_store_dir / TRASH_DIR).exists()


def test_referrers_deleted_first(store: LocalStore, paths: dict[str, StorePath]) -> None:
    order: list[str] = []
    collect_garbage(store, GcOptions(), on_delete=order.append)
    assert len(order) == len(SPEC)
    for name, (_, refs, _) in SPEC.items():
        for ref in refs:
            if ref != name:
                assert order.index(paths[name].path) < order.index(paths[ref].path), (name, ref)
    assert os.listdir(store.real_store_dir) == []


def test_max_freed_and_dry_run(store: LocalStore, paths: dict[str, StorePath]) -> None:
    planned = collect_garbage(store, GcOptions(dry_run=True))
    assert valid_names(store, paths) == set(SPEC)
    assert sorted(planned.paths) == sorted(p.path for p in paths.values())
    sizes = 0
    for directory, dirs, files in os.walk(store.real_store_dir):
        sizes += sum(os.lstat(os.path.join(directory, name)).st_size for name in files)
        sizes += sum(
            os.lstat(os.path.join(directory, d)).st_size
            for d in dirs
            if os.path.islink(os.path.join(directory, d))
        )
    assert planned.bytes_freed == sizes  # files and symlinks, not directories
    first = collect_garbage(store, GcOptions(max_freed=1))
    assert len(first.paths) == 1
    assert first.bytes_freed > 1
    assert collect_garbage(store, GcOptions(max_freed=0)).paths == []
    assert len(valid_names(store, paths)) == len(SPEC) - 1


# -- deleting specific paths ---------------------------------------------------------------------------


def test_delete_refuses_naming_referrer_or_root(
    store: LocalStore, paths: dict[str, StorePath], tmp_path: Path
) -> None:
    with pytest.raises(StoreError, match=f"cannot delete '{paths['base']}': '{paths['lib']}' refers to it"):
        delete_paths(store, [paths["base"], paths["tool"]])
    assert valid_names(store, paths) == set(SPEC)
    root = gcroot(store, "result", paths["app"].path)
    with pytest.raises(StoreError, match=f"is a garbage collector root \\('{root}'\\)"):
        delete_paths(store, [paths["app"]])
    with pytest.raises(StoreError, match=f"cannot delete '{paths['lib']}': '{paths['app']}' refers to it"):
        delete_paths(store, [paths["lib"]])
    assert valid_names(store, paths) == set(SPEC)
    # With --ignore-liveness the root does not count; referrers still do.
    result = delete_paths(store, [paths["app"], paths["lib"]], ignore_liveness=True)
    assert result.paths == [paths["app"].path, paths["lib"].path]
    assert valid_names(store, paths) == set(SPEC) - {"app", "lib"}
    with pytest.raises(InvalidPathError):
        delete_paths(store, [paths["app"]])


def test_delete_unreferenced(store: LocalStore, paths: dict[str, StorePath]) -> None:
    result = delete_paths(store, [paths["tool"], paths["junk"]])
    assert sorted(result.paths) == sorted([paths["tool"].path, paths["junk"].path])
    assert valid_names(store, paths) == set(SPEC) - {"tool", "junk"}
    assert verify(store, check_contents=True) == []


# -- what else is in the store directory -------------------------------------------------------------


def test_invalid_entries_and_lock_files(store: LocalStore, paths: dict[str, StorePath]) -> None:
    gcroot(store, "all", paths["app"].path)
    gcroot(store, "tool", paths["tool"].path)
    gcroot(store, "junk", paths["junk"].path)
    leftover = store_path("leftover")  # a killed import's tree, registered by nobody
    write_path(store, leftover, {b"x": b"partial"})
    protected = store_path("protected")
    write_path(store, protected, {b"y": b"being imported"})
    store.add_temp_root(protected)
    real = os.fspath(store.real_store_dir)
    stale_lock = os.path.join(real, paths["app"].base + ".lock")
    held_lock = os.path.join(real, paths["tool"].base + ".lock")
    for lock in (stale_lock, held_lock):
        with open(lock, "wb"):
            pass
    holder = os.open(held_lock, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    nix_tmp = os.path.join(real, "tmp-123-0")
    os.mkdir(nix_tmp)
    nix_tmp_fd = os.open(nix_tmp, os.O_RDONLY)
    fcntl.flock(nix_tmp_fd, fcntl.LOCK_EX)
    os.mkdir(os.path.join(real, "add-42-0"))  # junk, as Nix deletes it
    try:
        dead = collect_garbage(store, GcOptions(Action.RETURN_DEAD)).paths
        # Invalid entries named like store paths are listed, as by Nix; other names are not.
        assert dead == sorted([leftover.path, stale_lock.replace(real, "/nix/store")])
        with store.temp_dir() as live_tmp:
            deleted = collect_garbage(store, GcOptions()).paths
            assert os.path.isdir(live_tmp)
        assert sorted(deleted) == sorted([*dead, "/nix/store/add-42-0"])
        kept = [*(p.base for p in paths.values()), protected.base, os.path.basename(held_lock), "tmp-123-0"]
        assert sorted(os.listdir(real)) == sorted(kept)
    finally:
        os.close(holder)
        os.close(nix_tmp_fd)


def test_links_cleaned(store: LocalStore, paths: dict[str, StorePath]) -> None:
    links = store.real_store_dir / ".links"
    links.mkdir()
    os.link(os.path.join(store.real_path(paths["tool"]), b"bin/tool"), links / "used")
    (links / "unused").write_bytes(b"nobody links to me")
    gcroot(store, "tool", paths["tool"].path)
    result = collect_garbage(store, GcOptions())
    assert sorted(os.listdir(links)) == ["used"]
    assert result.links_removed == 1
    assert result.links_saving is not None


# -- crashes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "count"),
    [
        ("unregister", 1),
        ("unregistered", 1),
        ("unregistered", 3),
        ("trashed", 2),
        ("unlinked", 1),
        ("removed", 4),
    ],
)
def test_sigkill_leaves_a_consistent_store(
    store: LocalStore, paths: dict[str, StorePath], step: str, count: int
) -> None:
    gcroot(store, "tool", paths["tool"].path)
    assert gc_killed_at(store.root, step, count) == -signal.SIGKILL
    # Every registered path still has its contents, unchanged; what is gone is unregistered.
    assert verify(store, check_contents=True) == []
    assert valid_names(store, paths) >= {"tool", "base"}
    collect_garbage(store, GcOptions())  # the next collection finishes the job and empties the trash
    assert valid_names(store, paths) == {"tool", "base"}
    assert sorted(os.listdir(store.real_store_dir)) == sorted([paths["tool"].base, paths["base"].base])
    assert verify(store, check_contents=True) == []


# -- the commands ---------------------------------------------------------------------------------------


def test_byte_counts_as_nix() -> None:
    from xstore.cli.gc import parse_bytes

    assert [parse_bytes(t) for t in ("0", "1000", "1K", "10M", "2G", "1T", "-5")] == [
        0, 1000, 1024, 10 << 20, 2 << 30, 1 << 40, 0,
    ]  # fmt: skip
    for text in ("10 MB", "9" * 5000, "\u0661\u0662K"):  # too many digits for int(); Arabic-Indic digits
        with pytest.raises(UsageError):
            parse_bytes(text)


def test_gc_commands(store: LocalStore, paths: dict[str, StorePath], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from xstore.cli.app import app

    root = str(store.root)
    store.close()
    runner = CliRunner()
    both = runner.invoke(app, ["gc", "--store", root, "--print-dead", "--dry-run"])
    assert both.exit_code == 2
    made = runner.invoke(app, ["add-root", "--store", root, str(tmp_path / "result"), paths["app"].path])
    assert made.exit_code == 0
    assert made.stdout == f"{tmp_path / 'result'}\n"
    dry = runner.invoke(app, ["gc", "--store", root, "--dry-run"])
    assert dry.stdout.startswith("2 store paths would be deleted, ")
    refused = runner.invoke(app, ["delete", "--store", root, paths["base"].path])
    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[-1].startswith(f"error: cannot delete '{paths['base']}': ")
    done = runner.invoke(app, ["gc", "--store", root])
    assert done.exit_code == 0
    assert done.stdout.startswith("2 store paths deleted, ")
    assert sorted(line for line in done.stderr.splitlines() if line.startswith("deleting '/")) == sorted(
        f"deleting '{paths[n]}'" for n in ("tool", "junk")
    )
