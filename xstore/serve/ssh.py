"""`xstore serve ssh`: a store served over the `nix-store --serve` protocol on stdin and stdout.

What `nix-store --serve [--write]` does, with any xstore store behind it, so that Nix (`nix copy --to
ssh://`, `nix-copy-closure`, Hydra) and xstore's own `ssh://` client can push to and pull from a
machine that has xstore and no Nix (a Mac, a container). Nix runs its `remote-program` as `PROGRAM
--serve --write [--store STORE]`, so `remote-program=xstore serve ssh` works as it stands, and the same
command can be the forced command of an `authorized_keys` line.

The driver is one loop around `protocols.serve.ServeServer`: each request is answered from the store.
- QueryValidPaths with its lock flag (and `--write`) makes every path named a temporary GC root of
  this process, so the paths stay until the connection ends (the 2014 race fix of nix-copy-closure).
- DumpStorePath and ExportPaths send NARs with the original names, also from a case-hacked store.
  DumpStorePath's NAR is not hashed again on the way (as Nix's is not: the client checks it).
- AddToStoreNar and ImportPaths add through the store's one add transaction, with the store's case hack,
  and only with `--write` (without it: "importing paths is not allowed" and exit, as Nix does).
  AddToStoreNar's confirmation leaves as soon as the path is registered, before its lock is released:
  the client waits for it before sending the next path.
- BuildPaths and BuildDerivation are answered with a failed build saying that xstore builds nothing.

There are no error messages in this protocol: an error is printed on stderr and the server exits 1,
which the client sees as the end of the stream (and ssh shows the message). Waits for the next request
are bounded by `idle_timeout`, waits inside a request by `timeout`.

Nix: nix-store.cc `opServe`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from xstore.errors import NotAllowedError, UnsupportedError
from xstore.protocols import serve as proto
from xstore.protocols.common import NarData, NarEnd
from xstore.remote.channel import Channel, ChannelSink
from xstore.remote.pump import next_event
from xstore.storeapi import PathInfo, Read, Store
from xstore.storepath import StorePath

TYPE_CHECKING = False  # not `from typing import`: the far end of a copy starts without loading typing
if TYPE_CHECKING:
    from typing import Final

BUILD_REFUSAL: Final = (
    "xstore serves store paths but builds nothing; build on a machine with Nix and copy the outputs here"
)
# Path infos kept for the connection, as Nix's server keeps them (its `path-info-cache-size`).
INFO_CACHE_SIZE: Final = 65536


class _Infos:
    """The infos of valid paths this connection has looked up, so that a client asking for a closure,
    then each path's info, then each NAR (Nix's `nix copy --from ssh://`) costs one lookup per path, as
    it does with Nix's server, whose info cache answers the same way. Only valid paths are kept: a path
    that becomes valid later is looked up when asked for."""

    __slots__ = ("_infos", "_store")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._infos: dict[StorePath, PathInfo] = {}

    def keep(self, info: PathInfo) -> None:
        infos = self._infos
        if len(infos) >= INFO_CACHE_SIZE and info.path not in infos:
            del infos[next(iter(infos))]  # the oldest
        infos[info.path] = info

    def get(self, path: StorePath) -> PathInfo | None:
        """The path's info, or None if it is not valid."""
        info = self._infos.get(path)
        if info is None:
            info = self._store.query_path_info(path)
            if info is not None:
                self.keep(info)
        return info

    def require(self, path: StorePath) -> PathInfo:
        """The path's info; `InvalidPathError` if it is not valid."""
        info = self.get(path)
        return info if info is not None else self._store.require(path)

    def known(self, path: StorePath) -> PathInfo | None:
        """The path's info if it has been looked up, else None (nothing is asked of the store)."""
        return self._infos.get(path)


def serve_ssh(
    store: Store,
    channel: Channel,
    *,
    write: bool = False,
    idle_timeout: float | None = None,
    version: int = proto.PROTOCOL_VERSION,
) -> None:
    """Answer one client on `channel` until its stream ends. Raises what the store raises, and
    `ProtocolError`, `NotAllowedError` (a write without `write`), `RemoteConnectionError` (the client
    went away in the middle of an exchange), `RemoteTimeoutError`."""
    conn = proto.ServeServer(version=version, peer="the client")
    infos = _Infos(store)
    while True:
        idle = conn.between_requests
        what = "the next request" if idle else "the rest of a request"
        event = next_event(conn, channel, what, timeout=idle_timeout if idle else True)
        if isinstance(event, proto.ClientClosed):
            return
        if isinstance(event, proto.ClientMagic):
            channel.send(conn.hello(), "the greeting")
        elif isinstance(event, proto.ClientVersion):
            continue
        elif isinstance(event, proto.QueryValidPaths):
            if event.lock and write:
                for path in sorted(event.paths):
                    store.add_temp_root(path)
            channel.send(conn.valid_paths(store.query_valid_paths(event.paths)), "valid paths")
        elif isinstance(event, proto.QueryPathInfos):
            found = [info for p in sorted(event.paths) if (info := infos.get(p)) is not None]
            channel.send(conn.path_infos(found), "path infos")
        elif isinstance(event, proto.QueryClosure):
            closure = _closure(store, infos, event.paths, include_outputs=event.include_outputs)
            channel.send(conn.valid_paths(closure), "a closure")
        elif isinstance(event, proto.DumpStorePath):
            # Not hashed again on the way out: the client checks the NAR it adds (Nix does, and so
            # does xstore), as `nix-store --serve` relies on; large files leave in the kernel.
            sink = ChannelSink(channel, "a NAR")
            store.nar_from_path(event.path, sink, known=infos.known(event.path), check=False)
        elif isinstance(event, proto.ExportPaths):
            from xstore.import_export import export_paths

            export_paths(store, event.paths, lambda block: channel.send(block, "an export stream"))
        elif isinstance(event, proto.AddToStoreNar):
            if not write:
                raise NotAllowedError("importing paths is not allowed")
            _add_and_confirm(store, conn, channel, event.info)
        elif isinstance(event, proto.ImportPaths):
            if not write:
                raise NotAllowedError("importing paths is not allowed")
            from xstore.import_export import import_stream
            from xstore.store import LocalStore

            if not isinstance(store, LocalStore):
                raise UnsupportedError(f"ImportPaths needs a local store, and {store.describe()} is not one")
            read = _payload(conn, channel, proto.ExportData, proto.ExportEnd)
            import_stream(store, read)
            while read(1 << 20):  # the end event, after the stream's closing 0 that import_stream read
                pass
            channel.send(conn.added(), "a confirmation")
        elif isinstance(event, proto.BuildPaths):
            channel.send(conn.build_paths_refused(BUILD_REFUSAL), "a build result")
        elif isinstance(event, proto.BuildDerivation):
            channel.send(conn.build_derivation_refused(BUILD_REFUSAL), "a build result")
        else:
            raise AssertionError(f"unexpected event {event!r}")


def _add_and_confirm(store: Store, conn: proto.ServeServer, channel: Channel, info: PathInfo) -> None:
    """AddToStoreNar: add the path, then confirm. The confirmation says that the path is registered;
    a local store sends it as soon as it is, before the path's lock is released and the rest cleaned
    up, as the client waits for it before sending its next path."""
    from xstore.store import LocalStore  # loaded already when the store is one

    confirmed = False

    def confirm() -> None:
        nonlocal confirmed
        if not confirmed:
            confirmed = True
            channel.send(conn.added(), "a confirmation")

    read = _payload(conn, channel, NarData, NarEnd)
    if isinstance(store, LocalStore):
        store.add_to_store(info, read, check_sigs=False, on_registered=confirm)
    else:
        store.add_to_store(info, read, check_sigs=False)
    confirm()  # unless done: the path was valid already, or the store is not a local one


def _payload(
    conn: proto.ServeServer,
    channel: Channel,
    data_type: type[NarData] | type[proto.ExportData],
    end_type: type[NarEnd] | type[proto.ExportEnd],
) -> Read:
    """A `read(n)` over the payload that follows a request (`NarData`/`ExportData` chunks up to the end
    event): the chunks as they arrive, then `b""` for good."""
    ended = False

    def read(_n: int) -> bytes:
        nonlocal ended
        if ended:
            return b""
        event = next_event(conn, channel, "the rest of a NAR")
        if isinstance(event, data_type):
            return event.data
        if isinstance(event, end_type):
            ended = True
            return b""
        raise AssertionError(f"unexpected event {event!r} inside a payload")

    return read


def _closure(
    store: Store, infos: _Infos, paths: Iterable[StorePath], *, include_outputs: bool
) -> set[StorePath]:
    """`paths` and everything they refer to; with `include_outputs`, also the valid outputs of the
    derivations met on the way, and their closures (Nix: `computeFSClosure`). The infos read on the
    way are kept in `infos`. Raises `InvalidPathError` for a path the store does not have."""
    if not include_outputs:
        closure = store.query_closure(paths)
        for info in closure.values():
            infos.keep(info)
        return set(closure)
    outputs: Callable[[StorePath], dict[str, StorePath]] = getattr(
        store, "query_derivation_outputs", lambda _p: {}
    )
    seen: set[StorePath] = set()
    todo = list(paths)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(infos.require(path).references)
        if path.name.endswith(".drv"):
            todo.extend(store.query_valid_paths(outputs(path).values()))
    return seen
