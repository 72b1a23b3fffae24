"""Copying closures between any two stores, through the store interface.

`copy_paths(src, dst, paths)`: the closure is computed on the source (when asked), the paths the
destination has already are skipped after one batched query, the rest go dependencies first, and each
path's NAR streams from the source's `nar_from_path` into the destination's `add_to_store` through a
small bounded queue (`storeapi.pipe_nar`), so memory stays flat whatever the sizes. Each path lands
atomically or not at all; a failure stops the copy with the paths before it in place.

A destination that takes many paths in one request (`add_many`: the Nix daemon's AddMultipleToStore,
which Nix's own copy uses) gets them that way, the NARs streamed one after another without waiting for
the far end between paths.

Nix: store-api.cc (`copyPaths`, `copyStorePath`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Iterable, Iterator

from xstore.records import FrozenRecord, setfield
from xstore.storeapi import PathInfo, Read, Sink, Store, pipe_nar, topo_sort
from xstore.storepath import StorePath

TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import Final

_SMALL_NAR: Final = 4 << 20  # from a binary cache, read without a thread up to this size
_WHOLE_NAR: Final = 1 << 20  # from other stores, taken whole without a thread up to this size
_CHUNK: Final = 1 << 20


class CopyResult(FrozenRecord):
    __slots__ = ("path", "copied", "nar_size")  # noqa: RUF023 (the fields' order)
    path: StorePath
    copied: bool  # False: the destination had it already
    nar_size: int

    def __init__(self, path: StorePath, copied: bool, nar_size: int) -> None:
        setfield(self, "path", path)
        setfield(self, "copied", copied)
        setfield(self, "nar_size", nar_size)


class CopyPlan(FrozenRecord):
    """What a copy will do: every path considered (in order) and those the destination lacks."""

    __slots__ = ("order", "missing", "infos")  # noqa: RUF023 (the fields' order)
    order: list[StorePath]
    missing: list[StorePath]
    infos: dict[StorePath, PathInfo]

    def __init__(
        self,
        order: list[StorePath],
        missing: list[StorePath],
        infos: dict[StorePath, PathInfo],
    ) -> None:
        setfield(self, "order", order)
        setfield(self, "missing", missing)
        setfield(self, "infos", infos)

    @property
    def bytes_to_copy(self) -> int:
        return sum(self.infos[p].nar_size for p in self.missing)


def plan_copy(src: Store, dst: Store, paths: Iterable[StorePath], *, recursive: bool = True) -> CopyPlan:
    """Which of `paths` (with their closure when `recursive`) `dst` lacks, dependencies first. Raises
    `InvalidPathError` for a path the source does not have."""
    wanted = set(paths)
    infos = src.query_closure(wanted) if recursive else {p: src.require(p) for p in wanted}
    order = topo_sort(infos)
    have = dst.query_valid_paths(order)
    return CopyPlan(order, [p for p in order if p not in have], infos)


def copy_one(
    src: Store,
    dst: Store,
    info: PathInfo,
    *,
    check_sigs: bool = True,
    on_bytes: Callable[[int], None] | None = None,
) -> bool:
    """Stream one path from `src` into `dst`. True when it was added, False when `dst` had it.
    `on_bytes(n)` is told each time `n` more bytes of the NAR have passed."""

    def counted(read: Read) -> Read:
        if on_bytes is None:
            return read

        def read_counted(n: int) -> bytes:
            data = read(n)
            on_bytes(len(data))
            return data

        return read_counted

    landed = _landed(info)
    # A binary cache gives a small NAR whole, in one read and one decompression. The destination checks
    # the NAR's hash itself (every `add_to_store` does), so the source need not hash it a second time.
    read_small_nar = getattr(src, "read_small_nar", None)
    if read_small_nar is not None:
        nar = read_small_nar(info.path, check_nar_hash=False)
        if nar is not None:
            return bool(dst.add_to_store(landed, counted(_whole(nar)), check_sigs=check_sigs))
    # A store that hands out a NAR as a read function (a binary cache) needs no thread in between for a
    # small NAR; a large one is read in a thread of its own all the same, so that decompressing and
    # hashing the file overlap with writing.
    open_nar = getattr(src, "open_nar", None)
    if open_nar is not None and info.nar_size <= _SMALL_NAR:
        with open_nar(info.path, check_nar_hash=False) as read:
            return bool(dst.add_to_store(landed, counted(read), check_sigs=check_sigs))

    produce = _producer(src, info)

    if open_nar is None and 0 < info.nar_size <= _WHOLE_NAR:
        # A NAR no bigger than one chunk is taken whole, without the thread and queue of `pipe_nar`
        # (which keep several chunks in flight anyway): most paths of a closure are small, and the
        # hand-over between two threads costs more than copying them.
        parts: list[bytes] = []
        produce(parts.append)
        return bool(dst.add_to_store(landed, counted(_whole(b"".join(parts))), check_sigs=check_sigs))

    def consume(read: Read) -> bool:
        return dst.add_to_store(landed, counted(read), check_sigs=check_sigs)

    return bool(pipe_nar(produce, consume))


def _whole(data: bytes) -> Read:
    """A read function giving `data` in one piece, then the end."""
    pending = [data]
    return lambda _n: pending.pop() if pending else b""


def _producer(src: Store, info: PathInfo) -> Callable[[Sink], None]:
    """What writes the path's NAR from `src` to a sink (a cache's is not hashed on the way: the
    destination checks it)."""
    open_nar = getattr(src, "open_nar", None)

    def produce(sink: Sink) -> None:
        if open_nar is None:
            src.nar_from_path(info.path, sink, known=info)
            return
        with open_nar(info.path, check_nar_hash=False) as read:
            while chunk := read(_CHUNK):
                sink(chunk)

    return produce


def _counted_sink(
    produce: Callable[[Sink], None], on_bytes: Callable[[int], None] | None
) -> Callable[[Sink], None]:
    if on_bytes is None:
        return produce

    def counted(sink: Sink) -> None:
        def passing(data: bytes) -> None:
            sink(data)
            on_bytes(len(data))

        produce(passing)

    return counted


def copy_paths(
    src: Store,
    dst: Store,
    paths: Iterable[StorePath],
    *,
    recursive: bool = True,
    check_sigs: bool | None = None,
    on_path: Callable[[CopyResult], None] | None = None,
    plan: CopyPlan | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> list[CopyResult]:
    """Copy `paths` (and, when `recursive`, everything they refer to) from `src` to `dst`.

    Returns one result per path considered, in the order handled. `on_path` is called after each. A
    path the destination refuses (a hash mismatch, a missing signature) raises, with the paths before
    it copied and nothing of it left. `plan`, from `plan_copy`, saves computing it again. `on_bytes(n)`
    is told as NAR bytes pass (for progress).

    `check_sigs` None (the default) asks the destination to check signatures unless both ends are
    local stores (`Store.trusted_as_source`); True and False force it either way.
    """
    if check_sigs is None:
        # Only between two local stores are signatures not asked for: any other destination (a
        # daemon, a remote Nix, a cache) keeps its own policy unless told otherwise.
        check_sigs = not (src.trusted_as_source and dst.trusted_as_source)
    if plan is None:
        plan = plan_copy(src, dst, paths, recursive=recursive)
    missing = set(plan.missing)
    prefetch = getattr(src, "prefetch", None)  # a remote cache reads small NARs ahead
    if prefetch is not None:
        prefetch(plan.missing)
    results: list[CopyResult] = []

    def report(result: CopyResult) -> None:
        results.append(result)
        if on_path is not None:
            on_path(result)

    add_many = getattr(dst, "add_many", None)
    count = sum(1 for p in plan.order if p in missing)
    if add_many is not None and count > 1:

        def entries() -> Iterator[tuple[PathInfo, Callable[[Sink], None]]]:
            for path in plan.order:
                info = plan.infos[path]
                if path not in missing:
                    report(CopyResult(path, False, info.nar_size))
                    continue
                yield _landed(info), _counted_sink(_producer(src, info), on_bytes)

        add_many(
            entries(),
            count,
            check_sigs=check_sigs,
            on_sent=lambda info: report(CopyResult(info.path, True, info.nar_size)),
        )
        return results
    together = getattr(dst, "registering_together", None)
    ready = getattr(src, "nar_ready", None)
    if together is None or ready is None:
        for path in plan.order:
            info = plan.infos[path]
            # Every store's add roots the path itself, for as long as the session lasts (Nix's
            # addToStore calls addTempRoot first): no round trip of our own for it.
            copied = (
                copy_one(src, dst, info, check_sigs=check_sigs, on_bytes=on_bytes)
                if path in missing
                else False
            )
            report(CopyResult(path, copied, info.nar_size))
        return results
    # Into a local store from a source whose reads do not wait on a network (a local store, a cache's
    # files): registrations are deferred and committed together, a few dozen paths a time, and each
    # path is reported once its registration is committed.
    done: collections.deque[CopyResult] = collections.deque()

    def report_done(registered: Collection[StorePath]) -> None:
        """Report, in order, the results up to the first path copied but not in `registered`."""
        while done and (not done[0].copied or done[0].path in registered):
            report(done.popleft())

    commit_if_due = getattr(dst, "commit_registrations_if_due")  # noqa: B009 (a LocalStore's)
    commit = getattr(dst, "commit_registrations")  # noqa: B009
    with together(report_done):
        for path in plan.order:
            info = plan.infos[path]
            copied = False
            if path in missing:
                if ready(path):
                    commit_if_due(info.nar_size)
                else:  # nothing waits while holding the deferred paths' locks
                    commit()
                copied = copy_one(src, dst, info, check_sigs=check_sigs, on_bytes=on_bytes)
            done.append(CopyResult(path, copied, info.nar_size))
            report_done(())  # a path that was valid already, when nothing waits before it
    while done:  # committed (by an enclosing block, when there is one)
        report(done.popleft())
    return results


def _landed(info: PathInfo) -> PathInfo:
    """As Nix's copyStorePath: a copied path was not built where it lands."""
    return info.replace(ultimate=False) if info.ultimate else info
