"""The channel every remote store and `xstore serve ssh` moves bytes on: waits are announced, bounded by
the timeout (counted from the last progress), and interrupted by Ctrl-C; a peer that went away is a
connection error, and one gone before the greeting is judged by what it sent. Plus the command lines Nix's
conventions give for ssh."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from xstore.errors import ProtocolError, RemoteConnectionError, RemoteTimeoutError
from xstore.notices import listening
from xstore.protocols.serve import SERVE_MAGIC_2, ServeClient
from xstore.remote import channel as channel_module
from xstore.remote.channel import Channel, one_line, shell_escape, ssh_argv
from xstore.remote.session import Session
from xstore.wire import encode_u64


@pytest.fixture
def pipes() -> Iterator[tuple[Channel, int, int]]:
    """A channel reading one pipe and writing another; yields it with the far ends (write, read)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    yield Channel(r1, w2, peer="'far'", timeout=0.5), w1, r2
    for fd in (r1, w1, r2, w2):
        with contextlib.suppress(OSError):  # a test may have closed a far end already
            os.close(fd)


def test_a_long_wait_is_announced_and_ends_at_the_timeout(
    pipes: tuple[Channel, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    channel, _, _ = pipes
    monkeypatch.setattr(channel_module, "NOTICE_AFTER", 0.1)
    heard: list[str] = []
    with listening(heard.append), pytest.raises(RemoteTimeoutError) as raised:
        channel.recv("a reply")
    assert str(raised.value) == "'far' did not answer for 0.5 seconds (xstore was waiting for a reply)"
    assert heard == ["waiting for 'far' (a reply); giving up after 0.5 seconds"]


def test_progress_resets_the_timeout(pipes: tuple[Channel, int, int]) -> None:
    channel, far_w, _ = pipes
    # Gaps of a quarter of a second against a timeout of 1.5 s: a loaded machine may stretch a gap by
    # over a second before the test fails for the wrong reason; the 2 s in all are longer than the timeout.
    channel.timeout = 1.5

    def trickle() -> None:
        for _ in range(8):
            time.sleep(0.25)
            os.write(far_w, b"x")

    thread = threading.Thread(target=trickle)
    thread.start()
    started = time.monotonic()
    got = b""
    while len(got) < 8:
        got += channel.recv("a trickle")  # each wait is shorter than the timeout, the total is longer
    thread.join()
    assert got == b"x" * 8
    assert time.monotonic() - started > channel.timeout


def test_ctrl_c_interrupts_a_wait_without_timeout(pipes: tuple[Channel, int, int]) -> None:
    channel, _, _ = pipes
    channel.timeout = None

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            channel.recv("something that never comes")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_a_silent_peer_costs_no_processor_time(pipes: tuple[Channel, int, int]) -> None:
    # A read that finds nothing spins for a moment (SPIN) before it sleeps in poll(), never longer: half
    # a second of waiting for a peer that says nothing uses almost no processor time.
    channel, _, _ = pipes
    used = time.thread_time()
    with pytest.raises(RemoteTimeoutError):
        channel.recv("a reply")
    assert time.thread_time() - used < 0.1


def test_small_reads_and_bulk_reads_give_the_bytes_as_sent(pipes: tuple[Channel, int, int]) -> None:
    # Little at a time goes through the kept buffer (each piece its own bytes object, unchanged by the
    # reads after it); a read that fills the buffer switches to whole chunks, and back once one is short.
    channel, far_w, _ = pipes
    os.write(far_w, b"abc")
    first = channel.recv("a reply")
    os.write(far_w, b"defgh")
    second = channel.recv("a reply")
    assert (first, second) == (b"abc", b"defgh")
    bulk = os.urandom(3 * channel_module.SMALL_READ)
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: a pipe that holds all of it, so the sizes are exact
        fcntl.fcntl(far_w, fcntl.F_SETPIPE_SZ, 1 << 20)
        os.write(far_w, bulk)
        got = [channel.recv("a NAR"), channel.recv("a NAR")]
        assert [len(piece) for piece in got] == [channel_module.SMALL_READ, 2 * channel_module.SMALL_READ]
    else:
        done = threading.Event()

        def send_bulk() -> None:
            view = memoryview(bulk)
            while view:
                view = view[os.write(far_w, view[:4096]) :]
            done.set()

        thread = threading.Thread(target=send_bulk)
        thread.start()
        got = [channel.recv("a NAR")]
        while sum(map(len, got)) < len(bulk):
            got.append(channel.recv("a NAR"))
        thread.join()
        assert done.is_set()
    assert b"".join(got) == bulk
    assert all(type(piece) is bytes for piece in got)
    os.write(far_w, b"end")
    assert channel.recv("a reply") == b"end"
    assert (first, second) == (b"abc", b"defgh")


def test_end_of_stream_and_a_peer_that_went_away(pipes: tuple[Channel, int, int]) -> None:
    channel, far_w, far_r = pipes
    os.write(far_w, b"last words")
    os.close(far_w)  # the far end closes its side
    assert channel.recv("data") == b"last words"
    assert channel.recv("data") == b""
    assert channel.eof
    os.close(far_r)
    with pytest.raises(
        RemoteConnectionError, match="'far' closed the connection while xstore was sending a NAR"
    ):
        channel.send(b"x" * 100_000, "a NAR")


def test_a_peer_that_stops_reading_times_out(pipes: tuple[Channel, int, int]) -> None:
    channel, _, _ = pipes
    with pytest.raises(
        RemoteTimeoutError, match=r"'far' did not answer for 0\.5 seconds \(xstore was waiting for a NAR\)"
    ):
        channel.send(b"x" * (4 << 20), "a NAR")


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        (b"Welcome to far!\n", "'nix-store --serve' protocol mismatch from 'far', got 'Welcome to far!'"),
        (b"", "'nix-store --serve' protocol mismatch from 'far' (it closed the connection)"),
    ],
    ids=["banner", "nothing"],
)
def test_a_far_end_gone_before_the_greeting_is_judged_by_what_it_sent(
    pipes: tuple[Channel, int, int], sent: bytes, message: str
) -> None:
    """Whether the far end exits before or after xstore writes its greeting is a race; either way the
    error is the protocol mismatch, not the broken pipe."""
    channel, far_w, far_r = pipes
    client = ServeClient(peer="'far'")
    os.write(far_w, sent)
    os.close(far_w)
    os.close(far_r)  # writing the greeting now fails with EPIPE
    with pytest.raises(ProtocolError) as raised:
        Session(channel, "'far'").greet(client, client.hello())
    assert str(raised.value) == message


def test_a_far_end_that_greets_and_stops_reading_is_a_connection_error(
    pipes: tuple[Channel, int, int],
) -> None:
    channel, far_w, far_r = pipes
    client = ServeClient(peer="'far'")
    os.write(far_w, encode_u64(SERVE_MAGIC_2) + encode_u64(0x206))
    os.close(far_r)
    with pytest.raises(RemoteConnectionError) as raised:
        Session(channel, "'far'").greet(client, client.hello())
    assert str(raised.value) == "'far' closed the connection while xstore was sending the greeting"


def test_ssh_command_lines_follow_nix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIX_SSHOPTS", "  -p 2222\t-oStrictHostKeyChecking=no ")
    assert ssh_argv("localhost", "nix-store --serve --write") == ["bash", "-c", "nix-store --serve --write"]
    assert ssh_argv("me@host", "cmd", ssh_key="/k", host_key_file="/h", compress=True) == [
        "ssh", "me@host", "-x", "-a", "-p", "2222", "-oStrictHostKeyChecking=no",
        "-i", "/k", "-oUserKnownHostsFile=/h", "-C", "cmd",
    ]  # fmt: skip
    assert shell_escape("/a b/it's") == "'/a b/it'\\''s'"
    assert one_line("hash mismatch importing path '\x1b[35;1m/x\x1b[0m';\n  specified: a\n  got: b") == (
        "hash mismatch importing path '/x'; specified: a got: b"
    )


def _file_with(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "contents"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_send_file_moves_a_range_through_a_full_pipe(pipes: tuple[Channel, int, int], tmp_path: Path) -> None:
    # Several times a pipe's buffer, read slowly at the far end: the kernel copy waits for room.
    channel, _, far_r = pipes
    data = os.urandom(3 << 20)
    fd = _file_with(tmp_path, data)
    got: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(far_r, 1 << 16):
            got.append(chunk)
            time.sleep(0.001)

    try:
        os.lseek(fd, 10, os.SEEK_SET)
        reader = threading.Thread(target=drain)
        reader.start()
        assert channel.send_file(fd, len(data) - 20, "a NAR") == len(data) - 20
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(data) - 10
        channel.send(b"end", "a NAR")
        os.close(channel.write_fd)
        reader.join()
    finally:
        os.close(fd)
    assert b"".join(got) == data[10:-10] + b"end"


def test_send_file_stops_where_the_file_ends(pipes: tuple[Channel, int, int], tmp_path: Path) -> None:
    channel, _, far_r = pipes
    fd = _file_with(tmp_path, b"0123456789")
    try:
        os.lseek(fd, 4, os.SEEK_SET)
        assert channel.send_file(fd, 100, "a NAR") == 6
        assert os.lseek(fd, 0, os.SEEK_CUR) == 10
    finally:
        os.close(fd)
    assert os.read(far_r, 100) == b"456789"


def test_send_file_goes_through_a_buffer_where_the_kernel_cannot(tmp_path: Path) -> None:
    # sendfile(2) refuses an output opened for appending (EINVAL), as macOS refuses anything but a
    # socket: the bytes are read and written instead, the same bytes.
    data = os.urandom((1 << 20) + 3)
    fd = _file_with(tmp_path, data)
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        channel = Channel(fd, out, peer="'far'", timeout=5)
        os.lseek(fd, 1, os.SEEK_SET)
        assert channel.send_file(fd, len(data), "a NAR") == len(data) - 1
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(data)
    finally:
        os.close(fd)
        os.close(out)
    assert (tmp_path / "out").read_bytes() == data[1:]


def test_send_file_to_a_peer_gone_or_not_reading(pipes: tuple[Channel, int, int], tmp_path: Path) -> None:
    channel, _, far_r = pipes
    fd = _file_with(tmp_path, os.urandom(4 << 20))
    try:
        with pytest.raises(
            RemoteTimeoutError,
            match=r"'far' did not answer for 0\.5 seconds \(xstore was waiting for a NAR\)",
        ):
            channel.send_file(fd, 4 << 20, "a NAR")
        os.close(far_r)
        with pytest.raises(
            RemoteConnectionError, match="'far' closed the connection while xstore was sending a NAR"
        ):
            channel.send_file(fd, 4 << 20, "a NAR")
    finally:
        os.close(fd)
