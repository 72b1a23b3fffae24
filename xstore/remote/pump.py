"""The one blocking loop between a sans-IO protocol connection and a `Channel`.

Every driver (the `ssh://` and daemon clients, `xstore serve ssh`) gets its next event through
`next_event`: it asks the connection, and while the connection needs data, receives some from the
channel (waiting at most the channel's timeout, or `timeout` when given) and hands it over, `b""` when
the peer's stream has ended so that the connection can say whether that was allowed there.
"""

from __future__ import annotations

from xstore.wire import NEED_DATA, Signal

TYPE_CHECKING = False  # not `from typing import`: `xstore serve ssh` runs without loading typing
if TYPE_CHECKING:
    from typing import Protocol, TypeVar

    from xstore.remote.channel import Channel

    E_co = TypeVar("E_co", covariant=True)

    class Connection(Protocol[E_co]):
        """A sans-IO protocol connection (`xstore.protocols`)."""

        def receive_data(self, data: bytes) -> None: ...

        def next_event(self) -> E_co | Signal: ...


def next_event(
    conn: Connection[E_co], channel: Channel, what: str, *, timeout: float | bool | None = True
) -> E_co:
    """The connection's next event, receiving from `channel` as needed (see the module docstring)."""
    while True:
        event = conn.next_event()
        if event is not NEED_DATA:
            assert not isinstance(event, Signal)
            return event
        if channel.eof:
            raise AssertionError("a connection asked for data after the end of its stream")
        conn.receive_data(channel.recv(what, timeout=timeout))
