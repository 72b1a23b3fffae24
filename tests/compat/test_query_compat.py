"""`xstore query`, `xstore why-depends` and `xstore path-info` side by side with Nix 2.8.

On a store Nix built (derivations, their outputs with a self-reference, text paths referring to each
other) and on the same closure imported by xstore, every query prints exactly what `nix-store -q`
prints, `why-depends` exactly what `nix why-depends` prints (colour codes included, in all four modes),
and `path-info -s/-S/--sigs` exactly what `nix path-info` prints. `-h` follows current Nix's units (2.8
still printed `2.8K`), and `--json-array` gives Nix 2.8's `--json` bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Nix
from tests.nixstores import NixStore, build_nix_store
from tests.upkeep import lines, nix_at, run_in_process, xstore, xstore_ok
from xstore.query import render_size

QUERIES = [
    "--references",
    "--referrers",
    "--requisites",
    "--referrers-closure",
    "--deriver",
    "--tree",
    "--hash",
    "--size",
]


@pytest.fixture(scope="module")
def built(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """A store Nix built (read-only for the tests)."""
    return build_nix_store(nix, tmp_path_factory.mktemp("query-nix") / "root")


@pytest.fixture(scope="module")
def imported(nix: Nix, built: NixStore, tmp_path_factory: pytest.TempPathFactory) -> NixStore:
    """Everything of `built` except the derivations, imported by xstore into a new store."""
    labels = [label for label in built.paths if not built.paths[label].endswith(".drv")]
    closure = lines(nix_at(nix, built, "-q", "--requisites", *(built.paths[label] for label in labels)))
    root = tmp_path_factory.mktemp("query-xstore") / "root"
    xstore_ok("import", "--store", root, input=built.export(nix, *closure))
    return NixStore(root, {label: built.paths[label] for label in labels})


@pytest.fixture(params=["nix-made", "xstore-made"])
def store(request: pytest.FixtureRequest, built: NixStore, imported: NixStore) -> NixStore:
    return built if request.param == "nix-made" else imported


def test_query_prints_what_nix_prints(nix: Nix, store: NixStore) -> None:
    for query in QUERIES:
        for label, path in store.paths.items():
            expected = nix_at(nix, store, "-q", query, path)
            assert run_in_process("query", "--store", store.root, query, path) == expected, (label, query)
        # Several paths at once: one set, dependencies first (or one tree after another).
        several = [store.paths[label] for label in ("text_b", "dep", "file")]
        expected = nix_at(nix, store, "-q", query, *several)
        assert run_in_process("query", "--store", store.root, query, *several) == expected, query


def test_requisites_with_outputs(nix: Nix, built: NixStore) -> None:
    drv = built.paths["drv"]
    expected = nix_at(nix, built, "-q", "--requisites", "--include-outputs", drv)
    assert built.paths["out"] in expected.decode()
    assert xstore_ok("query", "--store", built.root, "-R", "--include-outputs", drv) == expected


def test_query_refuses_two_flags_and_invalid_paths(built: NixStore, tmp_path: Path) -> None:
    two = xstore("query", "--store", built.root, "--references", "--size", built.paths["out"])
    assert two.returncode == 2
    assert b"--references and --size" in two.stderr
    missing = "/nix/store/" + "1" * 32 + "-missing"
    result = xstore("query", "--store", built.root, "--hash", missing)
    assert result.returncode == 1
    assert result.stderr.decode() == f"error: path '{missing}' is not valid in the store at '{built.root}'\n"


PAIRS = [
    ("out", "text_a"),
    ("out", "text_b"),
    ("out", "dep"),
    ("dep", "text_a"),
    ("out", "out"),
    ("text_c", "text_a"),
]


@pytest.mark.parametrize("flags", [[], ["--all"], ["--precise"], ["--all", "--precise"]], ids=str)
def test_why_depends_prints_what_nix_prints(nix: Nix, store: NixStore, flags: list[str]) -> None:
    for a, b in PAIRS:
        args = [*flags, store.paths[a], store.paths[b]]
        expected = nix.nix_cmd("why-depends", *store.store_args(), *args)
        mine = run_in_process("why-depends", "--store", store.root, *args)
        assert mine == expected, (a, b, flags)
        assert mine.count(b"\n") >= (2 if a != b else 1)


def test_why_depends_without_dependency(nix: Nix, built: NixStore) -> None:
    args = [built.paths["text_a"], built.paths["out"]]
    nix_says = nix.run([nix.nix_exe, "--extra-experimental-features", "nix-command", "why-depends",
                        *built.store_args(), *args])  # fmt: skip
    mine = xstore("why-depends", "--store", built.root, *args)
    assert (mine.returncode, mine.stdout) == (nix_says.returncode, nix_says.stdout) == (0, b"")
    message = f"'{args[0]}' does not depend on '{args[1]}'"
    assert message in nix_says.stderr.decode()
    assert mine.stderr.decode() == message + "\n"


@pytest.mark.parametrize(
    "flags", [[], ["-s"], ["-S"], ["-s", "-S"], ["--sigs"], ["-r", "-s", "-S", "--sigs"], ["-r"]]
)
def test_path_info_columns_as_nix(nix: Nix, store: NixStore, flags: list[str]) -> None:
    paths = [store.paths[label] for label in ("out", "text_a", "file")]
    expected = nix.nix_cmd("path-info", *store.store_args(), *flags, *paths)
    assert run_in_process("path-info", "--store", store.root, *flags, *paths) == expected


def test_path_info_human_readable(nix: Nix, built: NixStore) -> None:
    """The columns of Nix's `-s -S` with the sizes as current Nix renders them (2.8 wrote `2.8K`)."""
    numbers = lines(nix.nix_cmd("path-info", *built.store_args(), "-r", "-s", "-S", built.paths["out"]))
    expected = []
    for line in numbers:
        path, nar, closure = line.split("\t")
        expected.append(
            f"{path}\t{render_size(int(nar), align=True)}\t{render_size(int(closure), align=True)}"
        )
    mine = lines(xstore_ok("path-info", "--store", built.root, "-rsSh", built.paths["out"]))
    assert mine == expected
    assert any(" KiB" in line for line in mine)


@pytest.mark.parametrize("flags", [[], ["-r"], ["-r", "-S"]])
def test_path_info_json_array_is_nix_2_8(nix: Nix, store: NixStore, flags: list[str]) -> None:
    paths = [store.paths[label] for label in ("out", "file")]
    expected = nix.nix_cmd("path-info", *store.store_args(), "--json", *flags, *paths)
    mine = xstore_ok("path-info", "--store", store.root, "--json-array", *flags, *paths)
    assert mine == expected + b"\n"  # Nix 2.8 ends without a newline
    assert isinstance(json.loads(mine), list)
