"""Far ends that misbehave: a remote that dies in the middle of a transfer, sends garbage, speaks an
unknown version or a wrong magic, or stops answering; and clients that do the same to `xstore serve ssh`.

Every case gives one line `error: ...` and exit 1 (130 for Ctrl-C), registers nothing locally and leaves
no temporary directory, and never hangs: the silent cases end at the connection's timeout, or at Ctrl-C,
after which the remote process is gone. The serve protocol's far ends are scripts around the real
`nix-store --serve` (cut with `head`, stalled with `sleep`) run through a fake `ssh`; the daemon's are the
worker protocol's server machine on a unix socket (`tests/fakedaemon.py`).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakedaemon import FakeDaemon
from tests.helpers import Nix
from tests.nixstores import STORE_OPTIONS, NixStore
from tests.remotes import XSTORE, fake_ssh, path_with, run_xstore, write_script, xstore_fails, xstore_ok
from xstore.errors import RemoteConnectionError, RemoteError
from xstore.nar.dump import dump_path
from xstore.protocols import serve as serve_proto
from xstore.protocols import worker as proto
from xstore.remote.daemon import DaemonStore
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath, make_source_path, parse_store_path
from xstore.stores import open_store
from xstore.wire import encode_u64

PKG = "/nix/store/f63i83p5m5920ci0qz1sn1snmkqayzra-pkg"
BIG = 1 << 18  # a 256 KiB file: its NAR is far longer than anything else in a session


@pytest.fixture(scope="module")
def big(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """A Nix store holding one path with a 256 KiB file (label `big`)."""
    base = tmp_path_factory.mktemp("robust")
    data = base / "data"
    data.mkdir()
    (data / "blob").write_bytes(random.Random(13).randbytes(BIG))
    root = base / "root"
    (path,) = nix.nix_store("--store", root, *STORE_OPTIONS, "--add", data).decode().split()
    return NixStore(root, {"big": path})


@pytest.fixture
def env(nix: Nix, tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    fake_ssh(bin_dir)
    environment = dict(nix.env)
    environment.update(PATH=path_with(bin_dir), NIX_CONFIG="build-users-group =")
    return environment


def script(tmp_path: Path, name: str, body: str) -> str:
    return str(write_script(tmp_path / "bin" / name, "#!/bin/bash\n" + body + "\n"))


def nothing_landed(root: Path, path: str) -> None:
    """`path` is not valid in the xstore store at `root` (if any), and no temporary directory is left."""
    if not (root / "nix" / "var" / "nix" / "db" / "db.sqlite").exists():
        return
    result = run_xstore("path-info", "--store", root, path)
    assert result.returncode == 1
    assert b"is not valid" in result.stderr
    store_dir = root / "nix" / "store"
    assert not (store_dir / path.removeprefix("/nix/store/")).exists()
    assert [n for n in os.listdir(store_dir) if n.startswith(".xstore-tmp-")] == []


def ssh_url(root: Path, program: str, **params: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"ssh://fakehost?remote-store={root}&remote-program={program}{extra}"


# -- the serve protocol's far end ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'echo "Welcome to fakehost! Last login: never"; exec cat >/dev/null',
            "error: 'nix-store --serve' protocol mismatch from 'fakehost', "
            "got 'Welcome to fakehost! Last login: never'",
        ),
        (
            r"printf '\xcb\xee\x52\x54\0\0\0\0\0\x03\0\0\0\0\0\0'; exec cat >/dev/null",
            "error: unsupported 'nix-store --serve' protocol version 3.0 on 'fakehost' "
            "(xstore speaks 2.5 to 2.8)",
        ),
        (
            "echo 'bash: nix-store: command not found' >&2; exit 127",
            "error: 'nix-store --serve' protocol mismatch from 'fakehost' (it closed the connection): "
            "bash: nix-store: command not found",
        ),
    ],
    ids=["banner", "version", "missing"],
)
def test_garbage_unknown_versions_and_missing_programs(
    big: NixStore, env: dict[str, str], tmp_path: Path, body: str, message: str
) -> None:
    program = script(tmp_path, "far", body)
    local = tmp_path / "local"
    assert (
        xstore_fails("copy", "--from", ssh_url(big.root, program), "--to", local, big.paths["big"], env=env)
        == message
    )
    nothing_landed(local, big.paths["big"])


def test_far_end_dies_in_the_middle_of_a_nar(big: NixStore, env: dict[str, str], tmp_path: Path) -> None:
    program = script(tmp_path, "cut", 'nix-store "$@" | stdbuf -o0 head -c 100000')
    local = tmp_path / "local"
    message = xstore_fails(
        "copy", "--from", ssh_url(big.root, program), "--to", local, big.paths["big"], env=env
    )
    assert message.startswith("error: 'fakehost' closed the connection in the middle of a NAR (after ")
    nothing_landed(local, big.paths["big"])


def test_far_end_stops_answering_in_the_middle_of_a_nar(
    big: NixStore, env: dict[str, str], tmp_path: Path
) -> None:
    # After 100,000 bytes nix-store dies (SIGPIPE); `cat` keeps the stream open without a word, until
    # xstore gives up and ends it.
    program = script(
        tmp_path, "stall", 'nix-store "$@" | stdbuf -o0 head -c 100000; exec cat 3>&1 >/dev/null'
    )
    local = tmp_path / "local"
    url = ssh_url(big.root, program, timeout="2")
    message = xstore_fails("copy", "--from", url, "--to", local, big.paths["big"], env=env)
    nar_of = f"the NAR of '{big.paths['big']}'"
    assert message == f"error: 'fakehost' did not answer for 2 seconds (xstore was waiting for {nar_of})"
    nothing_landed(local, big.paths["big"])


def test_far_end_dies_while_receiving(nix: Nix, big: NixStore, env: dict[str, str], tmp_path: Path) -> None:
    program = script(tmp_path, "deaf", 'stdbuf -o0 head -c 50000 | nix-store "$@"')
    remote = tmp_path / "remote"
    message = xstore_fails(
        "copy", "--from", big.root, "--to", ssh_url(remote, program), big.paths["big"], env=env
    )
    assert "'fakehost' closed the connection while xstore" in message
    assert message.endswith("unexpected end-of-file")
    # The far end registered nothing.
    got = NixStore(remote, dict(big.paths))
    got.verify(nix)
    assert nix.nix_store_fails(*got.store_args(), "-q", "--hash", big.paths["big"])


def test_silence_ends_at_the_timeout(big: NixStore, env: dict[str, str], tmp_path: Path) -> None:
    program = script(tmp_path, "silent", "exec sleep 600")
    message = xstore_fails(
        "path-info", "--store", ssh_url(big.root, program, timeout="1"), big.paths["big"], env=env
    )
    assert message == "error: 'fakehost' did not answer for 1 seconds (xstore was waiting for its greeting)"


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_ctrl_c_ends_a_wait_and_the_far_end(big: NixStore, env: dict[str, str], tmp_path: Path) -> None:
    pid_file = tmp_path / "far.pid"
    program = script(tmp_path, "silent", f"echo $$ > {pid_file}; exec sleep 600")
    local = tmp_path / "local"
    proc = subprocess.Popen(
        [*XSTORE, "copy", "--from", ssh_url(big.root, program), "--to", str(local), big.paths["big"]],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "the far end to start")
        far = int(pid_file.read_text())
        time.sleep(0.3)  # let xstore settle into its wait for the greeting
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # also closes the pipes
    assert proc.returncode == 130
    assert stderr.decode().splitlines() == ["error: interrupted"]
    wait_for(lambda: gone(far), "the far end to be gone", 10)
    nothing_landed(local, big.paths["big"])


# -- the daemon's far end ------------------------------------------------------------------------------


def payload_nar(tmp_path: Path, name: str, contents: bytes) -> tuple[PathInfo, bytes]:
    """A path of our own making (a file `name` holding `contents`) and its NAR, for fake daemons."""
    source = tmp_path / name
    source.write_bytes(contents)
    parts: list[bytes] = []
    dump_path(source, parts.append)
    nar = b"".join(parts)
    digest = hashlib.sha256(nar).digest()
    path = make_source_path(name, digest)
    return PathInfo(path, digest, len(nar), registration_time=1, sigs=(), ca=None), nar


def small_nar(tmp_path: Path) -> tuple[PathInfo, bytes]:
    """A file with 64 KiB of data as a path, and its NAR."""
    return payload_nar(tmp_path, "payload", random.Random(5).randbytes(1 << 16))


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[..., FakeDaemon]]:
    made: list[FakeDaemon] = []

    def make(answer: Callable[..., bool] | None = None, **kwargs: object) -> FakeDaemon:
        daemon = FakeDaemon(tmp_path / f"fake{len(made)}.sock", answer or (lambda *_: False), **kwargs)  # type: ignore[arg-type]
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()
        assert daemon.errors == []


def test_daemon_log_lines_show_and_its_errors_are_one_line(
    fake: Callable[..., FakeDaemon], tmp_path: Path
) -> None:
    info, _ = small_nar(tmp_path)

    def answer(server: proto.WorkerServer, request: proto.Request, send: Callable[[bytes], None]) -> bool:
        if request.op == proto.Op.SET_OPTIONS:
            send(server.log("warning: \x1b[1mthe daemon says hello\x1b[0m\n") + server.last())
        else:
            message = f"path '\x1b[35;1m{info.path}\x1b[0m' is not valid;\n  really not"
            send(server.error(message, ["while answering a query"]))
        return True

    daemon = fake(answer)
    result = run_xstore("path-info", "--store", f"unix://{daemon.path}", info.path.path)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        "warning: the daemon says hello",
        f"error: the Nix daemon at '{daemon.path}': path '{info.path}' is not valid; really not",
    ]


def test_daemon_speaking_another_version_or_nothing(fake: Callable[..., FakeDaemon], tmp_path: Path) -> None:
    other = fake(greeting=encode_u64(proto.WORKER_MAGIC_2) + encode_u64(0x200))
    message = xstore_fails("path-info", "--store", f"unix://{other.path}", "/nix/store/" + "0" * 32 + "-x")
    speaks = "speaks Nix daemon protocol 2.0; xstore speaks 1.34 (Nix 2.8) to 1.38"
    assert message == f"error: the Nix daemon at '{other.path}' {speaks}"
    web = fake(greeting=b"HTTP/1.1 400 Bad Request\r\n\r\n")
    message = xstore_fails("path-info", "--store", f"unix://{web.path}", "/nix/store/" + "0" * 32 + "-x")
    mismatch = f"Nix daemon protocol mismatch from the Nix daemon at '{web.path}'"
    assert message == f"error: {mismatch}, got 'HTTP/1.1 400 Bad Request'"
    message = xstore_fails(
        "path-info", "--store", f"unix://{tmp_path / 'nothing.sock'}", "/nix/store/" + "0" * 32 + "-x"
    )
    nowhere = tmp_path / "nothing.sock"
    assert message == f"error: cannot connect to the Nix daemon at '{nowhere}': No such file or directory"


@pytest.mark.parametrize("how", ["cut", "garbage", "silent"])
def test_daemon_failing_in_the_middle_of_a_nar(
    fake: Callable[..., FakeDaemon], tmp_path: Path, how: str
) -> None:
    info, nar = small_nar(tmp_path)

    def answer(server: proto.WorkerServer, request: proto.Request, send: Callable[[bytes], None]) -> bool:
        if request.op == proto.Op.QUERY_PATH_INFO:
            send(server.last() + server.path_info(info))
        elif request.op == proto.Op.NAR_FROM_PATH:
            if how == "cut":
                send(server.last() + nar[: len(nar) // 2])
                return False
            if how == "garbage":
                send(server.last() + b"garbage!" * 100)
            else:
                send(server.last() + nar[: len(nar) // 2])
                daemon.stall(600)
            return False
        else:
            send(server.last())
        return True

    daemon = fake(answer)
    local = tmp_path / "local"
    url = f"unix://{daemon.path}?timeout=1"
    message = xstore_fails("copy", "--from", url, "--to", local, info.path.path)
    peer = f"the Nix daemon at '{daemon.path}'"
    expected = {
        "cut": f"error: {peer} closed the connection in the middle of a NAR (after {len(nar) // 2} bytes)",
        "garbage": "error: bad archive: input doesn't look like a Nix archive (at byte 0, in /)",
        "silent": f"error: {peer} did not answer for 1 seconds (xstore was waiting for the NAR of ",
    }[how]
    assert message.startswith(expected), message
    nothing_landed(local, info.path.path)


def test_daemon_refusing_an_upload_keeps_the_connection(
    fake: Callable[..., FakeDaemon], tmp_path: Path
) -> None:
    info, nar = small_nar(tmp_path)
    src = tmp_path / "src"
    (src / "nix" / "store").mkdir(parents=True)
    xstore_ok("store", "init", "--store", src)
    from xstore.store import LocalStore

    with LocalStore.open(src) as store:
        chunks = [nar]
        store.add_to_store(info, lambda _n: chunks.pop() if chunks else b"", check_sigs=False)
    calls: list[int] = []

    def answer(server: proto.WorkerServer, request: proto.Request, send: Callable[[bytes], None]) -> bool:
        calls.append(request.op)
        if request.op == proto.Op.ADD_TO_STORE_NAR:
            send(server.error("cannot add path: the disk is full"))
        elif request.op in (proto.Op.QUERY_VALID_PATHS, proto.Op.IS_VALID_PATH):
            send(
                server.last()
                + (server.u64(0) if request.op == proto.Op.IS_VALID_PATH else server.path_set([]))
            )
        elif request.op == proto.Op.ADD_TEMP_ROOT:
            send(server.last() + server.u64(1))
        else:
            send(server.last())
        return True

    daemon = fake(answer)
    message = xstore_fails("copy", "--from", src, "--to", f"unix://{daemon.path}", info.path.path)
    assert message == f"error: the Nix daemon at '{daemon.path}': cannot add path: the disk is full"
    assert proto.Op.ADD_TO_STORE_NAR in calls
    # In-process: after the refusal the same connection answers the next request.
    with open_store(f"unix://{daemon.path}") as remote:
        chunks = [nar[i : i + 4096] for i in range(0, len(nar), 4096)][::-1]
        with pytest.raises(RemoteError, match="the disk is full"):
            remote.add_to_store(info, lambda _n: chunks.pop() if chunks else b"")
        assert remote.query_valid_paths([info.path, parse_store_path(PKG)]) == set()


def test_a_daemon_that_refuses_the_options_leaves_the_store_unusable(
    fake: Callable[..., FakeDaemon], tmp_path: Path
) -> None:
    # The handshake ends at the first request (the greeting went out on connecting): a daemon that
    # refuses SetOptions fails that request with its message, and the store refuses everything after,
    # as a store that failed to open would.
    info, _ = small_nar(tmp_path)
    asked: list[int] = []

    def answer(server: proto.WorkerServer, request: proto.Request, send: Callable[[bytes], None]) -> bool:
        asked.append(request.op)
        send(server.error("these options are not for you", []))
        return True

    daemon = fake(answer)
    with open_store(f"unix://{daemon.path}") as remote:
        with pytest.raises(RemoteError, match="these options are not for you"):
            remote.query_valid_paths([info.path])
        with pytest.raises(RemoteConnectionError, match="broke earlier"):
            remote.query_valid_paths([info.path])
    assert asked == [proto.Op.SET_OPTIONS]


# -- clients misbehaving towards xstore serve ssh -----------------------------------------------------


def serve_argv(root: Path, *flags: str) -> list[str]:
    return [*XSTORE, "serve", "ssh", "--write", "--store", str(root), *flags]


def test_client_dying_in_the_middle_of_an_upload(big: NixStore, nix: Nix, tmp_path: Path) -> None:
    (info,) = big.path_info(nix, "big")
    nar = big.dump(nix, "big")
    client = serve_proto.ServeClient()
    request = client.hello()
    client.version = 0x207
    from xstore.hashing import parse_hash

    request += client.add_to_store_nar(
        PathInfo(parse_store_path(info["path"]), parse_hash(info["narHash"]).digest, len(nar))
    )
    request += nar[: len(nar) // 2]
    dst = tmp_path / "dst"
    result = subprocess.run(serve_argv(dst), input=request, capture_output=True, timeout=120, check=False)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"error: unexpected end of file in a NAR ({len(nar) // 2} of {len(nar)} bytes received)"
    )
    nothing_landed(dst, big.paths["big"])


@pytest.mark.parametrize(
    ("flags", "sent", "what"),
    [
        (("--timeout", "1"), encode_u64(serve_proto.Command.QUERY_PATH_INFOS), "the rest of a request"),
        (("--idle-timeout", "1"), b"", "the next request"),
    ],
)
def test_client_going_silent(tmp_path: Path, flags: tuple[str, ...], sent: bytes, what: str) -> None:
    dst = tmp_path / "dst"
    xstore_ok("store", "init", "--store", dst)
    proc = subprocess.Popen(
        serve_argv(dst, *flags), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stderr is not None
    try:
        proc.stdin.write(encode_u64(serve_proto.SERVE_MAGIC_1) + encode_u64(0x207) + sent)
        proc.stdin.flush()
        proc.wait(60)  # stdin stays open: the client is alive, only silent
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 1
    assert stderr.decode().splitlines() == [
        f"error: the client did not answer for 1 seconds (xstore was waiting for {what})"
    ]


def test_a_nar_failing_on_our_side_is_cut_off_cleanly(
    fake: Callable[..., FakeDaemon], tmp_path: Path
) -> None:
    info, nar = small_nar(tmp_path)
    received: list[bytes] = []

    def answer(server: proto.WorkerServer, request: proto.Request, send: Callable[[bytes], None]) -> bool:
        if request.op == proto.Op.ADD_TO_STORE_NAR:
            send(server.error("truncated NAR"))  # what a daemon says when the frames end early
        elif request.op == proto.Op.IS_VALID_PATH:
            send(server.last() + server.u64(0))
        else:
            send(server.last())
        return True

    daemon = fake(answer)
    chunks = [nar[:1000]]

    def read(_n: int) -> bytes:
        if chunks:
            received.append(chunks[0])
            return chunks.pop()
        raise OSError("the source disk failed")

    with open_store(f"unix://{daemon.path}") as remote:
        with pytest.raises(OSError, match="the source disk failed"):
            remote.add_to_store(info, read)
        assert remote.query_valid_paths([info.path]) == set()  # the connection is still in step
    assert received == [nar[:1000]]


def test_daemon_nars_asked_for_ahead_and_a_failure_among_them(
    fake: Callable[..., FakeDaemon], tmp_path: Path
) -> None:
    # The daemon answers no NarFromPath before it has been asked for all three (a client asking for one
    # NAR at a time would wait for ever), and fails the second: that failure is raised for the second
    # path only, and the connection stays in step for the others and for what follows.
    made = [payload_nar(tmp_path, f"payload{n}", b"contents %d" % n) for n in range(3)]
    nars = {info.path: nar for info, nar in made}
    infos = {info.path: info for info, _ in made}
    held: list[bytes] = []

    def answer(server: proto.WorkerServer, request: proto.Request, send: Callable[[bytes], None]) -> bool:
        if request.op == proto.Op.QUERY_PATH_INFO:
            (asked,) = request.args
            assert isinstance(asked, StorePath)
            send(server.last() + server.path_info(infos.get(asked)))
        elif request.op == proto.Op.NAR_FROM_PATH:
            (asked,) = request.args
            assert isinstance(asked, StorePath)
            failing = asked == made[1][0].path
            held.append(server.error("path was deleted") if failing else server.last() + nars[asked])
            if len(held) == 3:
                send(b"".join(held))
        elif request.op == proto.Op.IS_VALID_PATH:
            send(server.last() + server.u64(1))
        else:
            send(server.last())
        return True

    daemon = fake(answer)
    with open_store(f"unix://{daemon.path}?timeout=10") as remote:
        assert isinstance(remote, DaemonStore)
        assert remote.query_closure(list(infos)) == infos
        remote.prefetch([info.path for info, _ in made])
        got: list[bytes] = []
        assert remote.nar_from_path(made[0][0].path, got.append) == len(made[0][1])
        with pytest.raises(RemoteError, match="path was deleted"):
            remote.nar_from_path(made[1][0].path, got.append)
        assert remote.nar_from_path(made[2][0].path, got.append) == len(made[2][1])
        assert b"".join(got) == made[0][1] + made[2][1]
        assert remote.is_valid_path(made[0][0].path) is True  # in step after all that


def test_daemon_nar_read_out_of_turn_around_a_large_one(
    fake: Callable[..., FakeDaemon], tmp_path: Path
) -> None:
    # Planned: small, large, small. Reading the second small one before the large one drops the large NAR
    # (asked for ahead, never kept: it may be any size) and asks for it again when it is read.
    made = [
        payload_nar(tmp_path, f"payload{n}", random.Random(n).randbytes(size))
        for n, size in enumerate((10, 200_000, 10))
    ]
    nars = {info.path: nar for info, nar in made}
    infos = {info.path: info for info, _ in made}
    asked: list[StorePath] = []

    def answer(server: proto.WorkerServer, request: proto.Request, send: Callable[[bytes], None]) -> bool:
        (path,) = (
            request.args if request.op in (proto.Op.QUERY_PATH_INFO, proto.Op.NAR_FROM_PATH) else (None,)
        )
        if request.op == proto.Op.QUERY_PATH_INFO:
            assert isinstance(path, StorePath)
            send(server.last() + server.path_info(infos.get(path)))
        elif request.op == proto.Op.NAR_FROM_PATH:
            assert isinstance(path, StorePath)
            asked.append(path)
            send(server.last() + nars[path])
        else:
            send(server.last())
        return True

    daemon = fake(answer)
    small0, large, small2 = (info.path for info, _ in made)
    with open_store(f"unix://{daemon.path}?timeout=10") as remote:
        assert isinstance(remote, DaemonStore)
        remote.query_closure(list(infos))
        remote.prefetch([small0, large, small2])
        for path in (small0, small2, large):
            got: list[bytes] = []
            assert remote.nar_from_path(path, got.append) == len(nars[path])
            assert b"".join(got) == nars[path]
    assert asked == [small0, large, small2, large]
