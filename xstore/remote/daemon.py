"""The Nix daemon as a store: `unix:///path/to/socket`, `daemon` and `ssh-ng://HOST`.

`unix://` and `daemon` connect to a daemon's socket (`daemon`: `$NIX_DAEMON_SOCKET_PATH`, else
`$NIX_STATE_DIR/daemon-socket/socket`, else `/nix/var/nix/daemon-socket/socket`, as Nix has it) and send
SetOptions after the handshake, as Nix's `unix://` client does; `ssh-ng://HOST` runs `<remote-program>
--stdio [--store <remote-store>]` (default `nix-daemon`) through ssh, the same way the `ssh://` store
runs `nix-store --serve`, and sends no options (as Nix's ssh-ng store).

Every operation is one exchange around the sans-IO `protocols.worker.WorkerClient`; what the daemon
logs on the way (`STDERR_NEXT`) is passed on as notices, and an error it reports (`STDERR_ERROR`)
becomes one `RemoteError` line, after which the connection goes on. NARs stream both ways: NarFromPath
(the daemon's own op, so a chroot daemon works too, unlike Nix 2.8's `unix://` which reads the files
itself) writes to the caller's sink as the NAR arrives and checks it against the path's info, and
AddToStoreNar sends the caller's NAR in frames as it is read, watching for an error from the daemon
meanwhile. A NAR that fails on our side midway is cut off with the closing empty frame, so the daemon
refuses the path and the connection stays in step. `check_sigs=False` (`--no-check-sigs`) asks the
daemon not to require signatures; a daemon that does not trust us ignores that, as Nix's does.

Store URL parameters: the ssh ones for `ssh-ng://` (see `ssh.py`), `remote-program`, `remote-store`,
`timeout` (xstore's: seconds a read or write may wait, default 300); `root`, `max-connections` and
`max-connection-age` are accepted and ignored.

Nix: remote-store.cc, uds-remote-store.cc, ssh-store.cc, daemon.cc.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterable

from xstore.errors import (
    InvalidPathError,
    InvalidStoreUrlError,
    ProtocolError,
    RemoteConnectionError,
    RemoteError,
)
from xstore.notices import notice
from xstore.protocols import worker as proto
from xstore.remote.channel import CHUNK, Channel, one_line, plain, shell_escape, start_remote, timeout_param
from xstore.remote.channel import PARAMS as SERVE_PARAMS
from xstore.remote.session import AheadReads, Session
from xstore.storeapi import PathInfo, Read, Sink, Store, batched
from xstore.storepath import StorePath
from xstore.storeurl import StoreUrl
from xstore.wire import NEED_DATA

TYPE_CHECKING = False  # not `from typing import`: copies over ssh or to a daemon start without typing
if TYPE_CHECKING:
    from typing import Final, TypeVar

    T = TypeVar("T")

SSH_PARAMS: Final = SERVE_PARAMS  # ssh-ng:// takes what ssh:// takes
SOCKET_PARAMS: Final = frozenset({"root", "max-connections", "max-connection-age", "timeout"})


def default_socket() -> str:
    """Where Nix's `daemon` store connects (Nix: globals.cc `nixDaemonSocketFile`)."""
    explicit = os.environ.get("NIX_DAEMON_SOCKET_PATH")
    if explicit:
        return explicit
    state = os.environ.get("NIX_STATE_DIR", "/nix/var/nix")
    return os.path.join(state, "daemon-socket", "socket")


def _connect(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError as e:
        sock.close()
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise RemoteConnectionError(f"cannot connect to the Nix daemon at '{path}': {reason}") from None
    return sock


PIPELINED: Final = 128  # requests sent before their answers are read


class _RefusedError(Exception):
    """The daemon reported a failure while a stream was being sent (its error follows)."""


class DaemonStore(Store):
    """An open connection to a Nix daemon (see the module docstring). Raises `RemoteConnectionError`
    when the daemon cannot be reached or the connection breaks, `ProtocolError` when it speaks
    something else, `RemoteTimeoutError` when it stops answering, `RemoteError` for an error it
    reports."""

    def __init__(self, url: StoreUrl) -> None:
        self.url = url.text
        timeout = timeout_param(url)
        if url.scheme == "ssh-ng":
            remote_store = url.param("remote-store", "")
            command = f"{url.param('remote-program') or 'nix-daemon'} --stdio"
            if remote_store:
                command += " --store " + shell_escape(remote_store)
            proc = start_remote(url, command, timeout=timeout)
            self.name = f"ssh-ng://{url.authority}"
            session = Session(proc.channel, f"'{url.authority}'", proc=proc)
            set_options = False
        else:
            path = url.path if url.scheme == "unix" else default_socket()
            sock = _connect(path, timeout)
            self.name = f"unix://{path}" if url.scheme == "unix" else "daemon"
            channel = Channel(
                sock.fileno(), sock.fileno(), peer=f"the Nix daemon at '{path}'", timeout=timeout
            )
            session = Session(channel, f"the Nix daemon at '{path}'", sock=sock)
            set_options = True
        self._session = session
        self._client = proto.WorkerClient(peer=session.peer)
        self._infos: dict[StorePath, PathInfo] = {}
        self._rooted: set[StorePath] = set()
        self._reads = AheadReads(
            session,
            self._nar_request,
            lambda info, sink: session.receive_nar(self._conn, info, sink, "NarFromPath", aside=self._handle),
        )
        self.nix_version: str | None = None  # these two once the handshake is done (`_handshake`)
        self.trusted: bool | None = None
        try:
            with session.exchange():
                session.send_greeting(self._client, self._client.hello())
        except BaseException:
            self.close()
            raise
        self._handshake_pending: bool | None = set_options  # SetOptions or not, until it is done

    @property
    def _conn(self) -> proto.WorkerClient:
        """The protocol's client end, with the handshake done: the first use finishes it."""
        set_options = self._handshake_pending
        if set_options is not None:
            self._handshake_pending = None
            try:
                with self._session.exchange():
                    self._handshake(set_options=set_options)
            except RemoteError as e:
                # The daemon refused the handshake (or SetOptions) in the protocol's own terms: the two
                # ends are in step, but the session is not usable, as if the store had failed to open.
                self._session.break_(str(e))
                raise
        return self._client

    def _nar_request(self, path: StorePath) -> bytes:
        return self._conn.nar_from_path(path)  # through `_conn`: the handshake may be pending still

    def _handshake(self, *, set_options: bool) -> None:
        """The rest of the handshake, before the first request: the daemon's answer to the greeting sent
        on connecting, ours, SetOptions. Meanwhile the daemon has started a worker for the connection
        (about 4 ms, 10 ms for a daemon's first) while the caller went on (`copy` opens the source and
        reads the closure): no request can be made before the handshake anyway."""
        self._session.next_event(self._client, "its greeting", greeting=True)
        self._session.send(self._client.handshake(), "the handshake")
        handshake = self._until(proto.Handshake, "its handshake", greeting=True)
        self.nix_version = handshake.nix_version
        self.trusted = handshake.trusted
        if set_options:
            self._op(self._client.set_options(), "the answer to SetOptions", proto.Done)

    def describe(self) -> str:
        return f"the store '{self.name}'"

    # -- exchanges ---------------------------------------------------------------------------------

    def _handle(self, event: object) -> bool:
        """Deal with a log event (True), or tell that `event` is something else (False). A reported
        error is raised as `RemoteError`."""
        if isinstance(event, proto.LogLine):
            text = plain(event.text).rstrip()
            if text:
                notice(text)
            return True
        if isinstance(event, (proto.ActivityStart, proto.ActivityStop, proto.ActivityResult)):
            return True
        if isinstance(event, proto.OpFailed):
            raise RemoteError(f"{self._session.peer}: {one_line(event.message)}")
        return False

    def _until(self, reply: type[T], what: str, *, greeting: bool = False) -> T:
        while True:
            event = self._session.next_event(self._conn, what, greeting=greeting)
            if self._handle(event):
                continue
            if not isinstance(event, reply):
                raise ProtocolError(
                    f"{self._session.peer} answered {type(event).__name__}, not {reply.__name__}", offset=0
                )
            return event

    def _op(self, request: bytes, what: str, reply: type[T]) -> T:
        session = self._session
        with session.exchange():
            self._reads.drain()
            session.send(request, what)
            return self._until(reply, what)

    # -- queries -----------------------------------------------------------------------------------

    def is_valid_path(self, path: StorePath) -> bool:
        return self._op(self._conn.is_valid_path(path), "an answer to IsValidPath", proto.Valid).valid

    def query_valid_paths(self, paths: Iterable[StorePath]) -> set[StorePath]:
        paths = sorted(set(paths))
        if len(paths) == 1:
            return set(paths) if self.is_valid_path(paths[0]) else set()
        valid: set[StorePath] = set()
        for batch in batched(paths):
            reply = self._op(self._conn.query_valid_paths(batch), "a list of valid paths", proto.ValidPaths)
            valid |= reply.paths & set(batch)
        return valid

    def query_path_info(self, path: StorePath) -> PathInfo | None:
        if path in self._infos:
            return self._infos[path]
        reply = self._op(self._conn.query_path_info(path), "path info", proto.PathInfoReply)
        if reply.info is not None:
            self._infos[path] = reply.info
        return reply.info

    def _query_path_infos(self, paths: list[StorePath]) -> dict[StorePath, PathInfo | None]:
        """QueryPathInfo for each of `paths`, the requests sent together and the answers read in order
        (the daemon answers one after another): one round trip for a batch, not one per path."""
        found: dict[StorePath, PathInfo | None] = {p: self._infos[p] for p in paths if p in self._infos}
        todo = [p for p in dict.fromkeys(paths) if p not in found]
        session = self._session
        # A batch's requests (about 100 bytes each) fit in an empty socket or pipe buffer at once, so the
        # send cannot block on a daemon that is itself blocked writing answers not yet read.
        for batch in batched(todo, PIPELINED):
            with session.exchange():
                self._reads.drain()
                session.send(b"".join(self._conn.query_path_info(p) for p in batch), "path info")
                failure: RemoteError | None = None
                for path in batch:
                    try:
                        reply = self._until(proto.PathInfoReply, "path info")
                    except RemoteError as e:  # the other answers still come: read them, stay in step
                        failure = failure or e
                        continue
                    if reply.info is not None:
                        self._infos[path] = reply.info
                    found[path] = reply.info
                if failure is not None:
                    raise failure
        return found

    def query_closure(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        """The closure level by level, each level's path infos asked for in one round trip."""
        infos: dict[StorePath, PathInfo] = {}
        frontier = list(dict.fromkeys(paths))
        while frontier:
            found = self._query_path_infos(frontier)
            for path in frontier:
                info = found[path]
                if info is None:
                    raise InvalidPathError(f"path '{path}' is not valid in {self.describe()}", path=path.path)
                infos[path] = info
            frontier = list(dict.fromkeys(r for p in frontier for r in infos[p].references if r not in infos))
        return infos

    def query_path_from_hash_part(self, hash_part: str) -> StorePath | None:
        reply = self._op(
            self._conn.query_path_from_hash_part(hash_part), "a store path", proto.PathFromHashPart
        )
        return reply.path

    def add_temp_root(self, path: StorePath) -> None:
        """AddTempRoot: the daemon keeps `path` from garbage collection while this connection lasts."""
        if path not in self._rooted:
            self._op(self._conn.add_temp_root(path), "an answer to AddTempRoot", proto.Done)
            self._rooted.add(path)

    # -- NARs --------------------------------------------------------------------------------------

    def nar_from_path(
        self, path: StorePath, sink: Sink, *, known: PathInfo | None = None, check: bool = True
    ) -> int:
        info = known if known is not None and known.path == path else self.require(path)
        with self._session.exchange():
            return self._reads.read(info, sink)

    def prefetch(self, paths: Iterable[StorePath]) -> None:
        """Say which NARs will be read next, in order (as `copy` does): see `AheadReads`."""
        self._reads.plan(info for p in paths if (info := self._infos.get(p)) is not None)

    def _watcher(self, failed: list[proto.OpFailed], what: Callable[[], str]) -> Callable[[bytes], bool]:
        """For `Channel.send_watching` during an upload: what the daemon says meanwhile is handled (log
        lines shown), a failure kept in `failed` and the upload stopped (False); anything else is a
        protocol error. `what()` names what is being sent."""
        conn = self._conn

        def watch(data: bytes) -> bool:
            conn.receive_data(data)
            while (event := conn.next_event()) is not NEED_DATA:
                if isinstance(event, proto.OpFailed):
                    failed.append(event)
                    return False
                if not self._handle(event):
                    raise ProtocolError(
                        f"{self._session.peer} answered {type(event).__name__} in the middle of {what()}",
                        offset=0,
                    )
            return True

        return watch

    def _upload_answer(
        self, failed: list[proto.OpFailed], cut: BaseException | None, what: str, confirmation: str
    ) -> None:
        """The daemon's answer to an upload whose closing frame has gone: its failure raised; after our
        side was `cut` (the daemon then refuses the truncated upload), read and dropped, so that the two
        ends stay in step and the caller raises our error; else its confirmation."""
        if cut is not None:
            if not failed:
                with contextlib.suppress(RemoteError):
                    self._until(proto.Done, what)
        elif failed:
            self._handle(failed[0])
        else:
            self._until(proto.Done, confirmation)

    def add_to_store(self, info: PathInfo, read: Read, *, check_sigs: bool = True) -> bool:
        """AddToStoreNar, the NAR in frames as `read` gives it. Returns True: the daemon does not say
        whether it had the path already (it then drops the NAR)."""
        session = self._session
        conn = self._conn
        failed: list[proto.OpFailed] = []
        what = f"the NAR of '{info.path}'"
        watch = self._watcher(failed, lambda: "a NAR")
        cut: BaseException | None = None
        with session.exchange():
            self._reads.drain()
            session.send(conn.add_to_store_nar(info, dont_check_sigs=not check_sigs), "a path's metadata")
            while not failed:
                try:
                    chunk = read(CHUNK)
                except BaseException as e:  # noqa: BLE001 (raised again below, once the daemon has answered)
                    cut = e
                    break
                if not chunk:
                    break
                channel = session.channel
                if not (
                    channel.send_watching(conn.frame_header(len(chunk)), what, watch)
                    and channel.send_watching(chunk, what, watch)
                ):
                    break
            session.send(conn.end_frames(), "the end of a NAR")
            self._upload_answer(failed, cut, what, f"confirmation that '{info.path}' was added")
        if cut is not None:
            raise cut
        self._infos.pop(info.path, None)
        return True

    def add_many(
        self,
        entries: Iterable[tuple[PathInfo, Callable[[Sink], object]]],
        count: int,
        *,
        check_sigs: bool = True,
        on_sent: Callable[[PathInfo], None] | None = None,
    ) -> None:
        """AddMultipleToStore, as Nix's copy to a daemon: `count` paths in one framed stream, each
        path's header followed by the NAR its producer writes to the sink given, without waiting for
        the daemon between paths (it adds them in order while the rest arrive). `on_sent(info)` is told
        once a path's NAR has gone out. On a failure the paths before the failing one stay added; the
        daemon's error is raised (`RemoteError`), or ours when our side failed first (a source NAR that
        breaks off cuts the stream, which the daemon then refuses)."""
        session = self._session
        conn = self._conn
        channel = session.channel
        failed: list[proto.OpFailed] = []
        pending = bytearray()
        what = "the paths"
        sent: list[PathInfo] = []
        watch = self._watcher(failed, lambda: what)

        complete = 0  # the length of `pending` up to the end of the last whole path in it

        def flush() -> None:
            nonlocal complete
            if pending:
                data = bytes(pending)
                pending.clear()
                complete = 0
                if not (
                    channel.send_watching(conn.frame_header(len(data)), what, watch)
                    and channel.send_watching(data, what, watch)
                ):
                    raise _RefusedError

        def sink(data: bytes) -> None:
            # Small pieces (headers, small NARs) share a frame; a chunk of a large NAR is a frame.
            pending.extend(data)
            if len(pending) >= CHUNK:
                flush()

        cut: BaseException | None = None
        with session.exchange():
            self._reads.drain()
            session.send(conn.add_multiple_to_store(dont_check_sigs=not check_sigs), "AddMultipleToStore")
            try:
                sink(conn.multiple_count(count))
                for info, produce in entries:
                    what = f"the NAR of '{info.path}'"
                    sink(conn.multiple_entry(info))
                    produce(sink)
                    complete = len(pending)
                    sent.append(info)
                    if on_sent is not None:
                        on_sent(info)
                flush()
            except _RefusedError:
                pass
            except BaseException as e:  # noqa: BLE001 (raised again below, once the daemon has answered)
                cut = e
                # The paths sent whole go out; the one that failed is cut off where it stands, so the
                # daemon refuses it (and expects in vain the paths after it).
                del pending[complete:]
                with contextlib.suppress(_RefusedError):
                    flush()
            session.send(conn.end_frames(), "the end of the paths")
            self._upload_answer(failed, cut, what, "confirmation that the paths were added")
        for info in sent:
            self._infos.pop(info.path, None)
        if cut is not None:
            raise cut

    def close(self) -> None:
        self._session.close()


def open_daemon_store(url: StoreUrl) -> DaemonStore:
    known = SSH_PARAMS if url.scheme == "ssh-ng" else SOCKET_PARAMS
    unknown = sorted(set(url.params) - known)
    if unknown:
        raise InvalidStoreUrlError(
            f"store URL '{url.text}': unknown parameter '{unknown[0]}' (this kind of store takes: "
            f"{', '.join(sorted(known))})"
        )
    return DaemonStore(url)
