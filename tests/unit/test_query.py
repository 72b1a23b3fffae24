"""Queries without Nix: closures both ways, Nix's printing order, the tree, why-depends (shortest chains,
ties by name, the precise scan fed in any block size), sizes as Nix renders them, path-info columns.

What Nix itself prints for the same queries is compared in `tests/compat/test_query_compat.py`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.upkeep import Spec, make_store
from xstore.casehack import CaseHackMode
from xstore.errors import InvalidPathError
from xstore.query import (
    _Scanner,
    closure,
    deps_first,
    path_info_json_array,
    path_info_lines,
    references,
    referrers,
    referrers_closure,
    render_size,
    requisites,
    tree_lines,
    why_depends,
)
from xstore.store import LocalStore
from xstore.storepath import StorePath

# a diamond: top -> left, right -> base; top -> base directly too; lone is apart.
SPEC: Spec = {
    "base": ({b"lib/base.txt": b"base\n"}, (), None),
    "left": ({b"bin/left": b"#!/bin/sh\n"}, ("base",), None),
    "right": ({b"share/right": b"right\n", b"link": b"->share/right"}, ("base",), None),
    "top": ({b"bin/top": b"#!/bin/sh\n"}, ("left", "right", "base", "top"), None),
    "lone": ({b"": b"alone\n"}, (), None),
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore.create(tmp_path / "root", case_hack=CaseHackMode.OFF) as s:
        yield s


@pytest.fixture
def paths(store: LocalStore) -> dict[str, StorePath]:
    return make_store(store, SPEC)


def test_closures_both_ways(store: LocalStore, paths: dict[str, StorePath]) -> None:
    names = {v: k for k, v in paths.items()}
    assert {names[p] for p in closure(store, [paths["left"]])} == {"left", "base"}
    assert {names[p] for p in closure(store, [paths["base"]], flip=True)} == {"base", "left", "right", "top"}
    assert {names[p] for p in closure(store, [paths["lone"]], flip=True)} == {"lone"}
    with pytest.raises(InvalidPathError):
        closure(store, [StorePath("0" * 32, "missing")])


def test_order_is_dependencies_first(store: LocalStore, paths: dict[str, StorePath]) -> None:
    order = requisites(store, [paths["top"]])
    assert order[0] == paths["base"]
    assert order[-1] == paths["top"]
    assert set(order) == {paths[n] for n in ("base", "left", "right", "top")}
    assert deps_first(store, reversed(order)) == order
    # The self-reference counts among the references and the referrers, as in Nix.
    assert references(store, [paths["top"]])[-1] == paths["top"]
    assert paths["top"] in referrers(store, [paths["top"]])
    assert referrers(store, [paths["base"]])[-1] == paths["top"]
    assert referrers_closure(store, [paths["left"]]) == [paths["left"], paths["top"]]


def test_tree_marks_repeats(store: LocalStore, paths: dict[str, StorePath]) -> None:
    out = list(tree_lines(store, [paths["top"], paths["left"]]))
    assert out[0] == paths["top"].path
    # base first (every other reference needs it), then left and right, then top itself, seen before.
    assert out[1] == f"├───{paths['base']}"
    assert out[-2] == f"└───{paths['top']} [...]"
    assert out[-1] == f"{paths['left']} [...]"
    assert sum("[...]" in line for line in out) == 4  # base twice more, top, left


def test_why_depends_shortest_chain(store: LocalStore, paths: dict[str, StorePath]) -> None:
    shown = why_depends(store, paths["top"], paths["base"])
    # top refers to base directly: that chain is the shortest.
    assert shown == [paths["top"].path, f"└───{paths['base']}\x1b[0m"]
    assert why_depends(store, paths["left"], paths["top"]) is None
    every = why_depends(store, paths["top"], paths["base"], all_edges=True)
    assert every is not None
    assert sum(paths["base"].path in line for line in every) == 3  # directly, through left and right


def test_why_depends_precise_names_files(store: LocalStore, paths: dict[str, StorePath]) -> None:
    shown = why_depends(store, paths["right"], paths["base"], precise=True)
    assert shown is not None
    hit = f"└───refs: …/nix/store/\x1b[32;1m{paths['base'].hash_part}\x1b[0m-base."
    assert any(line.startswith(hit) for line in shown), shown


CONTENT = b"".join(bytes([random.Random(n).randrange(256)]) for n in range(3000))
NEEDLES = ["a" * 32, "b" * 32, "c" * 32]


@pytest.mark.parametrize("block", [1, 7, 31, 32, 33, 64, 100, 4096])
def test_scanner_same_result_for_any_block_size(block: int) -> None:
    a, b, c = (n.encode() for n in NEEDLES)
    data = b"xx" + b + CONTENT[:500] + a + CONTENT + b + b"\n" + c  # c at the very end: nothing after it
    scanner = _Scanner(NEEDLES)
    for at in range(0, len(data), block):
        scanner.feed(data[at : at + block])
    found = scanner.finish()
    expected = []
    for needle in NEEDLES:
        at = data.find(needle.encode())
        expected.append((needle, data[max(0, at - 32) : at], data[at + 32 : at + 64]))
    assert found == expected
    assert len(scanner.window) < block + 200  # never the whole file


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, "0.0 KiB"), (100, "0.1 KiB"), (1024, "1.0 KiB"), (2000, "2.0 KiB"), (1572864, "1.5 MiB"),
     (5 << 30, "5.0 GiB"), (-2048, "-2.0 KiB")],
)  # fmt: skip
def test_render_size_as_current_nix(value: int, shown: str) -> None:
    assert render_size(value) == shown
    number, unit = shown.split()
    assert render_size(value, align=True) == f"{number:>6} {unit}"


def test_path_info_columns(store: LocalStore, paths: dict[str, StorePath]) -> None:
    infos = [store.require(paths[n]) for n in ("lone", "top")]
    out = list(path_info_lines(store, infos, size=True, closure_size={i.path: 12345678 for i in infos}))
    width = max(len(paths["top"].path), len(paths["lone"].path))
    assert [len(line.split("\t")[0]) for line in out] == [width, width]
    assert out[1].split("\t")[1:] == [f"{infos[1].nar_size:11d}", "   12345678"]
    assert list(path_info_lines(store, infos)) == [paths["lone"].path, paths["top"].path]
    human = list(path_info_lines(store, infos, closure_size={i.path: 12345678 for i in infos}, human=True))
    assert human[0].endswith("\t  11.8 MiB")
    listed = path_info_json_array(reversed(infos))
    assert [entry["path"] for entry in listed] == sorted(p.path for p in (paths["lone"], paths["top"]))
    assert [list(entry) for entry in listed] == [
        ["path", "narHash", "narSize", "references", "registrationTime"]
    ] * 2
