"""`xstore copy` to and from a real `nix-daemon` (Nix 2.8): `unix://SOCKET`, `daemon`, and `ssh-ng://`.

The test starts `nix-daemon --store ROOT` on a chroot store, with `NIX_DAEMON_SOCKET_PATH` in its
temporary directory and `build-users-group =` in its configuration (it runs as root without build users),
and stops it at the end; `ssh-ng://` runs `nix-daemon --stdio` through a fake `ssh`. In every direction
what arrived exports byte for byte as the original and Nix verifies the contents; the daemon's signature
check applies unless `--no-check-sigs`, and its refusal is one line; a temporary root added through the
connection holds against Nix's garbage collector until the connection closes; path infos read through
the daemon are what Nix reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Nix
from tests.nixstores import NixStore, build_case_closure, build_nix_store
from tests.remotes import fake_ssh, path_with, run_xstore, ssh_log, xstore_ok
from xstore.errors import InvalidPathError
from xstore.storepath import parse_store_path
from xstore.stores import open_store


@pytest.fixture(scope="module")
def src(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    return build_nix_store(nix, tmp_path_factory.mktemp("daemon-src") / "root")


@pytest.fixture(scope="module")
def case_src(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    return build_case_closure(nix, tmp_path_factory.mktemp("daemon-case") / "root")


class Daemon:
    def __init__(self, root: Path, socket: Path, env: dict[str, str]) -> None:
        self.root = root
        self.socket = socket
        self.env = env

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


@pytest.fixture
def daemon(nix: Nix, tmp_path: Path) -> Iterator[Daemon]:
    """A `nix-daemon --store ROOT` of its own, listening on `tmp_path/d.sock`; stopped after the test."""
    conf = tmp_path / "daemon-conf"
    conf.mkdir()
    (conf / "nix.conf").write_text("sandbox = false\nsubstituters =\nbuild-users-group =\n")
    socket = tmp_path / "d.sock"
    env = dict(nix.env)
    env.update(NIX_CONF_DIR=str(conf), NIX_DAEMON_SOCKET_PATH=str(socket))
    root = tmp_path / "daemon-root"
    root.mkdir()
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(nix.nix_store_exe), "nix-daemon"), "--store", str(root)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not socket.exists():
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, "nix-daemon did not create its socket within 60 s"
            time.sleep(0.05)
        yield Daemon(root, socket, env)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def closure_export(nix: Nix, store: NixStore, label: str) -> bytes:
    return store.export(nix, *store.query_requisites(nix, label))


def test_copy_to_a_daemon_and_back(nix: Nix, src: NixStore, daemon: Daemon, tmp_path: Path) -> None:
    out = src.paths["out"]
    printed = xstore_ok("copy", "--no-check-sigs", "--from", src.root, "--to", daemon.url, "-r", out)
    assert printed.decode().split() == src.query_requisites(nix, "out")
    served = NixStore(daemon.root, dict(src.paths))
    served.verify(nix)
    assert closure_export(nix, served, "out") == closure_export(nix, src, "out")

    local = tmp_path / "local"
    xstore_ok("copy", "--no-check-sigs", "--from", daemon.url, "--to", local, "-r", out)
    assert xstore_ok("export", "--store", local, "-r", out) == closure_export(nix, src, "out")
    NixStore(local, dict(src.paths)).verify(nix)


def test_a_modified_source_path_cuts_the_stream_after_the_paths_before_it(
    nix: Nix, src: NixStore, daemon: Daemon, tmp_path: Path
) -> None:
    """Many paths go to the daemon in one AddMultipleToStore stream. A path whose contents no longer
    match its registration is cut off there: the paths sent before it are added (and printed), it and
    the ones after it are not, and the daemon's store checks out."""
    local = tmp_path / "local"
    out = src.paths["out"]
    xstore_ok("copy", "--from", src.root, "--to", local, "-r", out)
    modified = local / src.paths["text_c"].lstrip("/")
    modified.chmod(0o644)
    modified.write_bytes(modified.read_bytes() + b"changed\n")
    modified.chmod(0o444)
    result = run_xstore("copy", "--no-check-sigs", "--from", local, "--to", daemon.url, "-r", out)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert f"path '{src.paths['text_c']}' was modified" in lines[0]
    printed = result.stdout.decode().split()
    order = src.query_requisites(nix, "out")
    assert printed == order[: order.index(src.paths["text_c"])]
    assert printed, "the closure's order should put paths before text_c"

    def valid(path: str) -> bool:
        argv = [nix.nix_store_exe, "--store", str(daemon.root), "--option", "build-users-group", ""]
        argv += ["-q", "--hash", path]
        found = subprocess.run(argv, env=dict(nix.env), capture_output=True, check=False, timeout=60)
        return found.returncode == 0

    assert [p for p in order if valid(p)] == printed
    NixStore(daemon.root, dict(src.paths)).verify(nix)
    # The daemon is still there for the rest, once the path is whole again.
    modified.chmod(0o644)
    modified.write_bytes(modified.read_bytes().removesuffix(b"changed\n"))
    xstore_ok("copy", "--no-check-sigs", "--from", local, "--to", daemon.url, "-r", out)
    assert [p for p in order if valid(p)] == order


def test_the_daemon_checks_signatures_unless_told_not_to(
    nix: Nix, src: NixStore, daemon: Daemon, tmp_path: Path
) -> None:
    # Content-addressed paths need no signature.
    xstore_ok("copy", "--from", src.root, "--to", daemon.url, "-r", src.paths["text_c"])
    result = run_xstore(
        "copy", "--from", src.root, "--to", daemon.url, src.paths["file"], src.paths["dep"], "-r"
    )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    dep = src.paths["dep"]
    peer = f"the Nix daemon at '{daemon.socket}'"
    assert lines == [f"error: {peer}: cannot add path '{dep}' because it lacks a valid signature"]
    assert not (daemon.root / dep.lstrip("/")).exists()
    assert nix.nix_store_fails(
        "--store", daemon.root, "--option", "build-users-group", "", "-q", "--hash", dep
    )
    xstore_ok("copy", "--no-check-sigs", "--from", src.root, "--to", daemon.url, dep)
    NixStore(daemon.root, dict(src.paths)).verify(nix)


def test_daemon_url_and_path_infos(nix: Nix, src: NixStore, daemon: Daemon) -> None:
    xstore_ok("copy", "--no-check-sigs", "--from", src.root, "--to", daemon.url, "-r", src.paths["out"])
    env = dict(os.environ, NIX_DAEMON_SOCKET_PATH=str(daemon.socket))
    ours = json.loads(xstore_ok("path-info", "--json", "-r", "--store", "daemon", src.paths["out"], env=env))
    theirs = {
        i["path"]: i for i in NixStore(daemon.root, dict(src.paths)).path_info(nix, "out", recursive=True)
    }
    assert sorted(ours) == sorted(theirs)
    for path, info in ours.items():
        for field in ("narHash", "narSize", "references", "deriver", "ca", "registrationTime", "ultimate"):
            assert info[field] == theirs[path].get(field, False if field == "ultimate" else None), (
                path,
                field,
            )
        assert info["signatures"] == theirs[path].get("signatures", [])


def test_case_hacked_store_to_and_from_a_daemon(
    nix: Nix, case_src: NixStore, daemon: Daemon, tmp_path: Path
) -> None:
    out = case_src.paths["out"]
    hacked = tmp_path / "hacked"
    xstore_ok("store", "init", "--store", hacked, "--case-hack", "on")
    xstore_ok("copy", "--from", case_src.root, "--to", hacked, "-r", out)
    xstore_ok("copy", "--no-check-sigs", "--from", hacked, "--to", daemon.url, "-r", out)
    served = NixStore(daemon.root, dict(case_src.paths))
    served.verify(nix)
    assert closure_export(nix, served, "out") == closure_export(nix, case_src, "out")
    again = tmp_path / "again"
    xstore_ok("store", "init", "--store", again, "--case-hack", "on")
    xstore_ok("copy", "--no-check-sigs", "--from", daemon.url, "--to", again, "-r", out)
    assert "ReadMe~nix~case~hack~1" in os.listdir(again / case_src.paths["tree"].lstrip("/"))
    assert xstore_ok("export", "--store", again, "-r", out) == closure_export(nix, case_src, "out")


def test_ssh_ng_to_and_from_nix_daemon_stdio(nix: Nix, src: NixStore, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_ssh(bin_dir)
    env = dict(nix.env)
    env.update(
        PATH=path_with(bin_dir), FAKE_SSH_LOG=str(tmp_path / "ssh.log"), NIX_CONFIG="build-users-group ="
    )
    remote = tmp_path / "remote"
    url = f"ssh-ng://fakehost?remote-store={remote}"
    out = src.paths["out"]
    xstore_ok("copy", "--no-check-sigs", "--from", src.root, "--to", url, "-r", out, env=env)
    (argv,) = ssh_log(tmp_path / "ssh.log")
    assert argv == ["fakehost", "-x", "-a", f"nix-daemon --stdio --store '{remote}'"]
    got = NixStore(remote, dict(src.paths))
    got.verify(nix)
    assert closure_export(nix, got, "out") == closure_export(nix, src, "out")
    local = tmp_path / "local"
    xstore_ok("copy", "--no-check-sigs", "--from", url, "--to", local, "-r", out, env=env)
    assert xstore_ok("export", "--store", local, "-r", out) == closure_export(nix, src, "out")
    NixStore(local, dict(src.paths)).verify(nix)


def test_temporary_roots_hold_while_the_connection_lasts(nix: Nix, src: NixStore, daemon: Daemon) -> None:
    xstore_ok("copy", "--from", src.root, "--to", daemon.url, src.paths["file"])
    file = parse_store_path(src.paths["file"])
    store_args = ["--store", str(daemon.root), "--option", "build-users-group", ""]
    with open_store(daemon.url) as store:
        store.add_temp_root(file)
        refused = nix.nix_store_fails(*store_args, "--delete", file.path)
        assert "since it is still alive" in refused
    # The daemon's worker for the connection has exited: the root is gone with it.
    deadline = time.monotonic() + 30
    while True:
        result = subprocess.run(
            [nix.nix_store_exe, *store_args, "--delete", file.path],
            env=dict(nix.env),
            capture_output=True,
            timeout=120,
            check=False,
        )
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert result.returncode == 0, result.stderr
    assert not (daemon.root / file.path.lstrip("/")).exists()


def test_closure_queries_are_pipelined_and_stay_in_step(nix: Nix, src: NixStore, daemon: Daemon) -> None:
    """A closure's path infos go to the daemon a level at a time, the requests together; a path the
    daemon lacks is refused after all the answers of its batch are read, so the connection goes on."""
    xstore_ok("copy", "--no-check-sigs", "--from", src.root, "--to", daemon.url, "-r", src.paths["out"])
    missing = parse_store_path("/nix/store/" + "0" * 32 + "-missing")
    out = parse_store_path(src.paths["out"])
    with open_store(daemon.url) as store:
        with pytest.raises(InvalidPathError, match=f"path '{missing}' is not valid"):
            store.query_closure([parse_store_path(src.paths["text_a"]), missing])
        closure = store.query_closure([out])
        assert sorted(p.path for p in closure) == sorted(src.query_requisites(nix, "out"))
        served = NixStore(daemon.root, dict(src.paths))
        theirs = {i["path"]: i for i in served.path_info(nix, "out", recursive=True)}
        for path, info in closure.items():
            assert info.nar_size == theirs[path.path]["narSize"]
            assert info.nar_hash_sri() == theirs[path.path]["narHash"]
        assert store.query_valid_paths([out, missing]) == {out}
