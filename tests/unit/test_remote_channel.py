"""The channel every remote store and `xstore serve ssh` moves bytes on: waits are announced, bounded by
the timeout (counted from the last progress), and interrupted by Ctrl-C; a peer that went away is a
connection error, and one gone before the greeting is judged by what it sent. Plus the command lines Nix's
conventions give for ssh."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
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
