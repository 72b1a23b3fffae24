"""Trees, archives and commands shared by the compat tests.

Trees are described as plain data (`File`, `Link`, nested dicts of byte names) and written to a temporary
directory at run time, so that names the repository must not hold (names differing only in case, names
that are not UTF-8) never exist outside a test run. `describe_tree` reads a tree back as a sorted list of
entries, which is how two restored trees (one by Nix, one by xstore) are compared besides their dumps.

xstore runs either as a real subprocess (`run_xstore`, `xstore_ok`, `xstore_fails`: exit codes and the
bytes on stdout/stderr are exactly what a user sees) or in-process through typer's `CliRunner`
(`xstore_inprocess`: the same command code, minus interpreter start-up, for the listing matrices).
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

from typer.testing import CliRunner

from tests.helpers import Arg, Nix
from xstore.cli.app import app
from xstore.nar.encoder import NarEncoder
from xstore.nar.events import ArchiveEnd, DirectoryEnd, DirectoryStart, Event, FileChunk, FileEnd, RegularFile

XSTORE_ARGV: Final[list[str]] = [sys.executable, "-m", "xstore"]
XSTORE_TIMEOUT: Final = 600.0

# Real trees of the host (Debian: linux-libc-dev and friends). /usr/include/linux/netfilter holds names
# that collide under case folding (xt_CONNMARK.h and xt_connmark.h, among others).
USR_INCLUDE: Final = Path("/usr/include")
LINUX_HEADERS: Final = USR_INCLUDE / "linux"

# A few MiB, and not a multiple of 8, so the last content block needs padding.
BIG_FILE_SIZE: Final = 3 * (1 << 20) + 5


# -- describing and building trees ------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    data: bytes = b""
    executable: bool = False
    mode: int | None = None  # exact permission bits, overriding `executable` (0o644 / 0o755)


@dataclass(frozen=True)
class Link:
    target: bytes


Tree: TypeAlias = Mapping[bytes, "File | Link | Tree"]
Node: TypeAlias = "File | Link | Tree"


def materialise(path: str | bytes | os.PathLike[str], node: Node) -> None:
    """Create `node` at `path` (which must not exist): a file, a symlink, or a directory tree."""
    where = os.fsencode(path)
    if isinstance(node, File):
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(node.data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        mode = node.mode if node.mode is not None else (0o755 if node.executable else 0o644)
        os.chmod(where, mode)
    elif isinstance(node, Link):
        os.symlink(node.target, where)
    else:
        os.mkdir(where, 0o755)
        for name, child in node.items():
            materialise(where + b"/" + name, child)


def big_data(size: int = BIG_FILE_SIZE, seed: int = 8) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(size)


def mixed_tree() -> Tree:
    """A tree with one of everything a NAR can hold, and names that exercise the byte-order sort."""
    deep: Tree = {b"bottom": File(b"at the bottom\n")}
    for level in range(40, 0, -1):
        deep = {f"level{level:02d}".encode(): deep}
    return {
        b"README": File(b"hello\n"),
        b"empty": File(),
        b"eight": File(b"12345678"),  # exactly one 8-byte block: no padding
        b"nine": File(b"123456789"),
        b"one": File(b"x"),
        b"run.sh": File(b"#!/bin/sh\necho hi\n", executable=True),
        b"empty-exe": File(b"", executable=True),
        b"owner-exec-only": File(b"o\n", mode=0o744),  # executable: Nix looks at S_IXUSR only
        b"group-other-exec": File(b"g\n", mode=0o611),  # not executable for Nix
        b"read-only": File(b"r\n", mode=0o444),
        b"big.bin": File(big_data()),
        b"empty-dir": {},
        b"nested": {
            b"a": {b"b": {b"c": {b"deep.txt": File(b"deep\n")}, b"empty": {}, b"x.sh": File(b"x", True)}},
            b"only-empty": {b"e1": {}, b"e2": {b"e3": {}}},
        },
        b"deep": deep,
        b"name with spaces": File(b"spaces\n"),
        " naïve ünïcödé 日本語 🎉".encode(): File(b"utf-8 name\n"),
        "\u00e9-nfc".encode(): File(b"nfc\n"),
        "e\u0301-nfd".encode(): File(b"nfd\n"),
        b"latin1-\xe9\xff": File(b"not utf-8\n"),
        b"dir-\xfe": {b"inner\x80": File(b"x"), b"\xc0\xaf": Link(b"\xff")},
        b"special !\"#$%&'()*+,;<=>?@[\\]^_`{|}~": File(b"punctuation\n"),
        b"new\nline": File(b"newline in name\n"),
        b"tab\tand\x01control": File(b"controls\n"),
        b"-dash": File(b"dash\n"),
        b".hidden": File(b"hidden\n"),
        b"L" * 255: File(b"longest name\n"),
        b"sorting": {
            name: File(name)
            for name in (b"B", b"a", b"a-", b"a.b", b"a0", b"aa", b"Z", b"z", b"\x7f", b"\x80", b"\xff", b"~")
        },
        b"links": {
            b"relative": Link(b"../README"),
            b"to-dir": Link(b".."),
            b"dangling": Link(b"does/not/exist"),
            b"absolute": Link(b"/etc/passwd"),
            b"absolute-dangling": Link(b"/nonexistent/xstore/target"),
            b"self-loop": Link(b"self-loop"),
            b"with spaces": Link(b"../name with spaces"),
            b"utf8": Link("ziel/日本".encode()),
            b"not-utf8": Link(b"\xff\xfe/\x80"),
            b"long": Link(b"x/" * 2000),
        },
    }


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def filter_tree(tree: Tree, keep: Callable[[bytes, Node], bool]) -> Tree:
    """`tree` with only the entries (at any depth) for which `keep(name, node)` holds."""
    return {
        name: node if isinstance(node, File | Link) else filter_tree(node, keep)
        for name, node in tree.items()
        if keep(name, node)
    }


def utf8_only(tree: Tree) -> Tree:
    """`tree` without the entries whose name or symlink target is not UTF-8 (JSON cannot list them)."""
    return filter_tree(
        tree, lambda name, node: _is_utf8(name) and (not isinstance(node, Link) or _is_utf8(node.target))
    )


def without_percent(tree: Tree) -> Tree:
    """`tree` without names or targets holding `%`, which Nix 2.8's `nix nar ls` takes for a format
    string (it fails with boost::bad_format_string; fixed in later Nix)."""
    return filter_tree(
        tree, lambda name, node: b"%" not in name and (not isinstance(node, Link) or b"%" not in node.target)
    )


def collision_tree() -> Tree:
    """Names that collide under Nix's ASCII fold (files, directories, symlinks; nested; many per key)."""
    return {
        b"Makefile": File(b"upper\n"),
        b"makefile": File(b"lower\n"),
        b"MAKEFILE": File(b"all caps\n", executable=True),
        b"README": File(b"r\n"),
        b"readme": Link(b"README"),
        b"Dir": {b"x": File(b"1"), b"X": File(b"2")},
        b"dir": {b"y": File(b"3"), b"Y": {b"z": File(b"4"), b"Z": Link(b"/z")}},
        b"DIR": {},
        b"a": File(b"a"),
        b"A": File(b"A"),
        b"a-1": File(b"not a collision"),
        b"\xc3\xa9": File(b"e acute, lower"),  # not folded by strcasecmp in the C locale
        b"\xc3\x89": File(b"E acute, upper"),
        b"nocase": {b"1": File(b"1"), b"_": File(b"_")},
    }


def git_tree() -> Tree:
    """A project with a `.git` directory at the top and a `.git` file (a submodule) further down."""
    return {
        b".git": {b"HEAD": File(b"ref: refs/heads/main\n"), b"objects": {b"ab": {b"cdef": File(b"blob")}}},
        b".gitignore": File(b"*.o\n"),
        b"x.git": File(b"not a git dir\n"),
        b"src": {
            b"main.c": File(b"int main(void) { return 0; }\n"),
            b"sub": {b".git": File(b"gitdir: ../../.git/modules/sub\n"), b"lib.c": File(b"\n")},
        },
        b"build.sh": File(b"#!/bin/sh\n", executable=True),
    }


# -- reading trees back -----------------------------------------------------------------------------------


def describe_tree(root: str | bytes | os.PathLike[str]) -> list[tuple[bytes, str, bytes]]:
    """Every entry under `root` (and `root` itself as `b""`), sorted by path: (path, kind, detail).

    kind is "d", "f", "x" (executable file) or "l"; detail is a symlink's target or a file's SHA-256.
    """
    out: list[tuple[bytes, str, bytes]] = []

    def visit(path: bytes, rel: bytes) -> None:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            out.append((rel, "l", os.readlink(path)))
        elif stat.S_ISDIR(st.st_mode):
            out.append((rel, "d", b""))
            with os.scandir(path) as it:
                names = sorted(os.fsencode(e.name) for e in it)
            for name in names:
                visit(path + b"/" + name, rel + b"/" + name if rel else name)
        else:
            assert stat.S_ISREG(st.st_mode), f"unexpected file type at {path!r}"
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest().encode()
            out.append((rel, "x" if st.st_mode & stat.S_IXUSR else "f", digest))

    visit(os.fsencode(root), b"")
    return sorted(out)


def tree_names(root: str | bytes | os.PathLike[str]) -> list[bytes]:
    """The sorted relative paths of everything under `root`."""
    return [path for path, _, _ in describe_tree(root) if path]


def assert_restored_modes(root: str | bytes | os.PathLike[str]) -> None:
    """xstore restores files as exactly 0644/0755 and directories as 0755, whatever the umask."""
    top = os.fsencode(root)
    for rel, kind, _ in describe_tree(top):
        if kind == "l":
            continue
        path = top + b"/" + rel if rel else top
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        expected = 0o644 if kind == "f" else 0o755
        assert mode == expected, f"{path!r} has mode {mode:o}, expected {expected:o}"


# -- bytes -------------------------------------------------------------------------------------------------


def first_difference(a: bytes, b: bytes) -> int | None:
    """Offset of the first byte where `a` and `b` differ (or where the shorter one ends), or None."""
    if a == b:
        return None
    n = min(len(a), len(b))
    lo, hi = 0, n
    while hi - lo > 4096:  # binary search on equal prefixes, then a short scan
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return n


def assert_same_bytes(got: bytes, expected: bytes, what: str = "archive") -> None:
    """Byte equality with a short message (pytest's diff of large bytes objects is slow and huge)."""
    offset = first_difference(got, expected)
    if offset is not None:
        raise AssertionError(
            f"{what} differs at byte {offset} (sizes {len(got)} and {len(expected)}): "
            f"{got[offset : offset + 48]!r} != {expected[offset : offset + 48]!r}"
        )


def assert_same_file(got: Path, expected: Path, what: str = "archive") -> None:
    assert_same_bytes(got.read_bytes(), expected.read_bytes(), what)


def nar_of(events: Iterable[Event]) -> bytes:
    """Encode events with xstore's encoder (which checks the order and names as current Nix does)."""
    encoder = NarEncoder()
    return b"".join(encoder.send(event) for event in events)


def flat_directory_nar(entries: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A NAR of a directory holding regular files `name -> contents`, in the order given."""
    events: list[Event] = [DirectoryStart(())]
    for name, data in entries:
        events += [RegularFile((name,), False, len(data), 0), FileChunk(data), FileEnd((name,))]
    events += [DirectoryEnd(()), ArchiveEnd(0)]
    return nar_of(events)


# -- running xstore -----------------------------------------------------------------------------------------


def _xstore_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "XSTORE_DEBUG"}
    env["LC_ALL"] = "C.UTF-8"
    return env


def run_xstore(*args: Arg, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`xstore ARGS...` as a real subprocess (`python -m xstore`), stdout and stderr captured."""
    return subprocess.run(
        [*XSTORE_ARGV, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env=_xstore_env(),
        timeout=XSTORE_TIMEOUT,
        check=False,
    )


def _shown(args: Iterable[Arg]) -> str:
    return " ".join(os.fsdecode(a) for a in args)


def xstore_ok(*args: Arg, input: bytes | None = None) -> bytes:
    """`xstore ARGS...`, which must succeed; returns stdout."""
    result = run_xstore(*args, input=input)
    if result.returncode != 0:
        raise AssertionError(
            f"`xstore {_shown(args)}` exited with status {result.returncode}:\n"
            + result.stderr.decode("utf-8", "replace")
        )
    return result.stdout


def xstore_fails(*args: Arg, input: bytes | None = None, status: int = 1) -> str:
    """`xstore ARGS...`, which must fail with `status` (1, or 2 for usage errors) and one line
    `error: ...` on stderr; returns it."""
    result = run_xstore(*args, input=input)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == status, f"`xstore {_shown(args)}` exited with {result.returncode}:\n{stderr}"
    assert_one_error_line(stderr)
    return stderr


def assert_one_error_line(stderr: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert lines[0].startswith("error: "), f"expected 'error: ...', got {stderr!r}"
    assert "Traceback" not in stderr


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


def xstore_inprocess(*args: str | os.PathLike[str], input: bytes | None = None) -> CliResult:
    """`xstore ARGS...` run in this process through typer's CliRunner (no interpreter start-up)."""
    result = CliRunner().invoke(app, [os.fspath(a) for a in args], input=input, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout_bytes, result.stderr_bytes)


# -- running Nix into files ------------------------------------------------------------------------------


def nix_store_to_file(nix: Nix, out: Path, *args: Arg) -> Path:
    """`nix-store ARGS...` with stdout written to `out` (for archives too large to hold twice)."""
    with open(out, "wb") as f:
        result = subprocess.run(
            [nix.nix_store_exe, *args],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.PIPE,
            env=dict(nix.env),
            timeout=600,
            check=False,
        )
    if result.returncode != 0:
        raise AssertionError(
            f"`nix-store {_shown(args)}` exited with status {result.returncode}:\n"
            + result.stderr.decode("utf-8", "replace")
        )
    return out


def nix_restore_file(nix: Nix, dest: Path, nar: Path, *options: Arg) -> None:
    """`nix-store [OPTIONS] --restore DEST < NAR`."""
    with open(nar, "rb") as f:
        result = subprocess.run(
            [nix.nix_store_exe, *options, "--restore", dest],
            stdin=f,
            capture_output=True,
            env=dict(nix.env),
            timeout=600,
            check=False,
        )
    if result.returncode != 0:
        raise AssertionError(
            f"`nix-store --restore {dest}` exited with status {result.returncode}:\n"
            + result.stderr.decode("utf-8", "replace")
        )


CASE_HACK_ON: Final[tuple[str, ...]] = ("--option", "use-case-hack", "true")
