"""Read-only store mounts and private namespaces, for real, each scenario inside a throwaway mount
namespace (`unshare --mount --propagation private`), so the host's mount table is never touched: the
test itself checks that it is the same before and after.

Each scenario is a shell script run in the namespace; it prints `key=value` lines the test asserts on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import require_or_skip
from xstore.exportstream import trailer
from xstore.storepath import parse_store_path
from xstore.wire import U64, encode_strings, encode_u64

XSTORE = f"{sys.executable} -m xstore"
PLATFORM: str = sys.platform  # a plain string, so both branches are type-checked on any platform


def mountinfo(*roots: Path | str) -> list[str]:
    """The host's mount points (with their options) that these tests could have touched: anything
    under the directories they work in. (Other processes may mount elsewhere meanwhile.)"""
    prefixes = tuple(str(r) for r in roots)
    with open("/proc/self/mountinfo") as f:
        entries = [line.split(" - ")[0].split(maxsplit=4)[4] for line in f]
    return sorted(e for e in entries if e.startswith(prefixes))


pytestmark = pytest.mark.namespace


@pytest.fixture(autouse=True)
def host_mounts_untouched(tmp_path: Path) -> Iterator[None]:
    if not PLATFORM.startswith("linux"):
        pytest.skip("mount namespaces exist only on Linux")
    require_or_skip(os.geteuid() == 0, "needs root for mount namespaces")
    require_or_skip(shutil.which("unshare"), "unshare(1) not found (util-linux)")
    roots = (tmp_path, os.path.join(tempfile.gettempdir(), "xstore-ns-"))
    before = mountinfo(*roots)
    yield
    assert mountinfo(*roots) == before


def in_namespace(script: str, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "T": str(tmp_path)}
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    out = {}
    for line in proc.stdout.decode().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def export_stream(tmp_path: Path) -> Path:
    """A one-path export stream (a small regular file), made with xstore's own framing."""
    data = b"protected store\n"
    nar = encode_strings(b"nix-archive-1", b"(", b"type", b"regular", b"contents") + U64.pack(len(data))
    nar += data + bytes(-len(data) & 7) + encode_strings(b")")
    path = parse_store_path(f"/nix/store/{'1' * 32}-greeting")
    stream = tmp_path / "stream"
    stream.write_bytes(encode_u64(1) + nar + trailer(path, [], None) + encode_u64(0))
    return stream


def test_protect_keeps_flags_and_writers_get_a_private_view(tmp_path: Path) -> None:
    stream = export_stream(tmp_path)
    out = in_namespace(
        f"""
        mkdir -p $T/root/nix/store
        {XSTORE} store init --store $T/root --case-hack off > /dev/null
        mount -t tmpfs -o nosuid,nodev,size=8m tmpfs $T/root/nix/store
        {XSTORE} ro protect $T/root/nix/store > /dev/null
        {XSTORE} ro protect $T/root/nix/store > /dev/null   # idempotent
        echo "status=$({XSTORE} ro status --json $T/root/nix/store)"
        if touch $T/root/nix/store/x 2> $T/err; then echo write=ok; else echo "write=$(cat $T/err)"; fi
        echo "import=$({XSTORE} import --store $T/root -i {stream})"
        echo "after=$({XSTORE} ro status --json $T/root/nix/store)"
        echo "visible=$(ls $T/root/nix/store)"
        set +e
        {XSTORE} ro run $T/root/nix/store -- sh -c "touch $T/root/nix/store/by-ro-run && exit 7"
        echo "run_status=$?"
        set -e
        echo "created=$(ls $T/root/nix/store | tr '\\n' ' ')"
        echo "verify=$(nix-store --store $T/root --verify --check-contents 2>&1 | grep -c modified || true)"
        echo "mounts=$(grep -c "$T/root/nix/store" /proc/self/mountinfo)"
        {XSTORE} ro unprotect $T/root/nix/store > /dev/null
        echo "unprotected=$({XSTORE} ro status --json $T/root/nix/store)"
        """,
        tmp_path,
    )
    import json

    status = json.loads(out["status"])
    assert status["readOnly"] is True
    assert status["bindMount"] is True
    assert {"ro", "nosuid", "nodev"} <= set(status["options"])
    assert "Read-only file system" in out["write"]
    assert out["import"] == f"/nix/store/{'1' * 32}-greeting"
    after = json.loads(out["after"])
    assert after["readOnly"] is True  # the import's namespace changed nothing here
    assert {"nosuid", "nodev"} <= set(after["options"])
    assert out["visible"] == f"{'1' * 32}-greeting"  # same filesystem, written through the private view
    assert out["run_status"] == "7"
    assert "by-ro-run" in out["created"]
    assert out["verify"] == "0"
    assert out["mounts"] == "2"  # the tmpfs and the read-only bind on it
    unprotected = json.loads(out["unprotected"])
    assert unprotected["readOnly"] is False
    assert {"nosuid", "nodev"} <= set(unprotected["options"])


def test_plain_directory_and_status(tmp_path: Path) -> None:
    out = in_namespace(
        f"""
        mkdir -p $T/store
        echo "before=$({XSTORE} ro status $T/store)"
        {XSTORE} ro protect $T/store > /dev/null
        echo "protected=$({XSTORE} ro status $T/store)"
        echo "unprotect=$({XSTORE} ro unprotect $T/store)"
        """,
        tmp_path,
    )
    assert out["before"].startswith(f"{tmp_path}/store: writable, on the ")
    assert out["protected"].startswith(f"{tmp_path}/store: read-only, bind mount of itself")
    assert "writable" in out["unprotect"]


def test_read_only_for_another_reason_is_a_clear_error(tmp_path: Path) -> None:
    stream = export_stream(tmp_path)
    out = in_namespace(
        f"""
        mkdir -p $T/root/nix/store
        {XSTORE} store init --store $T/root --case-hack off > /dev/null
        mount -t tmpfs -o ro,size=1m tmpfs $T/root/nix/store
        set +e
        {XSTORE} import --store $T/root -i {stream} 2> $T/err
        echo "status=$?"
        echo "error=$(cat $T/err)"
        {XSTORE} ro unprotect $T/root/nix/store 2> $T/err2
        echo "unprotect_status=$?"
        echo "unprotect_error=$(cat $T/err2)"
        """,
        tmp_path,
    )
    assert out["status"] == "1"
    assert out["error"].startswith("error: ")
    assert "mounted read-only, not through a bind mount" in out["error"]
    assert out["unprotect_status"] == "1"
    assert "not through a bind mount xstore can remove" in out["unprotect_error"]


def test_non_root_gets_a_clean_error(tmp_path: Path) -> None:
    require_or_skip(shutil.which("setpriv"), "setpriv(1) not found (util-linux)")
    # A directory an unprivileged user can reach (pytest's own temporary root is private to root).
    public = Path(tempfile.mkdtemp(prefix="xstore-ns-"))
    public.chmod(0o755)
    try:
        out = in_namespace(
            f"""
        mkdir -p {public}/store
        {XSTORE} ro protect {public}/store > /dev/null
        set +e
        setpriv --reuid=65534 --regid=65534 --clear-groups {XSTORE} ro run {public}/store -- true 2> $T/err
        echo "status=$?"
        echo "error=$(cat $T/err)"
        setpriv --reuid=65534 --regid=65534 --clear-groups {XSTORE} ro protect {public} 2> $T/err2
        echo "protect_status=$?"
        echo "protect_error=$(cat $T/err2)"
        """,
            tmp_path,
        )
    finally:
        shutil.rmtree(public)
    assert out["status"] == "1", out
    assert out["error"].startswith("error: ")
    assert "\n" not in out["error"]
    assert "root" in out["error"]
    assert out["protect_status"] == "1"
    assert "needs root" in out["protect_error"]
