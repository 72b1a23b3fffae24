"""`xstore serve ssh` at the far end of Nix 2.8's own ssh clients, and side by side with `nix-store --serve`.

- `nix copy --to` and `--from "ssh://localhost?remote-store=ROOT&remote-program=xstore serve ssh"` (Nix
  runs the command itself for `localhost`), and `nix-copy-closure --to/--from` through a fake `ssh` first
  on PATH with `NIX_SSHOPTS`: what arrives exports byte for byte as the original, and Nix verifies the
  contents. Through a case-hacked xstore store, names are hacked on disk and original on the wire.
- The same request bytes to `nix-store --serve` and to `xstore serve ssh` on the same store give the
  same answers byte for byte (after the greeting, which names each side's version), at client
  versions 2.3 to 2.8; writes without `--write` fail the same way.
- The lock flag makes paths temporary roots that Nix's own garbage collector respects until the
  session ends; builds are refused in the protocol's terms and the session goes on; ImportPaths takes
  Nix's export stream.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Arg, Nix
from tests.nixstores import STORE_OPTIONS, NixStore, build_case_closure, build_nix_store
from tests.remotes import (
    fake_ssh,
    path_with,
    run_xstore,
    ssh_log,
    with_env,
    xstore_ok,
    xstore_program,
)
from xstore.hashing import parse_hash
from xstore.protocols import serve as proto
from xstore.serve.ssh import BUILD_REFUSAL
from xstore.storeapi import PathInfo
from xstore.storepath import parse_store_path
from xstore.wire import encode_string_list, encode_u64

CLOSURE = ("text_a", "text_b", "text_c", "dep", "out")


@pytest.fixture(scope="module")
def src(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    return build_nix_store(nix, tmp_path_factory.mktemp("serve-src") / "root")


@pytest.fixture(scope="module")
def case_src(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    return build_case_closure(nix, tmp_path_factory.mktemp("serve-case") / "root")


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bin")
    xstore_program(directory)
    fake_ssh(directory)
    return directory


def remote_program(bin_dir: Path) -> str:
    return f"{bin_dir / 'xstore'} serve ssh"


def ssh_url(bin_dir: Path, root: Path, host: str = "localhost") -> str:
    return f"ssh://{host}?remote-store={root}&remote-program={remote_program(bin_dir)}"


def copy_of(store: NixStore, where: Path) -> NixStore:
    shutil.copytree(store.root, where, symlinks=True)
    return NixStore(where, dict(store.paths))


def closure_export(nix: Nix, store: NixStore, label: str) -> bytes:
    """`nix-store --export` of the closure of a path, as Nix orders it."""
    return store.export(nix, *store.query_requisites(nix, label))


def infos_without_times(nix: Nix, store: NixStore, label: str, paths: dict[str, str]) -> list[dict[str, Any]]:
    infos = NixStore(store.root, paths).path_info(nix, label, recursive=True)
    for info in infos:
        info.pop("registrationTime", None)
        info.pop("ultimate", None)
    return infos


def nix_tool(nix: Nix, name: str) -> str:
    return os.path.join(os.path.dirname(nix.nix_store_exe), name)


# -- Nix 2.8 as the client ------------------------------------------------------------------------------


def test_nix_copy_to_xstore_over_ssh(nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    nix.nix_cmd("copy", *src.store_args(), "--to", ssh_url(bin_dir, dst), src.paths["out"])
    got = NixStore(dst, dict(src.paths))
    assert xstore_ok("export", "--store", dst, "-r", src.paths["out"]) == closure_export(nix, src, "out")
    assert got.export(nix, *got.query_requisites(nix, "out")) == closure_export(nix, src, "out")
    got.verify(nix)
    assert infos_without_times(nix, got, "out", src.paths) == infos_without_times(nix, src, "out", src.paths)


def test_nix_copy_from_xstore_over_ssh(nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    xstore_ok("copy", "--from", src.root, "--to", served, "-r", src.paths["out"])
    new = NixStore(tmp_path / "new", dict(src.paths))
    nix.nix_cmd(
        "copy", "--no-check-sigs", *new.store_args(), "--from", ssh_url(bin_dir, served), src.paths["out"]
    )
    assert closure_export(nix, new, "out") == closure_export(nix, src, "out")
    new.verify(nix)
    # Content-addressed paths need no signature: Nix's own check passes without --no-check-sigs.
    ca = NixStore(tmp_path / "ca", dict(src.paths))
    nix.nix_cmd("copy", *ca.store_args(), "--from", ssh_url(bin_dir, served), src.paths["text_c"])
    assert closure_export(nix, ca, "text_c") == closure_export(nix, src, "text_c")


def test_case_hacked_store_over_ssh(nix: Nix, case_src: NixStore, bin_dir: Path, tmp_path: Path) -> None:
    hacked = tmp_path / "hacked"
    xstore_ok("store", "init", "--store", hacked, "--case-hack", "on")
    nix.nix_cmd("copy", *case_src.store_args(), "--to", ssh_url(bin_dir, hacked), case_src.paths["out"])
    tree = hacked / case_src.paths["tree"].lstrip("/")
    assert {"README", "ReadMe~nix~case~hack~1", "readme~nix~case~hack~2"} <= set(os.listdir(tree))
    original = closure_export(nix, case_src, "out")
    assert xstore_ok("export", "--store", hacked, "-r", case_src.paths["out"]) == original
    back = NixStore(tmp_path / "back", dict(case_src.paths))
    nix.nix_cmd(
        "copy",
        "--no-check-sigs",
        *back.store_args(),
        "--from",
        ssh_url(bin_dir, hacked),
        case_src.paths["out"],
    )
    assert closure_export(nix, back, "out") == original
    back.verify(nix)


def test_nix_copy_closure_through_fake_ssh(nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "ssh.log"
    ssh_nix = with_env(
        nix,
        PATH=path_with(bin_dir),
        NIX_SSHOPTS="-p 2222 -oStrictHostKeyChecking=no",
        FAKE_SSH_LOG=str(log),
    )
    dst = tmp_path / "dst"
    host = f"fakehost?remote-store={dst}&remote-program={remote_program(bin_dir)}"
    copy_closure = nix_tool(nix, "nix-copy-closure")
    ssh_nix.run([copy_closure, *src.store_args(), "--to", host, src.paths["out"]])
    (argv,) = ssh_log(log)
    assert argv[:6] == ["fakehost", "-x", "-a", "-p", "2222", "-oStrictHostKeyChecking=no"]
    assert argv[6] == f"{remote_program(bin_dir)} --serve --write --store '{dst}'"
    assert xstore_ok("export", "--store", dst, "-r", src.paths["out"]) == closure_export(nix, src, "out")
    NixStore(dst, dict(src.paths)).verify(nix)

    new = NixStore(tmp_path / "new", dict(src.paths))
    ssh_nix.run([copy_closure, *new.store_args(), "--from", host, src.paths["out"]])
    assert closure_export(nix, new, "out") == closure_export(nix, src, "out")
    new.verify(nix)


# -- side by side with nix-store --serve --------------------------------------------------------------


def session(
    argv: list[Arg], requests: bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [os.fsdecode(a) for a in argv], input=requests, capture_output=True, timeout=120, env=env, check=False
    )


def nix_serve(nix: Nix, root: Path, *flags: str) -> list[Arg]:
    return [nix.nix_store_exe, "--serve", *flags, "--store", root, *STORE_OPTIONS]


def xstore_serve(bin_dir: Path, root: Path, *flags: str) -> list[Arg]:
    return [bin_dir / "xstore", "serve", "ssh", *flags, "--store", root]


def hello(version: int) -> bytes:
    return encode_u64(proto.SERVE_MAGIC_1) + encode_u64(version)


def paths_of(store: NixStore, *labels: str) -> list[Any]:
    return [parse_store_path(store.paths[label]) for label in labels]


@pytest.mark.parametrize("version", [0x203, 0x205, 0x207, 0x208])
def test_same_answers_as_nix_store_serve(
    nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path, version: int
) -> None:
    store = copy_of(src, tmp_path / "root")
    client = proto.ServeClient(version=version)
    requests = client.hello()
    client.version = version  # requests without reading the greeting: both servers get the same bytes
    missing = parse_store_path("/nix/store/00000000000000000000000000000000-missing")
    closure = paths_of(store, *CLOSURE)
    requests += client.query_valid_paths([*closure, missing], lock=True)
    requests += client.query_path_infos([*closure, missing, *paths_of(store, "file", "tree")])
    requests += client.query_closure(paths_of(store, "out"))
    requests += client.dump_store_path(paths_of(store, "out")[0])
    requests += client.dump_store_path(paths_of(store, "tree")[0])
    requests += client.export_paths(paths_of(store, "out", "text_c", "file"))
    ours = session(xstore_serve(bin_dir, store.root, "--write"), requests)
    theirs = session(nix_serve(nix, store.root, "--write"), requests, env=dict(nix.env))
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stderr == b""
    assert ours.stdout[:8] == theirs.stdout[:8] == encode_u64(proto.SERVE_MAGIC_2)
    assert ours.stdout[8:16] == encode_u64(0x208)
    assert theirs.stdout[8:16] == encode_u64(0x207)
    assert len(ours.stdout) > 10_000
    assert ours.stdout[16:] == theirs.stdout[16:]


def test_nars_go_out_as_nix_store_serve_sends_them_large_or_changed(
    nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path
) -> None:
    # Large files leave in the kernel (sendfile to the pipe), small ones through Python. A path whose
    # file changed since it was registered goes out as it is now, not hashed again, as Nix's server
    # sends it: the receiver's hash check is what refuses it (see the test below).
    store = copy_of(src, tmp_path / "root")
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob").write_bytes(os.urandom((3 << 20) + 5))
    (tmp_path / "big" / "tool").write_bytes(b"#!" + os.urandom(3 << 19))
    (tmp_path / "big" / "tool").chmod(0o755)
    (big,) = nix.nix_store(*store.store_args(), "--add", tmp_path / "big").decode().split()
    store.paths["big"] = big
    changed = store.real_path(src.paths["file"])
    changed.chmod(0o644)
    changed.write_bytes(b"changed since it was registered\n")
    client = proto.ServeClient(version=0x207)
    requests = client.hello()
    client.version = 0x207
    for label in ("big", "file", "tree", "big"):
        requests += client.query_path_infos(paths_of(store, label))
        requests += client.dump_store_path(paths_of(store, label)[0])
    ours = session(xstore_serve(bin_dir, store.root), requests)
    theirs = session(nix_serve(nix, store.root), requests, env=dict(nix.env))
    assert theirs.returncode == ours.returncode == 0, ours.stderr
    assert ours.stderr == b""
    assert len(ours.stdout) > 2 * (3 << 20)
    assert ours.stdout[16:] == theirs.stdout[16:]


def test_a_path_changed_on_the_far_end_is_refused_by_the_receiver(
    src: NixStore, bin_dir: Path, tmp_path: Path
) -> None:
    served = tmp_path / "served"
    xstore_ok("copy", "--from", src.root, "--to", served, "-r", src.paths["out"], src.paths["file"])
    changed = served / src.paths["file"].lstrip("/")
    changed.chmod(0o644)
    changed.write_bytes(b"changed since it was registered\n")
    dst = tmp_path / "dst"
    url = f"ssh://localhost?remote-store={served}&remote-program={remote_program(bin_dir)}"
    got = run_xstore("copy", "--no-check-sigs", "--from", url, "--to", dst, src.paths["file"])
    assert got.returncode == 1
    assert got.stderr.startswith(
        f"error: the NAR of '{src.paths['file']}' from 'localhost' does not match its path info".encode()
    ), got.stderr
    assert got.stderr.count(b"\n") == 1, got.stderr
    listed = run_xstore("path-info", "--store", dst, src.paths["file"])
    assert listed.returncode == 1


def test_infos_looked_up_in_a_session_do_not_hide_paths_added_later(
    nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path
) -> None:
    # The server keeps the infos it has looked up for the session, as Nix's does; a path asked for
    # before it was added is found once it has been.
    file = paths_of(src, "file")
    client = proto.ServeClient(version=0x207)
    client.hello()
    client.version = 0x207
    asked = client.query_path_infos(file) + client.query_valid_paths(file)
    requests = hello(0x207) + asked + add_request(src, "file", nix) + asked
    requests += client.dump_store_path(file[0])
    ours = session(xstore_serve(bin_dir, tmp_path / "ours", "--write"), requests)
    theirs = session(nix_serve(nix, tmp_path / "theirs", "--write"), requests, env=dict(nix.env))
    assert theirs.returncode == ours.returncode == 0, ours.stderr
    assert ours.stdout[16:] == theirs.stdout[16:]
    assert ours.stdout.endswith(src.dump(nix, src.paths["file"]))


def add_request(store: NixStore, label: str, nix: Nix) -> bytes:
    (info,) = store.path_info(nix, label)
    nar = store.dump(nix, label)
    client = proto.ServeClient()
    client.hello()
    client.version = 0x207
    request = client.add_to_store_nar(
        PathInfo(parse_store_path(info["path"]), parse_hash(info["narHash"]).digest, len(nar))
    )
    return request + client.nar_data(nar) + client.nar_end()


def test_writes_need_write_as_with_nix_store_serve(
    nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path
) -> None:
    target = copy_of(src, tmp_path / "root")
    xstore_ok("store", "init", "--store", tmp_path / "empty")
    requests = hello(0x207) + add_request(src, "file", nix)
    theirs = session(nix_serve(nix, target.root), requests, env=dict(nix.env))
    ours = session(xstore_serve(bin_dir, tmp_path / "empty"), requests)
    assert theirs.returncode == ours.returncode == 1
    assert "error: importing paths is not allowed" in theirs.stderr.decode()
    assert ours.stderr == b"error: importing paths is not allowed\n"
    assert ours.stdout == encode_u64(proto.SERVE_MAGIC_2) + encode_u64(0x208)
    listed = run_xstore("path-info", "--store", tmp_path / "empty", src.paths["file"])
    assert listed.returncode == 1
    assert b"is not valid" in listed.stderr


def test_add_to_store_nar_and_import_paths(nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    closure = [src.paths[label] for label in ("text_a", "text_b", "text_c")]
    requests = hello(0x207) + add_request(src, "file", nix)
    requests += encode_u64(proto.Command.IMPORT_PATHS) + src.export(nix, *closure)
    requests += encode_u64(proto.Command.QUERY_VALID_PATHS) + encode_u64(0) * 2
    requests += encode_string_list(sorted(p.encode() for p in [*closure, src.paths["file"]]))
    ours = session(xstore_serve(bin_dir, dst, "--write"), requests)
    assert ours.returncode == 0, ours.stderr
    valid = encode_string_list(sorted(p.encode() for p in [*closure, src.paths["file"]]))
    assert ours.stdout[16:] == encode_u64(1) + encode_u64(1) + valid
    got = NixStore(dst, dict(src.paths))
    got.verify(nix)
    assert got.export(nix, *closure, src.paths["file"]) == src.export(nix, *closure, src.paths["file"])


def test_locked_paths_survive_nix_garbage_collection_until_the_session_ends(
    nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path
) -> None:
    store = copy_of(src, tmp_path / "root")
    tree = store.paths["tree"]
    client = proto.ServeClient(version=0x207)
    server = subprocess.Popen(
        [os.fsdecode(a) for a in xstore_serve(bin_dir, store.root, "--write")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    try:
        server.stdin.write(client.hello())
        server.stdin.flush()
        assert server.stdout.read(16) == encode_u64(proto.SERVE_MAGIC_2) + encode_u64(0x208)
        client.version = 0x207
        server.stdin.write(client.query_valid_paths(paths_of(store, "tree"), lock=True))
        server.stdin.flush()
        expected = encode_string_list([tree.encode()])
        assert server.stdout.read(len(expected)) == expected
        roots = store.root / "nix" / "var" / "nix" / "temproots" / str(server.pid)
        assert roots.read_bytes() == tree.encode() + b"\0"
        with open(roots, "rb") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = nix.nix_store_fails(*store.store_args(), "--delete", tree)
        assert "since it is still alive" in refused
        assert store.real_path("tree").exists()
    finally:
        server.stdin.close()
        assert server.wait(60) == 0, server.stderr.read() if server.stderr else b""
        server.stdout.close()
        if server.stderr is not None:
            server.stderr.close()
    nix.nix_store(*store.store_args(), "--delete", tree)
    assert not store.real_path("tree").exists()
    assert not roots.exists()


def test_builds_are_refused_and_the_session_goes_on(
    nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path
) -> None:
    requests = hello(0x207)
    requests += encode_u64(proto.Command.BUILD_PATHS) + encode_string_list(
        [src.paths["drv"].encode() + b"!out"]
    )
    requests += encode_u64(0) * 6  # build options of a 2.7 client
    requests += encode_u64(proto.Command.QUERY_VALID_PATHS) + encode_u64(0) * 2
    requests += encode_string_list([src.paths["file"].encode()])
    ours = session(xstore_serve(bin_dir, src.root), requests)
    assert ours.returncode == 0, ours.stderr
    reply = ours.stdout[16:]
    assert reply.startswith(encode_u64(9))
    message = reply[16 : 16 + int.from_bytes(reply[8:16], "little")].decode()
    assert "builds nothing" in message
    assert reply.endswith(encode_string_list([src.paths["file"].encode()]))


def test_nix_remote_build_through_xstore_shows_the_refusal(
    nix: Nix, src: NixStore, bin_dir: Path, tmp_path: Path
) -> None:
    store = copy_of(src, tmp_path / "root")
    nix.nix_store(*store.store_args(), "--delete", store.paths["out"])
    system = nix.nix_cmd("eval", "--impure", "--raw", "--expr", "builtins.currentSystem").decode()
    program = remote_program(bin_dir).replace(" ", "%20")  # a space separates the fields of a builder
    builder = f"ssh://localhost?remote-store={tmp_path / 'builder'}&remote-program={program} {system}"
    failed = nix.nix_store_fails(
        *store.store_args(), "--option", "builders", builder, "--max-jobs", "0", "-r", store.paths["drv"]
    )
    # Nix copied the inputs over (AddToStoreNar), then sent BuildDerivation, and shows our answer.
    assert "failed: " + BUILD_REFUSAL in failed
    assert xstore_ok("path-info", "--store", tmp_path / "builder", store.paths["dep"])


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        (encode_u64(0x12345678) + b"GET / HTTP/1.1\r\n\r\n", "error: protocol mismatch"),
        (hello(0x207) + encode_u64(42), "error: unknown serve command 42"),
    ],
)
def test_bad_requests_end_the_session_with_one_line(
    nix: Nix, src: NixStore, bin_dir: Path, requests: bytes, message: str
) -> None:
    ours = session(xstore_serve(bin_dir, src.root), requests)
    theirs = session(nix_serve(nix, src.root), requests, env=dict(nix.env))
    assert ours.returncode == theirs.returncode == 1
    assert message in theirs.stderr.decode()
    assert ours.stderr.decode().startswith(message)
    assert ours.stderr.count(b"\n") == 1
