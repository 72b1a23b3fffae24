"""Chroot stores made by the real Nix, for the store, import and export tests.

Each builder makes a Nix 2.8 chroot store at `ROOT` (store directory `ROOT/nix/store`, database
`ROOT/nix/var/nix/db/db.sqlite`, logical store directory `/nix/store`) with Nix's own tools, and returns a
`NixStore`: the root plus the logical store paths it made, by label. Nothing here writes a store by hand,
so the stores are what xstore must read, and the yardstick for what it writes.

- `build_nix_store`: an added file and an added tree (`nix-store --add`), a chain of text paths with
  references (`builtins.toFile` through `nix-instantiate --read-write-mode --eval`), and two real
  derivations built with `nix-build --store ROOT`, whose outputs have runtime references (one of them to
  itself), a deriver, and names that collide under case folding.
- `build_case_closure`: an added tree full of case collisions (ASCII, and Unicode ones that only an
  APFS-like fold catches), and a built output that copies it, adds collisions of its own and refers to it.

Source trees with colliding names are written to a temporary directory at run time: the repository must
never hold names that differ only in case (STYLE.md).

How Nix 2.8 behaves here, which the options below follow:

- A build into a chroot store is always sandboxed on Linux, whatever `sandbox` says (Nix forces a chroot
  when the real store directory differs from the logical one). The builder sees only the store paths it
  needs plus `sandbox-paths`, so `/bin /lib /lib64 /usr` lend it the host's `/bin/sh` and coreutils. Its
  environment has no useful `PATH` (Nix sets `/path-not-set`), hence `PATH` in the derivation. It runs
  in a user namespace; this needs root, or unprivileged user namespaces.
- `build-users-group = ''` makes Nix build as the calling user instead of as `nixbld1`, and makes the
  store directory 0755 root:root instead of 1775 root:nixbld, so the store does not depend on whether the
  machine has a `nixbld` group.
- `substituters = ''`: otherwise `nix-build` first asks cache.nixos.org (seconds of retries offline).
- `nix-store --store ROOT --dump /nix/store/...` does not go through the store: 2.8 dumps the literal
  path from the host file system (and has already written the NAR header when it fails). `NixStore.dump`
  therefore dumps `ROOT/nix/store/...`; `nix store dump-path --store ROOT` would take the logical path.
- `nix-instantiate --eval` prints unevaluated list elements as `<CODE>` unless `--strict` is given;
  `--json` gives the paths without quoting rules to undo.
- Outputs of built derivations are registered with `ultimate: true`; added and text paths are not.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

from tests.helpers import Arg, Nix, require_or_skip

# Options given to every Nix command run on a fixture store (see the module docstring).
STORE_OPTIONS: Final[tuple[str, ...]] = (
    "--option", "build-users-group", "",
    "--option", "substituters", "",
)  # fmt: skip
BUILD_OPTIONS: Final[tuple[str, ...]] = ("--option", "sandbox-paths", "/bin /lib /lib64 /usr")

# The file and text paths have the contents of the examples in the fact sheet, so their store
# paths are known in advance (they depend only on names and contents).
FILE_NAME: Final = "f1.txt"
FILE_CONTENTS: Final = b"hello\n"
FILE_PATH: Final = "/nix/store/kc6j97s74i9f7h7lb31bmqzb2r7jfdil-f1.txt"
TEXT_A_PATH: Final = "/nix/store/12wigjpizrn8axaqxj288q1b751qmwya-a"
TEXT_B_PATH: Final = "/nix/store/kbnsdqvza4r1hzcr5vs2bhx8kv150g37-b"
TEXT_C_PATH: Final = "/nix/store/kg18idcagfmr66qabqpqii5l02ghh86g-c"

# a <- b <- c, and c refers to a as well.
TEXTS_NIX: Final = """
  a = builtins.toFile "a" "x";
  b = builtins.toFile "b" "ref ${a}";
  c = builtins.toFile "c" "ref ${b} ${a}";
"""

# Relative paths inside the `out` of `build_nix_store`.
OUT_COLLISIONS: Final[tuple[tuple[str, str], ...]] = (
    ("include/xt_CONNMARK.h", "include/xt_connmark.h"),
    ("share/terminfo/E", "share/terminfo/e"),
)
OUT_EXECUTABLE: Final = "bin/hello"
OUT_SYMLINK: Final = "share/doc"  # -> ../include

# The two derivations of `build_nix_store`. `dep` refers to the text path a; `out` refers to `dep`, to
# the text path c (which brings a and b into its closure) and to itself. The shell scripts avoid `${`
# except where Nix must substitute, and `''` (which ends a Nix indented string).
DERIVATIONS_NIX: Final = (
    "let\n"
    + TEXTS_NIX
    + """
  sh = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  dep = sh "xstore-fixture-dep" ''
    set -eu
    mkdir -p $out/lib
    printf 'data of %s\\n' ${a} > $out/lib/dep.txt
  '';
  out = sh "xstore-fixture" ''
    set -eu
    mkdir -p $out/bin $out/include $out/share/terminfo/E $out/share/terminfo/e $out/etc/empty
    printf '#define XT_CONNMARK 1\\n' > $out/include/xt_CONNMARK.h
    printf '#define xt_connmark 1\\n' > $out/include/xt_connmark.h
    printf 'Eterm\\n' > $out/share/terminfo/E/Eterm
    printf 'eterm\\n' > $out/share/terminfo/e/eterm
    ln -s ../include $out/share/doc
    printf '#!/bin/sh\\n# installed in %s\\nexec cat %s %s/lib/dep.txt\\n' \\
      "$out" ${c} ${dep} > $out/bin/hello
    chmod 0755 $out/bin/hello
  '';
in [ dep out ]
"""
)

# The case tree of `build_case_closure`, as (relative path, kind, contents or target). Groups of names that
# collide are in CASE_COLLISIONS (ASCII fold, what Nix's case hack catches) and CASE_UNICODE_COLLISIONS
# (only a Unicode or normalising fold, such as APFS's, catches them).
TreeEntry: TypeAlias = tuple[bytes, str, bytes]
CASE_TREE: Final[tuple[TreeEntry, ...]] = (
    (b"README", "file", b"upper\n"),
    (b"ReadMe", "file", b"mixed\n"),
    (b"readme", "file", b"lower\n"),
    (b"Makefile", "file", b"all:\n"),
    (b"makefile", "file", b"all: lower\n"),
    (b"Dir", "dir", b""),
    (b"Dir/A.txt", "file", b"A\n"),
    (b"Dir/a.txt", "file", b"a\n"),
    (b"dir", "dir", b""),
    (b"dir/b", "file", b"b\n"),
    (b"DIR", "symlink", b"dir"),
    (b"Foo", "file", b"file Foo\n"),
    (b"foo", "dir", b""),
    (b"foo/bar", "file", b"bar\n"),
    (b"foo/BAR", "exec", b"#!/bin/sh\necho BAR\n"),
    (b"x.h", "exec", b"#!/bin/sh\necho x\n"),
    (b"X.H", "exec", b"#!/bin/sh\necho X\n"),
    (b"nested", "dir", b""),
    (b"nested/deep", "dir", b""),
    (b"nested/deep/Name", "file", b"1\n"),
    (b"nested/deep/NAME", "file", b"2\n"),
    (b"nested/deep/name", "file", b"3\n"),
    (b"nested/deep/nAmE", "symlink", b"name"),
    (b"nested/deep/Empty", "dir", b""),
    (b"nested/deep/empty", "dir", b""),
    ("caf\u00e9".encode(), "file", b"nfc lower\n"),
    ("CAF\u00c9".encode(), "file", b"nfc upper\n"),
    ("cafe\u0301".encode(), "file", b"nfd lower\n"),
    ("\u00c5ngstr\u00f6m".encode(), "file", b"A ring\n"),
    ("\u212bngstr\u00f6m".encode(), "file", b"angstrom sign\n"),
)
CASE_COLLISIONS: Final[tuple[tuple[bytes, ...], ...]] = (
    (b"README", b"ReadMe", b"readme"),
    (b"Makefile", b"makefile"),
    (b"DIR", b"Dir", b"dir"),
    (b"Foo", b"foo"),
    (b"X.H", b"x.h"),
    (b"Dir/A.txt", b"Dir/a.txt"),
    (b"foo/BAR", b"foo/bar"),
    (b"nested/deep/NAME", b"nested/deep/Name", b"nested/deep/nAmE", b"nested/deep/name"),
    (b"nested/deep/Empty", b"nested/deep/empty"),
)
CASE_UNICODE_COLLISIONS: Final[tuple[tuple[bytes, ...], ...]] = (
    ("CAF\u00c9".encode(), "caf\u00e9".encode(), "cafe\u0301".encode()),
    ("\u00c5ngstr\u00f6m".encode(), "\u212bngstr\u00f6m".encode()),
)

# `out` of `build_case_closure`: a copy of the case tree, collisions of its own, and a reference to the tree.
CASE_DERIVATION_NIX: Final = """
let tree = builtins.storePath "@TREE@"; in
derivation {
  name = "xstore-case-copy";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    set -eu
    mkdir -p $out/Lib $out/lib
    cp -R ${tree} $out/tree
    printf 'Lib\\n' > $out/Lib/Data
    printf 'lib\\n' > $out/lib/data
    printf '%s\\n' ${tree} > $out/lib/TREE
    printf 'upper\\n' > $out/lib/Tree
  '' ];
}
"""
CASE_OUT_COLLISIONS: Final[tuple[tuple[str, ...], ...]] = (
    ("Lib", "lib"),
    ("lib/TREE", "lib/Tree"),
    ("tree/README", "tree/ReadMe", "tree/readme"),
)


@dataclass(frozen=True)
class NixStore:
    """A chroot store made by the real Nix: `root` (the store is `root/nix/store`), and the logical
    store paths (`/nix/store/<hash>-<name>`) it holds, by label.

    The methods run Nix 2.8 on this store and return what it printed; each raises `NixCommandError` if
    Nix fails (`verify` only when told to expect success). Treat the store as read-only unless it was
    built for the test alone.
    """

    root: Path
    paths: dict[str, str]

    @property
    def store_dir(self) -> Path:
        """The real store directory, `root/nix/store`."""
        return self.root / "nix" / "store"

    @property
    def db(self) -> Path:
        """Nix's database, `root/nix/var/nix/db/db.sqlite`."""
        return self.root / "nix" / "var" / "nix" / "db" / "db.sqlite"

    def labels(self) -> dict[str, str]:
        """Labels by logical path (the inverse of `paths`), for readable assertions."""
        return {path: label for label, path in self.paths.items()}

    def real_path(self, path: str) -> Path:
        """Where the logical store path `path` (or a label of one) is on disk."""
        logical = self.paths.get(path, path)
        return self.root / logical.lstrip("/")

    def store_args(self) -> list[Arg]:
        """`--store ROOT` and the fixture options, for a Nix command of your own on this store."""
        return ["--store", self.root, *STORE_OPTIONS]

    def export(self, nix: Nix, *paths: str) -> bytes:
        """`nix-store --export PATHS...`: the export stream, paths given as logical paths or labels."""
        return nix.nix_store(*self.store_args(), "--export", *self._resolve(paths))

    def path_info(self, nix: Nix, *paths: str, recursive: bool = False) -> list[dict[str, Any]]:
        """`nix path-info --json [-r] PATHS...` as Nix 2.8 prints it: a list sorted by path."""
        flags = ["--json", *(["--recursive"] if recursive else [])]
        out = nix.nix_cmd("path-info", *self.store_args(), *flags, *self._resolve(paths))
        infos = json.loads(out)
        assert isinstance(infos, list), infos
        return infos

    def info(self, nix: Nix, path: str) -> dict[str, Any]:
        """The `nix path-info --json` entry of one path (a logical path or a label)."""
        (entry,) = self.path_info(nix, path)
        return entry

    def verify(
        self, nix: Nix, *, check_contents: bool = True, expect_success: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """`nix-store --verify [--check-contents]`; raises unless it exits as `expect_success` says."""
        argv: list[Arg] = [nix.nix_store_exe, *self.store_args(), "--verify"]
        if check_contents:
            argv.append("--check-contents")
        return nix.run(argv, expect_success=expect_success)

    def query_references(self, nix: Nix, path: str) -> list[str]:
        """`nix-store -q --references PATH`: the direct references, in Nix's order (topologically
        sorted, dependencies first, a self-reference last; `path_info` has them sorted)."""
        return _lines(nix.nix_store(*self.store_args(), "-q", "--references", *self._resolve([path])))

    def query_requisites(self, nix: Nix, *paths: str) -> list[str]:
        """`nix-store -q --requisites PATHS...`: the closure, dependencies first."""
        return _lines(nix.nix_store(*self.store_args(), "-q", "--requisites", *self._resolve(paths)))

    def query_deriver(self, nix: Nix, path: str) -> str | None:
        """`nix-store -q --deriver PATH`, or None where Nix prints `unknown-deriver`."""
        (deriver,) = _lines(nix.nix_store(*self.store_args(), "-q", "--deriver", *self._resolve([path])))
        return None if deriver == "unknown-deriver" else deriver

    def dump(self, nix: Nix, path: str) -> bytes:
        """The NAR of a store path, by `nix-store --dump ROOT/nix/store/...` (2.8's `--dump` reads the
        host file system, never the logical path; see the module docstring)."""
        return nix.nix_store("--dump", self.real_path(path))

    def _resolve(self, paths: tuple[str, ...] | list[str]) -> list[str]:
        return [self.paths.get(path, path) for path in paths]


def build_nix_store(nix: Nix, root: Path) -> NixStore:
    """Make a chroot store at `root` (which need not exist) with Nix's own tools (about 0.2 s here).

    Labels of `NixStore.paths`:

    - `file`: `nix-store --add` of a file (`FILE_PATH`); `tree`: `--add` of a directory with an
      executable, a symlink, an empty directory and nested directories. No references, no deriver.
    - `text_a`, `text_b`, `text_c`: `builtins.toFile`, where b refers to a, and c to a and b
      (`TEXT_*_PATH`).
    - `dep_drv`, `dep`: a built derivation and its output, which refers to `text_a`.
    - `drv`, `out`: a built derivation and its output, which refers to `dep`, `text_c` and itself, and
      holds the names in `OUT_COLLISIONS`, an executable `OUT_EXECUTABLE`, a symlink `OUT_SYMLINK` and an
      empty directory `etc/empty`.

    Raises `NixCommandError` if a Nix command fails (building needs root, as the suite runs Nix, or
    unprivileged user namespaces); skips (fails in CI) if nix-build or nix-instantiate is missing.
    """
    store = NixStore(root=root, paths={})
    with tempfile.TemporaryDirectory(prefix="xstore-nixstore-") as tmp:
        src = Path(tmp)
        (src / FILE_NAME).write_bytes(FILE_CONTENTS)
        write_tree(
            src / "tree",
            (
                (b"README", "file", b"a tree added with nix-store --add\n"),
                (b"bin", "dir", b""),
                (b"bin/run", "exec", b"#!/bin/sh\necho run\n"),
                (b"empty", "dir", b""),
                (b"a", "dir", b""),
                (b"a/b", "dir", b""),
                (b"a/b/c", "dir", b""),
                (b"a/b/c/deep.txt", "file", b"deep\n"),
                (b"link", "symlink", b"a/b/c/deep.txt"),
            ),
        )
        file, tree = _lines(nix.nix_store(*store.store_args(), "--add", src / FILE_NAME, src / "tree"))
    store.paths.update(file=file, tree=tree)

    text_a, text_b, text_c = _eval_json(nix, store, f"let {TEXTS_NIX} in [ a b c ]")
    store.paths.update(text_a=text_a, text_b=text_b, text_c=text_c)

    dep, out = _build(nix, store, DERIVATIONS_NIX)
    store.paths.update(dep=dep, out=out)
    for output, drv in (("dep", "dep_drv"), ("out", "drv")):
        deriver = store.query_deriver(nix, output)
        assert deriver is not None, f"{output} has no deriver"
        store.paths[drv] = deriver
    return store


def build_case_closure(nix: Nix, root: Path) -> NixStore:
    """Make a chroot store at `root` whose paths are full of names colliding under case folding.

    Labels: `tree` (`nix-store --add` of `CASE_TREE`, named `case-tree`; its collisions are listed in
    `CASE_COLLISIONS` and `CASE_UNICODE_COLLISIONS`), and `drv`, `out`: a built derivation whose output
    holds a copy of the tree under `tree/`, the collisions of `CASE_OUT_COLLISIONS`, and the tree's
    store path in `lib/TREE`, so `out` refers to `tree`.

    Raises `NixCommandError` if a Nix command fails.
    """
    store = NixStore(root=root, paths={})
    with tempfile.TemporaryDirectory(prefix="xstore-casetree-") as tmp:
        src = Path(tmp) / "case-tree"
        write_tree(src, CASE_TREE)
        (tree,) = _lines(nix.nix_store(*store.store_args(), "--add", src))
    store.paths["tree"] = tree
    (out,) = _build(nix, store, CASE_DERIVATION_NIX.replace("@TREE@", tree))
    store.paths["out"] = out
    drv = store.query_deriver(nix, out)
    assert drv is not None, "the case copy has no deriver"
    store.paths["drv"] = drv
    return store


def write_tree(root: Path, entries: tuple[TreeEntry, ...]) -> None:
    """Create directory `root` (which must not exist) holding `entries`: (relative path, kind, data), kind
    one of `file`, `exec` (mode 0755), `dir` (data unused) or `symlink` (data is the target); parents
    before children."""
    os.mkdir(root, 0o755)
    base = os.fsencode(root)
    for relative, kind, data in entries:
        where = os.path.join(base, relative)
        if kind == "dir":
            os.mkdir(where, 0o755)
        elif kind == "symlink":
            os.symlink(data, where)
        else:
            with open(where, "xb") as handle:
                handle.write(data)
            os.chmod(where, 0o755 if kind == "exec" else 0o644)


def _tool(nix: Nix, name: str) -> str:
    # Debian installs nix-build and nix-instantiate as symlinks to `nix`, next to nix-store.
    exe = os.path.join(os.path.dirname(nix.nix_store_exe), name)
    require_or_skip(os.access(exe, os.X_OK), f"{exe} not found (apt-get install nix-bin)")
    return exe


def _eval_json(nix: Nix, store: NixStore, expression: str) -> list[str]:
    """`nix-instantiate --read-write-mode --eval --strict --json -E EXPRESSION`: a list of strings."""
    argv: list[Arg] = [
        _tool(nix, "nix-instantiate"),
        *store.store_args(),
        "--read-write-mode",
        "--eval",
        "--strict",
        "--json",
        "-E",
        expression,
    ]
    values = json.loads(nix.run(argv).stdout)
    assert isinstance(values, list), values
    assert all(isinstance(value, str) for value in values), values
    return values


def _build(nix: Nix, store: NixStore, expression: str) -> list[str]:
    """`nix-build --no-out-link -E EXPRESSION`: the output paths, one per derivation, in order."""
    argv: list[Arg] = [
        _tool(nix, "nix-build"),
        *store.store_args(),
        *BUILD_OPTIONS,
        "--no-out-link",
        "-E",
        expression,
    ]
    return _lines(nix.run(argv).stdout)


def _lines(out: bytes) -> list[str]:
    return out.decode().splitlines()
