"""`xstore copy --to/--from ssh://HOST` with a real `nix-store --serve --write` (Nix 2.8) at the far end.

A fake `ssh` first on PATH runs the remote command here (and logs how it was called); `localhost` is run
directly, as Nix does. In both directions what arrived exports byte for byte as the original and Nix
verifies its contents; a case-hacked local store sends original names and receives hacked ones. The
session is one process, and every path is locked on the far end (QueryValidPaths with the lock flag)
before its NAR is asked for, which a recording of the session shows. `path-info` and `export` read
through the same store.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Nix
from tests.nixstores import NixStore, build_case_closure, build_nix_store
from tests.remotes import fake_ssh, path_with, run_xstore, ssh_log, write_script, xstore_fails, xstore_ok
from tests.transcripts import events
from xstore.copy import plan_copy
from xstore.protocols import serve as proto
from xstore.remote.ssh import ServeStore
from xstore.storeapi import Sink
from xstore.storepath import StorePath, parse_store_path
from xstore.stores import open_store

CLOSURE = ("text_a", "text_b", "text_c", "dep", "out")


@pytest.fixture(scope="module")
def src(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    return build_nix_store(nix, tmp_path_factory.mktemp("ssh-src") / "root")


@pytest.fixture(scope="module")
def case_src(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    return build_case_closure(nix, tmp_path_factory.mktemp("ssh-case") / "root")


@pytest.fixture
def remote_env(nix: Nix, tmp_path: Path) -> dict[str, str]:
    """The environment of an xstore whose `ssh` is the fake (logging to `tmp_path/ssh.log`) and whose
    far end is Nix in its test environment (options as every Nix command of the suite gets)."""
    bin_dir = tmp_path / "bin"
    fake_ssh(bin_dir)
    env = dict(nix.env)
    env.update(
        PATH=path_with(bin_dir),
        FAKE_SSH_LOG=str(tmp_path / "ssh.log"),
        NIX_SSHOPTS="-p 2222 -oBatchMode=yes",
        NIX_CONFIG="build-users-group =",  # as STORE_OPTIONS for the Nix commands of the suite
    )
    return env


def closure_export(nix: Nix, store: NixStore, label: str) -> bytes:
    return store.export(nix, *store.query_requisites(nix, label))


def url(root: Path, host: str = "fakehost", **params: str) -> str:
    query = "&".join([f"remote-store={root}", *(f"{k}={v}" for k, v in params.items())])
    return f"ssh://{host}?{query}"


def test_copy_to_nix_store_serve(nix: Nix, src: NixStore, remote_env: dict[str, str], tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    out = xstore_ok("copy", "--from", src.root, "--to", url(dst), "-r", src.paths["out"], env=remote_env)
    assert out.decode().split() == src.query_requisites(nix, "out")
    got = NixStore(dst, dict(src.paths))
    got.verify(nix)
    assert closure_export(nix, got, "out") == closure_export(nix, src, "out")
    (argv,) = ssh_log(tmp_path / "ssh.log")  # one session for queries, locks and every path
    assert argv == [
        "fakehost",
        "-x",
        "-a",
        "-p",
        "2222",
        "-oBatchMode=yes",
        f"nix-store --serve --write --store '{dst}'",
    ]
    # Nothing left to copy the second time.
    assert (
        xstore_ok("copy", "--from", src.root, "--to", url(dst), "-r", src.paths["out"], env=remote_env) == b""
    )


def test_copy_from_nix_store_serve(
    nix: Nix, src: NixStore, remote_env: dict[str, str], tmp_path: Path
) -> None:
    local = tmp_path / "local"
    xstore_ok(
        "copy",
        "--no-check-sigs",
        "--from",
        url(src.root),
        "--to",
        local,
        "-r",
        src.paths["out"],
        env=remote_env,
    )
    assert xstore_ok("export", "--store", local, "-r", src.paths["out"]) == closure_export(nix, src, "out")
    NixStore(local, dict(src.paths)).verify(nix)
    assert len(ssh_log(tmp_path / "ssh.log")) == 1


def test_ssh_parameters_reach_ssh(src: NixStore, remote_env: dict[str, str], tmp_path: Path) -> None:
    key = tmp_path / "id_test"
    key.write_text("not a key; the fake ssh ignores it\n")
    store = url(
        src.root, "user@fakehost", **{"ssh-key": str(key), "compress": "true", "remote-program": "nix-store"}
    )
    xstore_ok("path-info", "--store", store, src.paths["file"], env=remote_env)
    (argv,) = ssh_log(tmp_path / "ssh.log")
    assert argv[:6] == ["user@fakehost", "-x", "-a", "-p", "2222", "-oBatchMode=yes"]
    assert argv[6:9] == ["-i", str(key), "-C"]
    assert argv[9] == f"nix-store --serve --write --store '{src.root}'"


def test_localhost_runs_the_command_itself(nix: Nix, src: NixStore, tmp_path: Path) -> None:
    env = dict(nix.env)
    env["PATH"] = path_with(tmp_path / "no-ssh-here")
    dst = tmp_path / "dst"
    xstore_ok("copy", "--from", src.root, "--to", url(dst, "localhost"), "-r", src.paths["text_c"], env=env)
    assert closure_export(nix, NixStore(dst, dict(src.paths)), "text_c") == closure_export(nix, src, "text_c")


def test_case_hacked_store_sends_original_names_and_receives_hacked_ones(
    nix: Nix, case_src: NixStore, remote_env: dict[str, str], tmp_path: Path
) -> None:
    hacked = tmp_path / "hacked"
    xstore_ok("store", "init", "--store", hacked, "--case-hack", "on")
    xstore_ok(
        "copy",
        "--no-check-sigs",
        "--from",
        url(case_src.root),
        "--to",
        hacked,
        "-r",
        case_src.paths["out"],
        env=remote_env,
    )
    tree = hacked / case_src.paths["tree"].lstrip("/")
    assert {"README", "ReadMe~nix~case~hack~1", "readme~nix~case~hack~2"} <= set(os.listdir(tree))
    original = closure_export(nix, case_src, "out")
    back = tmp_path / "back"
    xstore_ok("copy", "--from", hacked, "--to", url(back), "-r", case_src.paths["out"], env=remote_env)
    got = NixStore(back, dict(case_src.paths))
    assert closure_export(nix, got, "out") == original
    got.verify(nix)
    assert "ReadMe" in os.listdir(back / case_src.paths["tree"].lstrip("/"))


def test_path_info_and_export_through_ssh(nix: Nix, src: NixStore, remote_env: dict[str, str]) -> None:
    import json

    store = url(src.root)
    ours = json.loads(
        xstore_ok("path-info", "--json", "-r", "--store", store, src.paths["out"], env=remote_env)
    )
    theirs = {i["path"]: i for i in src.path_info(nix, "out", recursive=True)}
    assert sorted(ours) == sorted(theirs)
    for path, info in ours.items():
        expected: dict[str, Any] = theirs[path]
        for field in ("narHash", "narSize", "references", "deriver", "ca", "signatures"):
            assert info[field] == expected.get(field, [] if field == "signatures" else None), (path, field)
    exported = xstore_ok("export", "--store", store, "-r", src.paths["out"], env=remote_env)
    assert exported == closure_export(nix, src, "out")


def test_every_path_is_locked_before_its_nar_is_read(
    nix: Nix, src: NixStore, remote_env: dict[str, str], tmp_path: Path
) -> None:
    record = tmp_path / "session"
    tee = write_script(
        tmp_path / "bin" / "tee-remote",
        f'#!/bin/sh\ntee {record}.c2s | nix-store "$@" | tee {record}.s2c\n',
    )
    local = tmp_path / "local"
    store = url(src.root, **{"remote-program": str(tee)})
    xstore_ok(
        "copy", "--no-check-sigs", "--from", store, "--to", local, "-r", src.paths["out"], env=remote_env
    )
    requests = events(proto.ServeServer(), [(tmp_path / "session.c2s").read_bytes()], stop=proto.ClientClosed)
    locked: set[str] = set()
    dumped = []
    for event in requests:
        if isinstance(event, proto.QueryValidPaths):
            assert event.lock
            locked |= {p.path for p in event.paths}
        elif isinstance(event, proto.DumpStorePath):
            assert event.path.path in locked
            dumped.append(event.path.path)
    assert sorted(dumped) == sorted(src.paths[label] for label in CLOSURE)
    assert isinstance(requests[-1], proto.ClientClosed)


def test_missing_paths_are_reported_clearly(
    src: NixStore, remote_env: dict[str, str], tmp_path: Path
) -> None:
    missing = "/nix/store/00000000000000000000000000000000-missing"
    result = run_xstore("copy", "--from", url(src.root), "--to", tmp_path / "local", missing, env=remote_env)
    assert result.returncode == 1
    assert (
        result.stderr.decode().splitlines()[-1]
        == f"error: path '{missing}' is not valid in the store 'ssh://fakehost'"
    )
    assert not (tmp_path / "local" / "nix" / "store" / missing.removeprefix("/nix/store/")).exists()


# -- several paths in a row ------------------------------------------------------------------------------

# A far end that confirms no AddToStoreNar before it has received all `count` of them: a client waiting
# for each confirmation before sending the next path would wait for ever (here: until its timeout).
HOLDING_FAR_END = """\
import os, sys
sys.path.insert(0, {repo!r})
from xstore.protocols import serve as proto
from xstore.protocols.common import NarEnd
from xstore.wire import NEED_DATA

server, out, held = proto.ServeServer(), sys.stdout.buffer, []
while True:
    data = os.read(0, 65536)
    server.receive_data(data)
    while (event := server.next_event()) is not NEED_DATA:
        if isinstance(event, proto.ClientVersion):
            out.write(server.hello())
        elif isinstance(event, proto.QueryValidPaths):
            out.write(server.valid_paths([]))
        elif isinstance(event, proto.AddToStoreNar):
            held.append(event.info.path.path)
        elif isinstance(event, NarEnd) and len(held) == {count}:
            out.write(server.added() * {count})
            with open({log!r}, "w") as f:
                f.write(" ".join(held))
        elif isinstance(event, proto.ClientClosed):
            sys.exit(0)
        out.flush()
    if not data:
        sys.exit(0)
"""


def test_paths_go_out_without_waiting_for_each_confirmation(
    nix: Nix, src: NixStore, remote_env: dict[str, str], tmp_path: Path
) -> None:
    order = src.query_requisites(nix, "out")  # dependencies first, as xstore sends them
    repo = str(Path(__file__).resolve().parents[2])
    log = tmp_path / "received"
    code = HOLDING_FAR_END.format(repo=repo, count=len(order), log=str(log))
    program = write_script(tmp_path / "bin" / "holding", f"#!{sys.executable}\n{code}")
    target = f"ssh://fakehost?remote-program={program}&timeout=10"
    out = xstore_ok("copy", "--from", src.root, "--to", target, "-r", src.paths["out"], env=remote_env)
    assert out.decode().split() == order
    assert log.read_text().split() == order


def test_a_source_failing_after_some_paths_leaves_those_added(
    nix: Nix, src: NixStore, remote_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The paths sent whole before the failure are added on the far end (and confirmed); the one that
    # failed is not, nor anything after it; the error is ours.
    for name, value in remote_env.items():
        monkeypatch.setenv(name, value)
    dst = tmp_path / "dst"
    with open_store(str(src.root)) as local, open_store(url(dst)) as remote:
        assert isinstance(remote, ServeStore)
        plan = plan_copy(local, remote, [parse_store_path(src.paths["out"])])
        assert len(plan.missing) >= 4

        def producer(path: StorePath, fail: bool) -> Callable[[Sink], None]:
            def produce(sink: Sink) -> None:
                if not fail:
                    local.nar_from_path(path, sink)
                    return
                sink(b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0")  # the start of a NAR, then the disk fails
                raise OSError("the source disk failed")

            return produce

        entries = [(plan.infos[p], producer(p, i == 2)) for i, p in enumerate(plan.missing)]
        sent: list[str] = []
        with pytest.raises(OSError, match="the source disk failed"):
            remote.add_many(entries, len(entries), on_sent=lambda info: sent.append(info.path.path))
    first_two = [p.path for p in plan.missing[:2]]
    assert sent == first_two
    got = NixStore(dst, dict(src.paths))
    got.verify(nix)
    for added in first_two:
        nix.nix_store(*got.store_args(), "-q", "--hash", added)
    for missing in plan.missing[2:]:
        nix.nix_store_fails(*got.store_args(), "-q", "--hash", missing.path)


def test_far_end_dying_among_several_paths(
    nix: Nix, src: NixStore, remote_env: dict[str, str], tmp_path: Path
) -> None:
    program = write_script(
        tmp_path / "bin" / "deaf", '#!/bin/bash\nstdbuf -o0 head -c 900 | nix-store "$@"\n'
    )
    dst = tmp_path / "dst"
    target = url(dst, **{"remote-program": str(program)})
    message = xstore_fails("copy", "--from", src.root, "--to", target, "-r", src.paths["out"], env=remote_env)
    assert message.startswith("error: 'fakehost' closed the connection while xstore"), message
    got = NixStore(dst, dict(src.paths))
    got.verify(nix)  # whatever it added is whole


# A far end that sends no NAR before it has been asked for `count` of them: a client asking for each NAR
# only once it has read the one before would wait for ever (here: until its timeout).
HOLDING_NAR_FAR_END = """\
import os, subprocess, sys
sys.path.insert(0, {repo!r})
from xstore.protocols import serve as proto
from xstore.wire import NEED_DATA

# The real far end answers everything; requests for NARs reach it only once `count` have arrived.
real = subprocess.Popen(["nix-store", *sys.argv[1:]], stdin=subprocess.PIPE, stdout=sys.stdout.buffer)
server, held, dumps, released = proto.ServeServer(), [], 0, False
while True:
    data = os.read(0, 65536)
    server.receive_data(data)
    while (event := server.next_event()) is not NEED_DATA:
        if isinstance(event, proto.DumpStorePath):
            dumps += 1
        if isinstance(event, proto.ClientClosed):
            break
    held.append(data)
    if released or dumps == 0 or dumps >= {count}:
        if not released and dumps:
            with open({log!r}, "w") as f:
                f.write(str(dumps))
        released = released or dumps > 0
        real.stdin.write(b"".join(held))
        real.stdin.flush()
        held.clear()
    if not data:
        break
real.stdin.close()
sys.exit(real.wait())
"""


def test_nars_are_asked_for_ahead(
    nix: Nix, src: NixStore, remote_env: dict[str, str], tmp_path: Path
) -> None:
    order = src.query_requisites(nix, "out")
    repo = str(Path(__file__).resolve().parents[2])
    log = tmp_path / "asked"
    code = HOLDING_NAR_FAR_END.format(repo=repo, count=len(order), log=str(log))
    program = write_script(tmp_path / "bin" / "holding", f"#!{sys.executable}\n{code}")
    target = f"ssh://fakehost?remote-store={src.root}&remote-program={program}&timeout=10"
    local = tmp_path / "local"
    out = xstore_ok(
        "copy", "--no-check-sigs", "--from", target, "--to", local, "-r", src.paths["out"], env=remote_env
    )
    assert out.decode().split() == order
    assert int(log.read_text()) == len(order)  # every NAR was asked for before the first was sent
    assert closure_export(nix, NixStore(local, dict(src.paths)), "out") == closure_export(nix, src, "out")
