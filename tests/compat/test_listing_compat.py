"""`xstore nar ls` and `xstore nar cat` side by side with `nix nar ls` and `nix nar cat`.

Text listings (plain, `-l`, `-R`, `-d` and their combinations) must be byte-identical to Nix 2.8's. JSON
listings are compared as parsed objects, since Nix 2.8 prints keys in insertion order while current Nix
(nlohmann::json `dump()`) prints them sorted and compact, which is what xstore must print. File contents
from `nar cat` must be identical. The listing matrices run xstore in-process (the same command code,
without an interpreter start-up per call); error exits run it as a real subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.compat.trees import (
    BIG_FILE_SIZE,
    File,
    Link,
    Node,
    assert_one_error_line,
    assert_same_bytes,
    describe_tree,
    materialise,
    mixed_tree,
    utf8_only,
    without_percent,
    xstore_fails,
    xstore_inprocess,
    xstore_ok,
)
from tests.helpers import Nix

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "nix-fixtures"

MIXED_PATHS = [
    "/",
    "/nested",
    "/nested/a",
    "/nested/a/b/x.sh",
    "/nested/only-empty",
    "/deep",
    "/empty-dir",
    "/big.bin",
    "/empty",
    "/run.sh",
    "/links",
    "/links/absolute",
    "/links/long",
    "/sorting",
]

# archive -> paths to list in it
LISTED: dict[str, list[str]] = {
    "mixed": MIXED_PATHS,
    "utf8": MIXED_PATHS,
    "case": ["/", "/x", "/x/foo", "/x/foo/A", "/xt_CONNMARK.h"],
    "simple": ["/", "/hello", "/link", "/empty-subdir", "/emptyfile"],
    "file": ["/"],
    "executable": ["/"],
    "symlink": ["/"],
    "empty-dir": ["/"],
}

# Archives whose names and targets are all UTF-8, so that JSON can list them.
JSON_LISTED = {name: paths for name, paths in LISTED.items() if name != "mixed"}

TEXT_FLAGS = [[], ["-l"], ["-R"], ["-lR"], ["-d"], ["-ld"], ["-Rd"], ["-lRd"], ["--long", "--recursive"]]


@pytest.fixture(scope="module")
def nars(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The archives listed here, as files (`nix nar ls` reads a file); the trees the generated ones were
    made of are beside them (`mixed.nar` of `mixed`)."""
    base = tmp_path_factory.mktemp("listing")
    out = {
        "case": FIXTURES / "case.nar",
        "simple": FIXTURES / "simple.nar",
        "empty-dir": FIXTURES / "empty-dir.nar",
    }
    built: dict[str, Node] = {
        "mixed": without_percent(mixed_tree()),
        "utf8": utf8_only(without_percent(mixed_tree())),
        "file": File(b"contents of a single file\n"),
        "executable": File(b"#!/bin/sh\n", executable=True),
        "symlink": Link(b"/some/absolute/target"),
    }
    for name, node in built.items():
        materialise(base / name, node)
        out[name] = base / f"{name}.nar"
        out[name].write_bytes(nix.nix_store("--dump", base / name))
    return out


def _cases(table: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(nar, path) for nar, paths in table.items() for path in paths]


@pytest.mark.parametrize("flags", TEXT_FLAGS, ids=lambda f: "".join(f) or "plain")
@pytest.mark.parametrize(("nar", "path"), _cases(LISTED))
def test_text_listing(nix: Nix, nars: dict[str, Path], nar: str, path: str, flags: list[str]) -> None:
    expected = nix.nix_cmd("nar", "ls", *flags, nars[nar], path)
    result = xstore_inprocess("nar", "ls", *flags, nars[nar], path)
    assert result.exit_code == 0, result.stderr
    assert_same_bytes(result.stdout, expected, "listing")


@pytest.mark.parametrize("recursive", [False, True], ids=["shallow", "recursive"])
@pytest.mark.parametrize(("nar", "path"), _cases(JSON_LISTED))
def test_json_listing(nix: Nix, nars: dict[str, Path], nar: str, path: str, recursive: bool) -> None:
    flags = ["--json", "-R"] if recursive else ["--json"]
    expected = json.loads(nix.nix_cmd("nar", "ls", *flags, nars[nar], path))
    result = xstore_inprocess("nar", "ls", *flags, nars[nar], path)
    assert result.exit_code == 0, result.stderr
    text = result.stdout.decode("utf-8")
    got = json.loads(text)
    assert got == expected
    # Current Nix: nlohmann::json dump(), compact, keys sorted, non-ASCII unescaped, one line.
    assert text == json.dumps(got, separators=(",", ":"), sort_keys=True, ensure_ascii=False) + "\n"


def test_json_listing_subprocess(nix: Nix, nars: dict[str, Path]) -> None:
    """The same through a real process, for the bytes on stdout."""
    nar = nars["utf8"]
    out = xstore_ok("nar", "ls", "--json", "-R", nar, "/")
    assert json.loads(out) == json.loads(nix.nix_cmd("nar", "ls", "--json", "-R", nar, "/"))
    assert out.endswith(b"}\n")
    assert out.count(b"\n") == 1


def test_text_listing_subprocess(nix: Nix, nars: dict[str, Path]) -> None:
    """Raw bytes of names that are not UTF-8 reach stdout unchanged."""
    nar = nars["mixed"]
    assert_same_bytes(xstore_ok("nar", "ls", "-lR", nar, "/"), nix.nix_cmd("nar", "ls", "-lR", nar, "/"))


def test_json_listing_of_non_utf8_name_fails(nars: dict[str, Path]) -> None:
    """Current Nix cannot print such a listing as JSON either (nlohmann::json refuses invalid UTF-8)."""
    stderr = xstore_fails("nar", "ls", "--json", nars["mixed"], "/")
    assert "UTF-8" in stderr


def test_json_with_directory_is_refused(nix: Nix, nars: dict[str, Path]) -> None:
    assert "useless with '--json'" in nix.nix_cmd_fails("nar", "ls", "--json", "-d", nars["simple"], "/")
    assert "useless with '--json'" in xstore_fails("nar", "ls", "--json", "-d", nars["simple"], "/", status=2)


# -- cat ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nar", ["mixed", "case", "simple"])
def test_cat_every_file(nix: Nix, nars: dict[str, Path], nar: str) -> None:
    """Every regular file of the archive, the big one and the empty ones included."""
    if nar == "mixed":
        tree = nars["mixed"].with_suffix("")
        paths = [rel for rel, kind, _ in describe_tree(tree) if kind in ("f", "x")]
    else:
        listing = json.loads(nix.nix_cmd("nar", "ls", "--json", "-R", nars[nar], "/"))
        paths = list(_regular_files(listing, b""))
    assert paths
    for rel in paths:
        path = b"/" + rel
        expected = nix.nix_cmd("nar", "cat", nars[nar], path)
        result = xstore_inprocess("nar", "cat", nars[nar], path.decode("utf-8", "surrogateescape"))
        assert result.exit_code == 0, result.stderr
        assert_same_bytes(result.stdout, expected, f"contents of {path!r}")


def _regular_files(node: dict[str, object], rel: bytes) -> list[bytes]:
    if node["type"] == "regular":
        return [rel]
    out: list[bytes] = []
    entries = node.get("entries", {})
    assert isinstance(entries, dict)
    for name, child in entries.items():
        out += _regular_files(child, rel + b"/" + name.encode() if rel else name.encode())
    return out


@pytest.mark.parametrize(
    ("nar", "path"),
    [
        ("mixed", "/big.bin"),
        ("mixed", "/empty"),
        ("mixed", "/run.sh"),
        ("mixed", b"/latin1-\xe9\xff"),
        ("mixed", b"/dir-\xfe/inner\x80"),
    ],
)
def test_cat_subprocess(nix: Nix, nars: dict[str, Path], nar: str, path: str | bytes) -> None:
    got = xstore_ok("nar", "cat", nars[nar], path)
    assert_same_bytes(got, nix.nix_cmd("nar", "cat", nars[nar], path), "contents")
    if isinstance(path, str) and path == "/big.bin":
        assert len(got) == BIG_FILE_SIZE


@pytest.mark.parametrize("path", ["/", ""])
def test_cat_root_file(nix: Nix, nars: dict[str, Path], path: str) -> None:
    """An archive whose root is a file. Nix 2.8 takes only "" for its root here (`nix nar cat X /` says
    "path '/' does not exist"; current Nix takes "/"); xstore takes both."""
    expected = nix.nix_cmd("nar", "cat", nars["file"], "")
    assert expected == b"contents of a single file\n"
    assert_same_bytes(xstore_ok("nar", "cat", nars["file"], path), expected, "contents")


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "path", "message"),
    [
        ("ls", "/nope", "does not exist"),
        ("ls", "/nested/nope", "does not exist"),
        ("ls", "/README/below-a-file", "does not exist"),
        ("cat", "/nope", "does not exist"),
        ("cat", "/nested", "not a regular file"),
        ("cat", "/links/absolute", "not a regular file"),
    ],
)
def test_errors(nix: Nix, nars: dict[str, Path], command: str, path: str, message: str) -> None:
    """Exit status 1 and one line `error: ...`, for the same paths that make Nix fail."""
    nix_stderr = nix.nix_cmd_fails("nar", command, nars["mixed"], path)
    assert message in nix_stderr
    stderr = xstore_fails("nar", command, nars["mixed"], path)
    assert message in stderr
    assert f"'{path}'" in stderr


def test_cat_root_directory_fails(nix: Nix, nars: dict[str, Path]) -> None:
    # Nix 2.8 names the root "" here ("/" does not exist for its `nar cat`).
    assert "not a regular file" in nix.nix_cmd_fails("nar", "cat", nars["mixed"], "")
    assert "not a regular file" in xstore_fails("nar", "cat", nars["mixed"], "/")


def test_listing_with_percent_in_names(mixed_nar: bytes, mixed_dir: Path, tmp_path: Path) -> None:
    """Nix 2.8 cannot list a name holding `%` (boost::bad_format_string); xstore lists it as any other."""
    nar = tmp_path / "mixed.nar"
    nar.write_bytes(mixed_nar)
    lines = xstore_ok("nar", "ls", "-R", nar, "/").split(b"\n")
    assert lines.pop() == b""
    assert sorted(lines) == sorted(_split_lines(mixed_dir))
    assert b"./special !\"#$%&'()*+,;<=>?@[\\]^_`{|}~" in lines


def _split_lines(tree: Path) -> list[bytes]:
    """`./path` of every entry, split at newlines as a line-based listing shows them."""
    return b"\n".join(b"./" + rel for rel, _, _ in describe_tree(tree) if rel).split(b"\n")


def test_errors_inprocess_match_subprocess(nars: dict[str, Path]) -> None:
    result = xstore_inprocess("nar", "cat", nars["mixed"], "/nested")
    assert result.exit_code == 1
    assert result.stdout == b""
    assert_one_error_line(result.stderr.decode())
