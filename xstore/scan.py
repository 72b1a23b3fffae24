"""The pre-flight scan: which names of a tree, a NAR or an export stream a case-insensitive filesystem
cannot keep apart, before anything is restored.

Each source is walked directory by directory into `casehack.NameScanner`: a tree on disk (its
case-hack suffixes removed, so a tree Nix restored with the hack reports what its archive would), a NAR
(plain or compressed, through the one NAR parser), or an export stream, which gets one report per store
path. Findings come out sorted by directory, so the same archive gives the same report however it was
read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xstore.casehack import NameScanner, unhack_name
from xstore.errors import NarInfoError
from xstore.exportstream import ExportParser, PathEnd, PathStart, StreamEnd
from xstore.nar.drive import iter_events
from xstore.nar.events import NEED_DATA, DirectoryEnd, DirectoryStart, Event, RegularFile, Symlink
from xstore.sniff import Kind, Read, expect, open_input
from xstore.storepath import StorePath

if TYPE_CHECKING:
    from xstore.storeapi import Store

Directory = tuple[tuple[bytes, ...], list[bytes]]


def tree_directories(root: bytes) -> Iterator[Directory]:
    """Each directory of the tree at `root` (top down) with its entries' names, suffixes removed."""

    def fail(e: OSError) -> None:
        raise e

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        rel = os.path.relpath(dirpath, root)
        parts = () if rel == b"." else tuple(rel.split(b"/"))
        yield tuple(unhack_name(p) for p in parts), [unhack_name(n) for n in dirnames + filenames]


class _Collector:
    """Turns a NAR's events into (directory, names) pairs as each directory closes."""

    def __init__(self) -> None:
        self.open: list[tuple[tuple[bytes, ...], list[bytes]]] = []

    def feed(self, event: Event) -> Directory | None:
        if isinstance(event, DirectoryStart | RegularFile | Symlink):
            path = event.path
            if path and self.open:
                self.open[-1][1].append(path[-1])
            if isinstance(event, DirectoryStart):
                self.open.append((path, []))
        elif isinstance(event, DirectoryEnd):
            return self.open.pop()
        return None


def nar_directories(read: Read) -> Iterator[Directory]:
    """Each directory of the NAR read with `read` with its entries' names."""
    collector = _Collector()
    for event in iter_events(read, contents=False):
        found = collector.feed(event)
        if found is not None:
            yield found


@dataclass(slots=True)
class PathScan:
    """The scan of one store path (of an export stream, or of a store or binary cache). `source` says
    what was read: the NAR, or a cache's `.ls` listing (no NAR downloaded at all)."""

    path: StorePath
    scanner: NameScanner
    source: str = "nar"


def scan_export(read: Read) -> list[PathScan]:
    """One scan per store path of the export stream read with `read`."""
    parser = ExportParser()
    results: list[PathScan] = []
    scanner = NameScanner()
    collector = _Collector()
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            parser.receive_data(read(1 << 20))
        elif isinstance(event, PathStart):
            scanner, collector = NameScanner(), _Collector()
        elif isinstance(event, PathEnd):
            results.append(PathScan(event.path, scanner))
        elif isinstance(event, StreamEnd):
            return results
        else:
            found = collector.feed(event)
            if found is not None:
                scanner.add_directory(*found)


def scan_file(read: Read, name: str) -> tuple[Kind, NameScanner | list[PathScan]]:
    """Scan a NAR or an export stream (either possibly compressed): one scanner for a NAR, one per
    store path for an export stream. Raises `WrongFormatError` for anything else."""
    kind, _, read = open_input(read)
    if kind is Kind.EXPORT:
        return kind, scan_export(read)
    expect(kind, Kind.NAR, name)
    scanner = NameScanner()
    for where, names in nar_directories(read):
        scanner.add_directory(where, names)
    return Kind.NAR, scanner


def scan_tree(root: bytes) -> NameScanner:
    scanner = NameScanner()
    for where, names in tree_directories(root):
        scanner.add_directory(where, names)
    return scanner


# -- store paths in a store or a binary cache ------------------------------------------------------------


def listing_directories(text: bytes, whence: str) -> Iterator[Directory]:
    """Each directory of a `.ls` listing (`{"version": 1, "root": ...}`, as Nix writes them) with its
    entries' names. Raises `NarInfoError` for text that is no such listing (`whence` names it)."""
    try:
        listing: Any = json.loads(text)
    except ValueError as e:
        raise NarInfoError(f"the listing {whence} is not JSON: {e}") from None
    except RecursionError:
        raise NarInfoError(f"the listing {whence} is nested too deeply to be a NAR listing") from None
    root = listing.get("root") if isinstance(listing, dict) else None
    if not isinstance(root, dict) or listing.get("version") != 1:
        raise NarInfoError(f"the listing {whence} is not a version 1 NAR listing")
    todo: list[tuple[tuple[bytes, ...], dict[str, Any]]] = [((), root)]
    while todo:
        where, node = todo.pop()
        if node.get("type") != "directory":
            continue
        entries = node.get("entries")
        if not isinstance(entries, dict):
            raise NarInfoError(f"the listing {whence} has a directory without entries")
        try:
            names = [name.encode("utf-8", "surrogateescape") for name in entries]
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON, which no file name is
            raise NarInfoError(f"the listing {whence} has a name that is not text") from None
        yield where, names
        for name, child in zip(names, entries.values(), strict=True):
            if not isinstance(child, dict):
                raise NarInfoError(f"the listing {whence} has an entry that is not an object")
            todo.append(((*where, name), child))


def scan_store_paths(store: Store, paths: Iterable[StorePath]) -> list[PathScan]:
    """One scan per store path of `store`, in the order given: from the cache's `.ls` listing where it
    has one (nothing else is downloaded), else from the path's NAR, streamed and checked."""
    from xstore.storeapi import Sink, pipe_nar

    results = []
    listing_of = getattr(store, "listing", None)
    for path in paths:
        scanner = NameScanner()
        text = listing_of(path) if listing_of is not None else None
        if text is not None:
            for where, names in listing_directories(text, f"'{path.hash_part}.ls' in {store.describe()}"):
                scanner.add_directory(where, names)
            results.append(PathScan(path, scanner, "listing"))
            continue

        def produce(sink: Sink, path: StorePath = path) -> None:
            store.nar_from_path(path, sink)

        def consume(read: Read, scanner: NameScanner = scanner) -> None:
            for where, names in nar_directories(read):
                scanner.add_directory(where, names)

        pipe_nar(produce, consume)
        results.append(PathScan(path, scanner, "nar"))
    return results
