"""`nix-store --export` streams in and out of stores: the import and export pipelines.

Export works from any store: the paths in Nix's order (dependencies first, `topo_sort`), each as its
marker, its NAR from `Store.nar_from_path` (original names from a case-hacked store, re-hashed on the
way so a modified path is refused) and its trailer. Nix: export-import.cc (`exportPaths`).

Import goes into a local store through the one add transaction (`store_add.PathAdder`): the stream is
parsed by `exportstream.ExportParser`, each NAR unpacked into a private temporary directory inside the
store as it arrives (constant memory; Nix buffers each NAR whole), and only the trailer after the NAR
names the path, which is then checked, moved into place and registered. A bad stream leaves nothing of
the path being imported; paths completed before it stay valid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from xstore.exportstream import PATH_MARKER, STREAM_END, ExportParser, PathEnd, PathStart, StreamEnd, trailer
from xstore.nar.events import NEED_DATA, Event
from xstore.records import FrozenRecord, setfield
from xstore.storeapi import PathInfo, Read, Sink, Store, topo_sort
from xstore.storepath import StorePath

TYPE_CHECKING = False  # not `from typing import`: an export loads neither typing nor the import side
if TYPE_CHECKING:
    from typing import Final

    from xstore.store import LocalStore
    from xstore.store_add import PathAdder

CHUNK: Final = 1 << 20


def export_order(store: Store, paths: Iterable[StorePath]) -> list[StorePath]:
    """The order `nix-store --export` writes `paths` in (dependencies first, ties by name). Raises
    `InvalidPathError` for a path the store does not have, `XstoreError` for a reference cycle."""
    return topo_sort({p: store.require(p) for p in set(paths)})


def export_paths(
    store: Store,
    paths: Iterable[StorePath],
    sink: Sink,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[StorePath]:
    """Write the export stream of `paths` (dependencies first, in Nix's order) to `sink`.

    Returns the paths in the order written. Raises `InvalidPathError`, or `HashMismatchError` when a
    path's contents changed since it was registered (the sink has then received part of the stream).
    `progress` is called with the number of NAR bytes written so far, after each path.
    """
    order = export_order(store, paths)
    done = 0
    for path in order:
        info = store.require(path)
        sink(PATH_MARKER)
        done += store.nar_from_path(path, sink, known=info)
        sink(trailer(path, info.references, info.deriver))
        if progress is not None:
            progress(done)
    sink(STREAM_END)
    return order


class ImportResult(FrozenRecord):
    __slots__ = ("path", "imported")  # noqa: RUF023 (the fields' order)
    path: StorePath
    imported: bool  # False: it was valid already (its NAR matched)

    def __init__(self, path: StorePath, imported: bool) -> None:
        setfield(self, "path", path)
        setfield(self, "imported", imported)


def _drive(read: Read, parser: ExportParser) -> Iterable[PathStart | PathEnd | StreamEnd | Event]:
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            parser.receive_data(read(CHUNK))
            continue
        yield event
        if type(event) is StreamEnd:
            return


def import_stream(
    store: LocalStore,
    read: Read,
    *,
    on_path: Callable[[ImportResult], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[ImportResult]:
    """Import every path of the export stream read from `read(n)` into `store`.

    Each path's references must be valid in the store or come earlier in the stream. Paths already
    valid are skipped after their NAR is checked against the registered hash (`HashMismatchError`
    otherwise). On an error the path being imported leaves nothing behind; earlier paths stay
    valid. `on_path` is called after each path, `progress` with the stream offset about once a
    megabyte. Raises `ExportStreamError`, `NarError`, `InvalidPathError`, `HashMismatchError`,
    `RestoreError` (a full disk, for one).
    """
    from xstore.store_add import PathAdder

    parser = ExportParser(whole_files=True)  # the events go to a tree writer
    results: list[ImportResult] = []
    adder: PathAdder | None = None
    last = 0

    def counted(n: int) -> bytes:
        nonlocal last
        data = read(n)
        if progress is not None and parser.offset - last >= CHUNK:
            last = parser.offset
            progress(last)
        return data

    try:
        for event in _drive(counted if progress is not None else read, parser):
            if isinstance(event, PathStart):
                adder = PathAdder(store)
            elif isinstance(event, PathEnd):
                assert adder is not None
                info = PathInfo(event.path, event.nar_hash, event.nar_size, event.references, event.deriver)
                current, adder = adder, None
                result = ImportResult(event.path, current.commit(info))
                results.append(result)
                if on_path is not None:
                    on_path(result)
            elif not isinstance(event, StreamEnd):
                assert adder is not None
                adder.handle(event)
    except BaseException:
        if adder is not None:
            adder.abort()
        raise
    if progress is not None:
        progress(parser.offset)
    return results


def list_stream(read: Read) -> list[PathEnd]:
    """The paths of an export stream, in order (each with its trailer, NAR hash and size, and offsets),
    validating every NAR but writing nothing."""
    return [event for event in _drive(read, ExportParser()) if isinstance(event, PathEnd)]
