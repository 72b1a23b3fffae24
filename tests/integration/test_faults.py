"""Faults that need real processes, signals or filesystems: a store on a folding filesystem (the casefold
layer, as on a Mac), a database another process holds, closed standard streams, killed restores,
mount points that are not ours to use, a full disk (in a throwaway mount namespace)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import IN_CI, require_or_skip
from tests.integration.fusehelpers import XSTORE, mounted, xstore
from tests.localstores import add_path, export_bytes, sp
from tests.narbuild import archive, directory, regular
from xstore.casehack import CaseHackMode
from xstore.fsops import is_staging_name
from xstore.store import LocalStore

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "nix-fixtures"


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    assert "Traceback" not in lines[0]
    return lines[0]


# -- a store on a folding filesystem -------------------------------------------------------------------------


@pytest.mark.fuse
def test_names_that_fold_together_never_replace_a_valid_path(fuse_here: None, tmp_path: Path) -> None:
    """`<h>-Hello-2.12` is valid; a stream holding `<h>-hello-2.12` (the same hash part, a name that differs
    only in case) must be refused, with the first left exactly as it was."""
    upper, lower = sp("h1", "Hello-2.12"), sp("h1", "hello-2.12")
    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as src:
        add_path(src, upper, {b"bin/hello": b"#!/bin/sh\necho good\n"})
        add_path(src, lower, {b"bin/hello": b"#!/bin/sh\necho evil\n"})
        first, second = export_bytes(src, [upper]), export_bytes(src, [lower])
    (tmp_path / "first").write_bytes(first)
    (tmp_path / "second").write_bytes(second)
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    with mounted(["casefold", backing, mnt, "--model", "apfs"], mnt):
        root = mnt / "root"
        ok = xstore("import", "--store", root, "-i", tmp_path / "first")
        assert ok.returncode == 0, ok.stderr
        refused = xstore("import", "--store", root, "-i", tmp_path / "second")
        assert refused.returncode == 1
        assert "folds case" in one_line_error(refused)
        with LocalStore.open(root) as store:
            assert store.all_paths() == [upper]
        check = xstore("verify", "--store", root, "--check-contents")
        assert check.returncode == 0, check.stderr
        exported = subprocess.run(
            [*XSTORE, "export", "--store", root, upper.path], capture_output=True, check=True
        ).stdout
        assert exported == first
        assert (
            b"echo good" in (backing / "root" / "nix" / "store" / upper.base / "bin" / "hello").read_bytes()
        )


@pytest.mark.fuse
def test_restore_without_the_hack_onto_a_folding_filesystem_never_overwrites(
    fuse_here: None, tmp_path: Path
) -> None:
    """With the case hack off, the second spelling must fail on O_EXCL, never replace the first."""
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    nar = tmp_path / "two.nar"
    nar.write_bytes(archive(directory((b"A", regular(b"first")), (b"a", regular(b"second")))))
    with mounted(["casefold", backing, mnt, "--model", "ascii"], mnt):
        for source in (nar, FIXTURES / "case.nar"):  # two files; then directories (case.nar's /x)
            result = xstore("nar", "restore", mnt / "out", "-i", source, "--case-hack", "off")
            assert result.returncode == 1
            assert "already exists" in one_line_error(result)
            assert os.listdir(mnt) == []


# -- waits ---------------------------------------------------------------------------------------------------


def _stream(tmp_path: Path) -> Path:
    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as src:
        add_path(src, sp("w1", "waiting"), {b"f": b"x"})
        data = export_bytes(src, [sp("w1", "waiting")])
    path = tmp_path / "stream"
    path.write_bytes(data)
    return path


def _read_until(proc: subprocess.Popen[bytes], needle: bytes, seconds: float) -> bytes:
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + seconds
    while needle not in seen and time.monotonic() < deadline:
        chunk = proc.stderr.read()
        if chunk:
            seen += chunk
        time.sleep(0.02)
    return seen


@pytest.mark.parametrize("end", ["released", "interrupted"])
def test_a_busy_database_is_waited_for_audibly_and_interruptibly(tmp_path: Path, end: str) -> None:
    root = tmp_path / "root"
    LocalStore.create(root, case_hack=CaseHackMode.OFF).close()
    stream = _stream(tmp_path)
    holder = sqlite3.connect(root / "nix" / "var" / "nix" / "db" / "db.sqlite", isolation_level=None)
    holder.execute("begin exclusive")
    try:
        with subprocess.Popen(
            [*XSTORE, "import", "--store", str(root), "-i", str(stream)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            try:
                said = _read_until(proc, b"waiting for the database", 20)
                assert b"waiting for the database of the store at" in said, said
                assert proc.poll() is None
                if end == "released":
                    holder.execute("commit")
                    assert proc.wait(timeout=30) == 0
                else:
                    # Stopped while the database is still held: the wait polls (a blocking SQLite wait
                    # of up to an hour would outlast the 30 s here). No bound in seconds below that:
                    # a loaded machine may take a few to deliver the signal and unwind.
                    proc.send_signal(signal.SIGINT)
                    assert proc.wait(timeout=30) == 130
                    holder.execute("commit")
            finally:
                if proc.poll() is None:
                    proc.kill()
    finally:
        holder.close()
    with LocalStore.open(root) as store:
        assert store.all_paths() == ([sp("w1", "waiting")] if end == "released" else [])
    assert [
        n for n in os.listdir(root / "nix" / "store") if n.startswith(".") or n.endswith("-xstore-tmp")
    ] == []


def test_a_fifo_as_input_says_what_it_waits_for(tmp_path: Path) -> None:
    fifo = tmp_path / "in.nar"
    os.mkfifo(fifo)
    with subprocess.Popen(
        [*XSTORE, "nar", "restore", str(tmp_path / "out"), "-i", str(fifo)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            said = _read_until(proc, b"FIFO", 20)
            assert b"waiting for a writer on the FIFO" in said, said
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    assert sorted(os.listdir(tmp_path)) == ["in.nar"]


# -- closed standard streams ---------------------------------------------------------------------------------


def run_closed(argv: list[str], close: int) -> subprocess.CompletedProcess[bytes]:
    """Run xstore with standard input (0) or output (1) closed, as `<&-` and `>&-` do."""
    script = f"import os, sys; os.close({close}); os.execv(sys.argv[1], sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", script, *XSTORE, *argv],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE if close != 1 else None,
        timeout=120,
        check=False,
    )


def test_closed_standard_streams_give_one_line(tmp_path: Path) -> None:
    """The eleven commands that once ended in a traceback with a closed stdin or stdout."""
    nar = FIXTURES / "simple.nar"
    root = tmp_path / "root"
    stream = _stream(tmp_path)
    ok = xstore("import", "--store", root, "-i", stream)
    assert ok.returncode == 0, ok.stderr
    path = sp("w1", "waiting").path
    (tmp_path / "f").write_bytes(b"x")
    cases: list[tuple[list[str], int, str]] = [
        (["nar", "dump", str(tmp_path / "f")], 1, "standard output is closed"),
        (["nar", "ls", str(nar)], 1, "standard output is closed"),
        (["nar", "cat", str(nar), "/foo/bar"], 1, "path '/foo/bar' does not exist in the NAR"),
        (["nar", "cat", str(nar), "/hello"], 1, "standard output is closed"),
        (["hash", "file", str(tmp_path / "f")], 1, "standard output is closed"),
        (["export", "--store", str(root), path], 1, "standard output is closed"),
        (["path-info", "--store", str(root), path], 1, "standard output is closed"),
        (["verify", "--store", str(root), "--json"], 1, "standard output is closed"),
        (["nar", "restore", str(tmp_path / "r1"), "--json", "-i", str(nar)], 1, "standard output is closed"),
        (["nar", "restore", str(tmp_path / "r2")], 0, "standard input is closed"),
        (["import", "--store", str(tmp_path / "i1")], 0, "standard input is closed"),
        (["import", "--store", str(tmp_path / "i2"), "-i", str(stream)], 1, "standard output is closed"),
    ]
    for argv, closed, message in cases:
        result = run_closed(argv, closed)
        assert result.returncode == 1, (argv, result.stderr)
        assert one_line_error(result) == f"error: {message}", argv
    # Nothing was begun that could not be reported.
    assert not (tmp_path / "r1").exists()
    assert not (tmp_path / "r2").exists()
    assert (
        not (tmp_path / "i2" / "nix" / "store").exists()
        or os.listdir(tmp_path / "i2" / "nix" / "store") == []
    )


def test_import_stops_cleanly_between_paths_when_output_goes_away(tmp_path: Path) -> None:
    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as src:
        paths = [sp(f"p{i}", f"path{i}") for i in range(4)]
        for p in paths:
            add_path(src, p, {b"f": p.name.encode() * 1000})
        data = export_bytes(src, paths)
    root = tmp_path / "root"
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first path printed meets a broken pipe
    proc = subprocess.run(
        [*XSTORE, "import", "--store", str(root)],
        input=data,
        stdout=writer,
        stderr=subprocess.PIPE,
        timeout=120,
        check=False,
    )
    os.close(writer)
    line = one_line_error(proc)
    assert "standard output went away after '/nix/store/" in line
    assert "the rest of the stream was not imported" in line
    with LocalStore.open(root) as store:
        valid = store.all_paths()
    assert len(valid) == 1  # exactly the path before the error, complete
    assert valid[0].path in line


# -- killed restores -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL])
def test_killed_restores_leave_nothing_for_long(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGHUP unwinds like SIGTERM (nothing left); after SIGKILL, the next restore into the same
    directory removes what the killed one left."""
    fifo = tmp_path / "in.nar"
    os.mkfifo(fifo)
    parent = tmp_path / "out"
    parent.mkdir()
    proc = subprocess.Popen(
        [*XSTORE, "nar", "restore", str(parent / "tree"), "-i", str(fifo)], stdin=subprocess.DEVNULL
    )
    big = archive(directory((b"a", regular(b"x" * (4 << 20))), (b"b", regular(b"y"))))
    with open(fifo, "wb") as f:
        f.write(big[: len(big) - 100])  # most of it: the restore is well under way, waiting for the rest
        f.flush()
        deadline = time.monotonic() + 30
        while not any(is_staging_name(os.fsencode(n)) for n in os.listdir(parent)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(sig)
        proc.wait(timeout=30)
    left = os.listdir(parent)
    if sig == signal.SIGHUP:
        assert proc.returncode == 130
        assert left == []
        return
    assert len(left) == 1
    old = time.time() - 3600
    os.utime(parent / left[0], (old, old))
    ok = xstore("nar", "restore", parent / "again", "-i", FIXTURES / "simple.nar")
    assert ok.returncode == 0, ok.stderr
    assert os.listdir(parent) == ["again"]


# -- mount points --------------------------------------------------------------------------------------------


@pytest.mark.fuse
def test_mounting_over_a_nonempty_directory_needs_nonempty(fuse_here: None, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "mine").write_bytes(b"keep")
    refused = xstore("mount", "nar", FIXTURES / "simple.nar", mnt)
    assert refused.returncode == 1
    assert "is not empty" in one_line_error(refused)
    with mounted(["nar", FIXTURES / "simple.nar", mnt, "--nonempty"], mnt):
        assert "mine" not in os.listdir(mnt)
    assert (mnt / "mine").read_bytes() == b"keep"


OTHER_FUSE = """
import sys, pyfuse3, trio
class Empty(pyfuse3.Operations):
    pass
pyfuse3.init(Empty(), sys.argv[1], {"fsname=other", "subtype=other"})
print("ready", flush=True)
try:
    trio.run(pyfuse3.main)
finally:
    pyfuse3.close(unmount=True)
"""


@pytest.mark.fuse
def test_umount_refuses_what_xstore_did_not_mount(fuse_here: None, tmp_path: Path) -> None:
    result = xstore("umount", "/proc")
    assert result.returncode == 1
    assert "is not one of xstore's filesystems (it is proc)" in one_line_error(result)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with subprocess.Popen(
        [sys.executable, "-c", OTHER_FUSE, str(mnt)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    ) as other:
        try:
            assert other.stdout is not None
            assert other.stdout.readline() == b"ready\n"
            result = xstore("umount", mnt)
            assert result.returncode == 1
            assert "is not one of xstore's filesystems (it is fuse.other)" in one_line_error(result)
        finally:
            other.send_signal(signal.SIGINT)
            try:
                stopped = other.wait(timeout=30) == 0
            except subprocess.TimeoutExpired:
                other.kill()  # never wait for ever: the test fails, and the mount goes below
                other.wait()
                stopped = False
            if not stopped:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


# -- a full disk ---------------------------------------------------------------------------------------------

FULL_DISK_SCRIPT = """
import json, os, subprocess, sys
target, xstore = sys.argv[1], sys.argv[2:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", target], check=True)
root = os.path.join(target, "root")
subprocess.run([*xstore, "store", "init", "--store", root], check=True, capture_output=True)
with open(os.path.join(target, "fill"), "wb") as f:
    try:
        while True:
            f.write(bytes(65536))
    except OSError:
        pass
results = {}
for name, argv in {
    "verify": ["verify", "--store", root, "--check-contents"],
    "path-info": ["path-info", "--store", root, "/nix/store/" + "0" * 32 + "-x"],
}.items():
    r = subprocess.run([*xstore, *argv], capture_output=True)
    results[name] = [r.returncode, r.stderr.decode()]
print(json.dumps(results))
"""


@pytest.mark.namespace
def test_readers_work_on_a_full_disk(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    require_or_skip(
        unshare and os.geteuid() == 0, "needs root and unshare(1) for a throwaway mount namespace"
    )
    target = tmp_path / "small"
    target.mkdir()
    proc = subprocess.run(
        [
            str(unshare),
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            FULL_DISK_SCRIPT,
            str(target),
            *XSTORE,
        ],
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if proc.returncode != 0 and not IN_CI and b"Operation not permitted" in proc.stderr:
        pytest.skip("mount namespaces are not permitted here")
    assert proc.returncode == 0, proc.stderr.decode()
    results = json.loads(proc.stdout)
    assert results["verify"] == [0, ""]
    status, stderr = results["path-info"]
    assert status == 1
    assert "is not valid in the store" in stderr
    assert "disk I/O error" not in stderr
    assert os.listdir(target) == []
