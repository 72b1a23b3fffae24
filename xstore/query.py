"""Queries over a store's reference graph, as `nix-store -q`, `nix why-depends` and `nix path-info`.

Everything here answers from the store interface (`query_path_info`, `nar_from_path`); referrers exist
only where a store keeps them (a local store's database), so the queries that walk them ask for a store
with `query_referrers` and refuse the others with `UnsupportedError`.

Orders follow Nix: a set of paths is printed "dependencies first" (Nix's `topoSortPaths`, reversed, which
is `storeapi.topo_sort`), a tree recurses into the references of each path in that order and marks a
path seen before with `[...]`, and `why-depends` follows shortest reference chains, ties broken by
base name. Its `--precise` mode scans each file's contents for the hash parts of the references, a block
at a time, so no file is ever read whole.

Nix: nix-store.cc (`opQuery`, `printTree`), why-depends.cc, path-info.cc, util.cc (`renderSize`).
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from xstore.errors import UnsupportedError
from xstore.nar.events import FileChunk, FileEnd, RegularFile, Symlink
from xstore.storeapi import PathInfo, Store, pipe_nar, topo_sort
from xstore.storepath import HASH_PART_LEN, StorePath

TREE_CONN: Final = "├───"
TREE_LAST: Final = "└───"
TREE_LINE: Final = "│   "
TREE_NULL: Final = "    "

ANSI_NORMAL: Final = "\x1b[0m"
ANSI_GREEN: Final = "\x1b[32;1m"
ANSI_BLUE: Final = "\x1b[34;1m"
ANSI_GREY: Final = "\x1b[38;5;244m"


@runtime_checkable
class ReferrersStore(Protocol):
    """A store that knows who refers to a path (a local store)."""

    def query_referrers(self, path: StorePath) -> set[StorePath]: ...

    def query_derivation_outputs(self, drv: StorePath) -> dict[str, StorePath]: ...

    def query_valid_derivers(self, path: StorePath) -> set[StorePath]: ...


def referrers_store(store: Store, what: str) -> ReferrersStore:
    """`store` as a store that keeps referrers, or `UnsupportedError` naming `what` was asked."""
    if not isinstance(store, ReferrersStore):
        raise UnsupportedError(f"{what} needs a local store; {store.describe()} does not keep referrers")
    return store


def deps_first(store: Store, paths: Iterable[StorePath]) -> list[StorePath]:
    """`paths` (valid in `store`) in Nix's printing order: dependencies first, ties by base name."""
    return topo_sort({p: store.require(p) for p in set(paths)})


# -- closures -----------------------------------------------------------------------------------------


def closure(
    store: Store,
    paths: Iterable[StorePath],
    *,
    flip: bool = False,
    include_outputs: bool = False,
    include_derivers: bool = False,
) -> set[StorePath]:
    """Nix's `computeFSClosure`: `paths` and everything they refer to, transitively; with `flip`,
    everything that refers to them instead. `include_outputs` adds a derivation's valid outputs (with
    `flip`: a path's valid derivers); `include_derivers` adds a path's valid deriver (with `flip`: a
    derivation's valid outputs). Raises `InvalidPathError` for a path that is not valid."""
    done: set[StorePath] = set()
    todo = list(paths)
    extra = flip or include_outputs or include_derivers
    graph = referrers_store(store, "following referrers and derivation outputs") if extra else None
    while todo:
        path = todo.pop()
        if path in done:
            continue
        info = store.require(path)
        done.add(path)
        follow: set[StorePath] = set()
        if not flip:
            follow.update(info.references)
            if include_outputs and graph is not None and path.name.endswith(".drv"):
                follow.update(graph.query_derivation_outputs(path).values())
            if include_derivers and info.deriver is not None:
                follow.add(info.deriver)
        else:
            assert graph is not None
            follow.update(graph.query_referrers(path))
            if include_outputs:
                follow.update(graph.query_valid_derivers(path))
            if include_derivers and path.name.endswith(".drv"):
                follow.update(graph.query_derivation_outputs(path).values())
        follow.discard(path)
        valid = store.query_valid_paths(follow)
        todo.extend(p for p in valid if p not in done)
    return done


def references(store: Store, paths: Iterable[StorePath]) -> list[StorePath]:
    """`nix-store -q --references`: the direct references of `paths`, dependencies first."""
    found: set[StorePath] = set()
    for path in paths:
        found.update(store.require(path).references)
    return deps_first(store, found)


def referrers(store: Store, paths: Iterable[StorePath]) -> list[StorePath]:
    """`nix-store -q --referrers`: the valid paths that refer to `paths`, dependencies first."""
    graph = referrers_store(store, "--referrers")
    found: set[StorePath] = set()
    for path in paths:
        store.require(path)
        found.update(graph.query_referrers(path))
    return deps_first(store, found)


def requisites(store: Store, paths: Iterable[StorePath], *, include_outputs: bool = False) -> list[StorePath]:
    """`nix-store -q --requisites`: the closure of `paths`, dependencies first."""
    return deps_first(store, closure(store, paths, include_outputs=include_outputs))


def referrers_closure(store: Store, paths: Iterable[StorePath]) -> list[StorePath]:
    """`nix-store -q --referrers-closure`: everything that refers to `paths`, transitively."""
    return deps_first(store, closure(store, paths, flip=True))


# -- the tree ------------------------------------------------------------------------------------------


def tree_lines(store: Store, paths: Iterable[StorePath]) -> Iterator[str]:
    """`nix-store -q --tree`: each path, then its references (dependencies first) as an indented tree;
    a path shown before is shown again as `PATH [...]` and not expanded (across all of `paths`)."""
    done: set[StorePath] = set()
    # An explicit stack (closures can be thousands of paths deep): (path, first pad, tail pad).
    stack: list[tuple[StorePath, str, str]] = [(p, "", "") for p in reversed(list(paths))]
    while stack:
        path, first_pad, tail_pad = stack.pop()
        if path in done:
            yield f"{first_pad}{path} [...]"
            continue
        done.add(path)
        yield f"{first_pad}{path}"
        info = store.require(path)
        refs = topo_sort({r: (info if r == path else store.require(r)) for r in info.references})
        children = []
        for n, ref in enumerate(refs):
            last = n + 1 == len(refs)
            children.append(
                (
                    ref,
                    tail_pad + (TREE_LAST if last else TREE_CONN),
                    tail_pad + (TREE_NULL if last else TREE_LINE),
                )
            )
        stack.extend(reversed(children))


# -- sizes ------------------------------------------------------------------------------------------------

_SIZE_UNITS: Final = "KKMGTPEZY"  # the first is for bytes, which Nix shows as KiB too


def render_size(value: int, *, align: bool = False) -> str:
    """A size as current Nix renders it (`renderSize`): `0.1 KiB` (bytes are shown as KiB too),
    `5.7 GiB`; with `align`, the number right-justified in six columns."""
    unit = 0
    magnitude = abs(value)
    while magnitude > 1024 and unit < len(_SIZE_UNITS) - 1:
        unit += 1
        magnitude //= 1024
    number = value / 1024 ** max(1, unit)
    return f"{number:6.1f} {_SIZE_UNITS[unit]}iB" if align else f"{number:.1f} {_SIZE_UNITS[unit]}iB"


def path_info_lines(
    store: Store,
    infos: list[PathInfo],
    *,
    size: bool = False,
    closure_size: dict[StorePath, int] | None = None,
    human: bool = False,
    sigs: bool = False,
) -> Iterator[str]:
    """`nix path-info` without `--json`: each path, then (when asked) its NAR size, closure size and
    signatures in tab-separated columns, the paths padded to the longest so the columns align."""
    width = max((len(info.path.path) for info in infos), default=0)

    def show(value: int) -> str:
        return "\t" + (render_size(value, align=True) if human else f"{value:11d}")

    for info in infos:
        line = info.path.path
        if size or closure_size is not None or sigs:
            line += " " * (width - len(line))
        if size:
            line += show(info.nar_size)
        if closure_size is not None:
            line += show(closure_size[info.path])
        if sigs:
            shown = (["ultimate"] if info.ultimate else []) + ([f"ca:{info.ca}"] if info.ca else [])
            line += "\t" + " ".join([*shown, *info.sigs])
        yield line


def path_info_json_array(
    infos: Iterable[PathInfo], *, closure_sizes: dict[StorePath, int] | None = None
) -> list[dict[str, object]]:
    """`nix path-info --json` as Nix 2.x printed it before the object form (2.8, as in Debian): a list
    sorted by path, each entry `path`, `narHash`, `narSize`, `references`, then only what is present:
    `ca`, `closureSize`, `deriver`, `registrationTime`, `ultimate`, `signatures`."""
    out: list[dict[str, object]] = []
    for info in sorted(infos, key=lambda i: i.path):
        entry: dict[str, object] = {
            "path": info.path.path,
            "narHash": info.nar_hash_sri(),
            "narSize": info.nar_size,
            "references": [r.path for r in info.references],
        }
        if info.ca:
            entry["ca"] = info.ca
        if closure_sizes is not None:
            entry["closureSize"] = closure_sizes[info.path]
        if info.deriver is not None:
            entry["deriver"] = info.deriver.path
        if info.registration_time:
            entry["registrationTime"] = info.registration_time
        if info.ultimate:
            entry["ultimate"] = True
        if info.sigs:
            entry["signatures"] = list(info.sigs)
        out.append(entry)
    return out


# -- why-depends ------------------------------------------------------------------------------------------

_MARGIN: Final = 32


@dataclass(slots=True)
class _Node:
    path: StorePath
    refs: list[StorePath]
    dist: float = float("inf")
    visited: bool = False
    rrefs: list[StorePath] = field(default_factory=list)


class _BailOut(Exception):  # noqa: N818 (control flow inside why_depends, never escapes)
    pass


def why_depends(
    store: Store, package: StorePath, dependency: StorePath, *, all_edges: bool = False, precise: bool = False
) -> list[str] | None:
    """`nix why-depends PACKAGE DEPENDENCY`: the lines that show how `package` comes to have
    `dependency` in its closure (a shortest chain; every edge leading there with `all_edges`; with
    `precise`, the files that hold each reference, with the text around it). None when `dependency` is
    not in the closure. The lines carry Nix's colour codes, as Nix prints them."""
    infos = store.query_closure([package])
    if dependency not in infos:
        return None
    graph = {p: _Node(p, sorted(info.references)) for p, info in infos.items()}
    for node in graph.values():
        for ref in node.refs:
            graph[ref].rrefs.append(node.path)
    # Distances to `dependency` along reference edges (all of length 1).
    graph[dependency].dist = 0
    queue: list[tuple[float, StorePath]] = [(0, dependency)]
    while queue:
        dist, path = heapq.heappop(queue)
        if dist > graph[path].dist:
            continue
        for rref in graph[path].rrefs:
            if dist + 1 < graph[rref].dist:
                graph[rref].dist = dist + 1
                heapq.heappush(queue, (dist + 1, rref))

    lines: list[str] = []
    dependency_hash = dependency.hash_part

    def print_node(node: _Node, first_pad: str, tail_pad: str) -> None:
        if precise:
            grey = ANSI_GREY if node.visited else ""
            lines.append(f"{first_pad}{grey}{'→ ' if first_pad else ''}{node.path}{ANSI_NORMAL}")
        if node.path == dependency and not all_edges and package != dependency:
            raise _BailOut
        if node.visited:
            return
        if precise:
            node.visited = True
        refs = sorted(
            (graph[r] for r in node.refs if not (r == node.path and package != dependency)),
            key=lambda n: n.dist,
        )  # stable: ties stay in base-name order, as in Nix's multimap
        refs = [n for n in refs if n.dist != float("inf")]
        hits = (
            _find_references(store, node.path, {n.path.hash_part for n in refs}, dependency_hash)
            if precise
            else {}
        )
        for n, ref in enumerate(refs):
            last = n + 1 == len(refs) if all_edges else True
            for k, hit in enumerate(hits.get(ref.path.hash_part, [])):
                first = k == 0
                lines.append(
                    tail_pad
                    + ((TREE_LAST if last else TREE_CONN) if first else (TREE_NULL if last else TREE_LINE))
                    + hit
                )
                if not all_edges:
                    break
            if not precise:
                grey = ANSI_GREY if ref.visited else ""
                lines.append(f"{first_pad}{grey}{TREE_LAST if last else TREE_CONN}{ref.path}{ANSI_NORMAL}")
                node.visited = True
            pad = tail_pad + (TREE_NULL if last else TREE_LINE)
            print_node(ref, pad, pad)

    if not precise:
        lines.append(package.path)
    with contextlib.suppress(_BailOut):
        print_node(graph[package], "", "")
    return lines


def _printable(data: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data)


def _relative(path: tuple[bytes, ...]) -> str:
    return "/".join(p.decode("utf-8", "surrogateescape") for p in path) if path else "/"


def _find_references(
    store: Store, path: StorePath, hashes: set[str], dependency_hash: str
) -> dict[str, list[str]]:
    """For each hash part in `hashes`, the lines naming the files and symlinks of `path` that hold it:
    `relative/path: …context…` (the first occurrence in each file, 32 bytes either side) and
    `relative/path -> target`, in the archive's order. Reads the path's NAR once, in blocks."""
    from xstore.nar.drive import iter_events
    from xstore.nar.parser import NarParser

    hits: dict[str, list[str]] = {}
    wanted = sorted(hashes)

    def hilite(text: str, at: int, h: str) -> str:
        colour = ANSI_GREEN if h == dependency_hash else ANSI_BLUE
        end = at + HASH_PART_LEN
        return text[:at] + colour + text[at:end] + ANSI_NORMAL + text[end:]

    def consume(read: Callable[[int], bytes]) -> None:
        scanner: _Scanner | None = None
        shown = ""
        for event in iter_events(read, NarParser()):
            if isinstance(event, RegularFile):
                shown, scanner = _relative(event.path), _Scanner(wanted)
            elif isinstance(event, FileChunk):
                assert scanner is not None
                scanner.feed(event.data)
            elif isinstance(event, FileEnd):
                assert scanner is not None
                for h, before, after in scanner.finish():
                    text = _printable(before + h.encode() + after)
                    hits.setdefault(h, []).append(f"{shown}: …{hilite(text, len(before), h)}…")
                scanner = None
            elif isinstance(event, Symlink):
                target = event.target.decode("utf-8", "surrogateescape")
                for h in wanted:
                    at = target.find(h)
                    if at >= 0:
                        hits.setdefault(h, []).append(f"{_relative(event.path)} -> {hilite(target, at, h)}")

    pipe_nar(lambda sink: store.nar_from_path(path, sink), consume)
    return hits


class _Scanner:
    """Finds the first occurrence of each of a few ASCII strings (hash parts, 32 bytes) in a file fed
    a block at a time, with up to 32 bytes of context either side, holding only a small window."""

    def __init__(self, needles: list[str]) -> None:
        self.needles = {h: h.encode() for h in needles}
        self.window = bytearray()
        self.base = 0  # file offset of window[0]
        self.found: dict[str, int] = {}  # needle -> file offset of its first occurrence
        self.contexts: dict[str, tuple[bytes, bytes]] = {}

    def feed(self, data: bytes) -> None:
        # Look again at the last 31 bytes already seen: a match may straddle the blocks.
        start = max(0, len(self.window) - HASH_PART_LEN + 1)
        self.window += data
        end = self.base + len(self.window)
        for h, needle in self.needles.items():
            if h not in self.found:
                at = self.window.find(needle, start)
                if at >= 0:
                    self.found[h] = self.base + at
        for h, at in self.found.items():
            if h not in self.contexts and at + HASH_PART_LEN + _MARGIN <= end:
                self.contexts[h] = self._context(at)
        # Keep what a later match, or the context of one still open, may need.
        keep_from = end - (_MARGIN + HASH_PART_LEN)
        for h, at in self.found.items():
            if h not in self.contexts:
                keep_from = min(keep_from, at - _MARGIN)
        if keep_from > self.base:
            del self.window[: keep_from - self.base]
            self.base = keep_from

    def _context(self, at: int) -> tuple[bytes, bytes]:
        rel = at - self.base
        before = bytes(self.window[max(0, rel - _MARGIN) : rel])
        after = bytes(self.window[rel + HASH_PART_LEN : rel + HASH_PART_LEN + _MARGIN])
        return before, after

    def finish(self) -> list[tuple[str, bytes, bytes]]:
        """(needle, bytes before, bytes after) for each needle found, in sorted order."""
        for h, at in self.found.items():
            if h not in self.contexts:
                self.contexts[h] = self._context(at)
        return [(h, *self.contexts[h]) for h in sorted(self.contexts)]
