"""Import under stress, as real processes: concurrent imports, SIGKILL at several points, bad streams, and
a full disk (a small tmpfs in a throwaway mount namespace). After each, Nix must still verify the store.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import IN_CI, Nix, require_or_skip
from xstore.import_export import list_stream
from xstore.wire import encode_u64

XSTORE = [sys.executable, "-m", "xstore"]


@dataclass(frozen=True)
class Closure:
    """A Nix-made export stream and the paths in it (dependencies first)."""

    stream: bytes
    paths: list[str]
    big: str  # the path holding a large file


def nix_add(nix: Nix, root: Path, source: Path) -> str:
    return nix.nix_store("--store", root, "--add", source).decode().strip()


def nix_text(nix: Nix, root: Path, expr: str) -> str:
    out = nix.run(
        ["nix-instantiate", "--store", root, "--read-write-mode", "--eval", "-E", expr]
    ).stdout.decode()
    return out.strip().strip('"')


@pytest.fixture(scope="session")
def closure(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> Closure:
    base = tmp_path_factory.mktemp("nix-closure")
    root = base / "root"
    tree = base / "tree"
    (tree / "include").mkdir(parents=True)
    for name in ("xt_CONNMARK.h", "xt_connmark.h", "xt_DSCP.h", "xt_dscp.h"):
        (tree / "include" / name).write_text(f"/* {name} */\n")
    (tree / "bin").mkdir()
    (tree / "bin" / "tool").write_text("#!/bin/sh\n")
    (tree / "bin" / "tool").chmod(0o755)
    big = base / "big"
    big.mkdir()
    with open(big / "blob", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(24):
            f.write(block)
    paths = [nix_add(nix, root, tree), nix_add(nix, root, big)]
    a = nix_text(nix, root, 'builtins.toFile "a" "x"')
    b = nix_text(nix, root, 'builtins.toFile "b" "ref ${builtins.toFile "a" "x"}"')
    paths += [a, b]
    stream = nix.nix_store("--store", root, "--export", *paths)
    order = nix_export_order(stream)
    return Closure(stream, order, paths[1])


def nix_export_order(stream: bytes) -> list[str]:
    """The store paths of an export stream, in order."""
    return [e.path.path for e in list_stream(io.BytesIO(stream).read)]


def xstore_import(store: Path, stream: bytes, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*XSTORE, "import", "--store", str(store), *extra],
        input=stream,
        capture_output=True,
        timeout=300,
        check=False,
    )


def nix_verify(nix: Nix, store: Path) -> None:
    result = nix.run(
        ["nix-store", "--store", store, "--option", "use-case-hack", "true", "--verify", "--check-contents"],
        expect_success=True,
    )
    assert b"modified" not in result.stderr
    assert b"disappeared" not in result.stderr


def valid_paths(nix: Nix, store: Path) -> set[str]:
    out = nix.run(["sqlite3", store / "nix/var/nix/db/db.sqlite", "select path from ValidPaths"]).stdout
    return set(out.decode().split())


def leftovers(store: Path) -> list[str]:
    """What an import must never leave in the real store directory: temporaries and lock files."""
    real = store / "nix" / "store"
    if not real.exists():
        return []
    return sorted(n for n in os.listdir(real) if n.startswith(".xstore-") or n.endswith(".lock"))


@pytest.fixture(autouse=True)
def _sqlite3() -> None:
    require_or_skip(shutil.which("sqlite3"), "sqlite3 not found (apt-get install sqlite3)")


def test_concurrent_overlapping_imports(nix: Nix, closure: Closure, tmp_path: Path) -> None:
    store = tmp_path / "store"
    subprocess.run(
        [*XSTORE, "store", "init", "--store", str(store), "--case-hack", "on"], check=True, timeout=60
    )
    procs = [
        subprocess.Popen(
            [*XSTORE, "import", "--store", str(store)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(closure.stream, timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    count = nix.run(
        ["sqlite3", store / "nix/var/nix/db/db.sqlite", "select path, count(*) from ValidPaths group by path"]
    ).stdout.decode()
    rows = [line.split("|") for line in count.split()]
    assert sorted(r[0] for r in rows) == sorted(closure.paths)
    assert all(r[1] == "1" for r in rows)
    assert leftovers(store) == []
    nix_verify(nix, store)


def kill_after(store: Path, stream: bytes, cut: int) -> None:
    """Start an import, feed it `cut` bytes of the stream, give it time to work on them, SIGKILL it."""
    proc = subprocess.Popen(
        [*XSTORE, "import", "--store", str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(stream[:cut])
    proc.stdin.flush()
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdin.close()
    # The whole stream (its end marker included) may be imported and done before the kill: the import
    # handles each record as soon as it has arrived.
    assert proc.returncode == -signal.SIGKILL or (cut == len(stream) and proc.returncode == 0)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.97, 1.0])
def test_sigkill_leaves_a_store_nix_accepts(
    nix: Nix, closure: Closure, tmp_path: Path, fraction: float
) -> None:
    store = tmp_path / "store"
    subprocess.run(
        [*XSTORE, "store", "init", "--store", str(store), "--case-hack", "on"], check=True, timeout=60
    )
    kill_after(store, closure.stream, int(len(closure.stream) * fraction))
    nix_verify(nix, store)
    # The next run cleans up what the killed one left, and completes.
    result = xstore_import(store, closure.stream)
    assert result.returncode == 0, result.stderr.decode()
    assert valid_paths(nix, store) == set(closure.paths)
    assert leftovers(store) == []
    nix_verify(nix, store)


def bad_streams(closure: Closure) -> list[tuple[str, bytes, str]]:
    s = closure.stream
    first_trailer = s.index(b"NIXE\0\0\0\0")
    path0 = closure.paths[0].encode()
    return [
        ("truncated-in-nar", s[: first_trailer // 2], "unexpected end of file"),
        ("truncated-after-path", s[: first_trailer + 80], "unexpected end of file"),
        ("no-end-marker", s[:-8], "unexpected end of file"),
        ("wrong-magic", s.replace(b"NIXE", b"NIXF", 1), "wrong format"),
        (
            "wrong-first-number",
            encode_u64(2) + s[8:],
            "doesn't look like something created by 'nix-store --export'",
        ),
        ("corrupt-nar", s[:40] + b"X" + s[41:], "bad archive"),
        ("invalid-path-name", s.replace(path0, path0[:-1] + b"!", 1), "not a valid store path"),
    ]


@pytest.mark.parametrize(
    "case", range(7), ids=[b[0] for b in bad_streams(Closure(b"NIXE\0\0\0\0" * 20, ["/x"], ""))]
)
def test_bad_streams_leave_nothing(nix: Nix, closure: Closure, tmp_path: Path, case: int) -> None:
    _name, stream, message = bad_streams(closure)[case]
    store = tmp_path / "store"
    result = xstore_import(store, stream)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert leftovers(store) == []
    real = store / "nix" / "store"
    on_disk = {f"/nix/store/{n}" for n in os.listdir(real) if not n.startswith(".")}
    assert on_disk == valid_paths(nix, store)  # nothing unregistered lingers
    nix_verify(nix, store)


def test_missing_reference_is_refused(nix: Nix, closure: Closure, tmp_path: Path) -> None:
    # Only the path with a reference: that reference is neither valid nor in the stream.
    stream = closure.stream
    entry = next(e for e in list_stream(io.BytesIO(stream).read) if e.references)
    only_b = stream[entry.start : entry.end] + encode_u64(0)
    store = tmp_path / "store"
    result = xstore_import(store, only_b)
    assert result.returncode == 1
    assert b"is not valid" in result.stderr
    assert valid_paths(nix, store) == set()
    assert leftovers(store) == []


NAMESPACE_SCRIPT = """
import json, os, subprocess, sys
target, stream_file = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", target], check=True)
store = os.path.join(target, "store")
with open(stream_file, "rb") as f:
    result = subprocess.run(
        [sys.executable, "-m", "xstore", "import", "--store", store], stdin=f, capture_output=True
    )
real = os.path.join(store, "nix", "store")
db = os.path.join(store, "nix", "var", "nix", "db", "db.sqlite")
rows = subprocess.run(["sqlite3", db, "select path from ValidPaths"], capture_output=True)
rows = rows.stdout.decode().split()
print(json.dumps({
    "status": result.returncode,
    "stderr": result.stderr.decode(),
    "entries": sorted(os.listdir(real)),
    "valid": rows,
}))
"""


@pytest.mark.namespace
def test_full_disk_gives_a_clean_error(nix: Nix, closure: Closure, tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    require_or_skip(
        unshare and os.geteuid() == 0, "needs root and unshare(1) for a throwaway mount namespace"
    )
    stream_file = tmp_path / "stream"
    stream_file.write_bytes(closure.stream)
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
            NAMESPACE_SCRIPT,
            str(target),
            str(stream_file),
        ],
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if proc.returncode != 0 and not IN_CI and b"Operation not permitted" in proc.stderr:
        pytest.skip("mount namespaces are not permitted here")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["status"] == 1
    lines = report["stderr"].strip().splitlines()
    assert len(lines) == 1
    assert "No space left on device" in lines[0]
    # Paths before the big one are complete and valid; nothing else is there.
    stored = {f"/nix/store/{n}" for n in report["entries"] if not n.startswith(".")}
    assert stored == set(report["valid"])
    assert closure.big not in report["valid"]
    assert not [n for n in report["entries"] if n.startswith(".xstore-") or n.endswith(".lock")]
    assert os.listdir(target) == []  # the tmpfs lived only in the namespace
