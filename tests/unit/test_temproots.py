"""Temporary GC roots written as Nix 2.8 writes them: `STATE/temproots/<pid>`, NUL-terminated store paths,
locked by the process; a stale file of the same pid replaced; a running collector told over its socket.
(That Nix's own collector honours them is in tests/compat/test_serve_ssh_compat.py.)"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from pathlib import Path

import pytest

from xstore.storepath import parse_store_path
from xstore.temproots import roots_file

A = parse_store_path("/nix/store/12wigjpizrn8axaqxj288q1b751qmwya-a")
B = parse_store_path("/nix/store/kbnsdqvza4r1hzcr5vs2bhx8kv150g37-b")


def test_roots_are_appended_nul_terminated_to_a_locked_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    roots = state / "temproots" / str(os.getpid())
    roots.parent.mkdir(parents=True)
    roots.write_bytes(b"stale: a dead process with our pid left this")
    mine = roots_file(state)
    mine.add(A)
    mine.add(B)
    assert roots.read_bytes() == A.path.encode() + b"\0" + B.path.encode() + b"\0"
    with open(roots, "rb") as f, pytest.raises(BlockingIOError):
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    # The global GC lock is not kept.
    with open(state / "gc.lock", "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    mine.release()
    assert not roots.exists()


def test_a_running_collector_is_told_over_its_socket(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "gc-socket").mkdir(parents=True)
    lock = os.open(state / "gc.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as Nix's collector holds it while it runs
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state / "gc-socket" / "socket"))
    server.listen(1)
    heard: list[bytes] = []

    def collector() -> None:
        conn, _ = server.accept()
        with conn:
            heard.append(conn.recv(4096))
            conn.sendall(b"1")

    thread = threading.Thread(target=collector)
    thread.start()
    roots = roots_file(state)
    try:
        roots.add(A)
    finally:
        thread.join(10)
        server.close()
        os.close(lock)
    assert heard == [A.path.encode() + b"\n"]
    assert (state / "temproots" / str(os.getpid())).read_bytes() == A.path.encode() + b"\0"
    roots.release()  # the last user: the file goes, and the collector's connection is closed
    assert not (state / "temproots" / str(os.getpid())).exists()
