"""Helpers for the store upkeep tests (queries, garbage collection, optimise, repair).

- `xstore(...)`: the CLI as a real process (`python -X dev -bb -W error -m xstore`).
- `make_store(root, tree)`: a small synthetic local store with real trees, references and derivers,
  registered through xstore's own add transaction, for the unit tests that need no Nix.
- `nix_at(nix, store, ...)`: `nix-store --store ROOT` with the fixture options, returning stdout.
- `gc_killed_at(root, step, count)`: a garbage collection that SIGKILLs itself part-way.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.helpers import Arg, Nix
from tests.nixstores import NixStore
from xstore.fsops import canonicalise
from xstore.nar.dump import dump_path
from xstore.store import LocalStore
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath, make_store_path

XSTORE: list[str] = [sys.executable, "-X", "dev", "-bb", "-W", "error", "-m", "xstore"]


def xstore(
    *args: Arg, input: bytes | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`xstore ARGS...` as a real process; returns whatever it did."""
    return subprocess.run(
        [*XSTORE, *(os.fsdecode(a) for a in args)],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        check=False,
        env=dict(env) if env is not None else None,
    )


def xstore_ok(*args: Arg, input: bytes | None = None) -> bytes:
    """`xstore ARGS...`, which must succeed; returns stdout."""
    result = xstore(*args, input=input)
    assert result.returncode == 0, (args, result.stderr.decode("utf-8", "replace"))
    return result.stdout


def xstore_fails(*args: Arg, input: bytes | None = None, status: int = 1) -> str:
    """`xstore ARGS...`, which must exit with `status` and a one-line error; returns that line."""
    result = xstore(*args, input=input)
    assert result.returncode == status, (args, result.returncode, result.stderr)
    message = result.stderr.decode()
    assert message.startswith("error: "), message
    assert message.count("\n") == 1, message
    return message.rstrip("\n")


def run_in_process(*args: Arg) -> bytes:
    """`xstore ARGS...` in this process (CliRunner), which must succeed; returns stdout. For the many
    short queries, where starting a process each time would dominate."""
    from typer.testing import CliRunner

    from xstore.cli.app import app

    result = CliRunner().invoke(app, [os.fsdecode(a) for a in args])
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.stdout_bytes


def nix_at(nix: Nix, store: NixStore | Path, *args: Arg, input: bytes | None = None) -> bytes:
    """`nix-store --store ROOT (fixture options) ARGS...`; returns stdout."""
    root = store.root if isinstance(store, NixStore) else store
    return nix.nix_store(*NixStore(root, {}).store_args(), *args, input=input)


def nix_run_at(nix: Nix, store: NixStore | Path, *args: Arg) -> subprocess.CompletedProcess[bytes]:
    """`nix-store --store ROOT (fixture options) ARGS...`, which must succeed; the whole result."""
    root = store.root if isinstance(store, NixStore) else store
    return nix.run([nix.nix_store_exe, *NixStore(root, {}).store_args(), *args])


def lines(out: bytes) -> list[str]:
    return out.decode().splitlines()


# -- synthetic stores ------------------------------------------------------------------------------------

# name -> (files, references by name, deriver by name). A file path ending in "/" is a directory; contents
# starting with "->" make a symlink; contents starting with "#!" make an executable. References to other
# paths are written into a file, as a build would, so `why-depends --precise` finds them.
Spec = Mapping[str, tuple[dict[bytes, bytes], Sequence[str], str | None]]


def store_path(name: str) -> StorePath:
    """A made-up but valid store path for `name` (stable: derived from the name)."""
    return make_store_path("output:out", hashlib.sha256(name.encode()).digest(), name)


def write_path(store: LocalStore, path: StorePath, files: dict[bytes, bytes]) -> bytes:
    """Write `files` as `path`'s tree in the store directory (not registered); returns the real path."""
    real = store.real_path(path)
    if list(files) == [b""]:  # a single regular file
        with open(real, "wb") as f:
            f.write(files[b""])
        return real
    os.mkdir(real)
    for relative, data in sorted(files.items()):
        where = os.path.join(real, relative)
        if relative.endswith(b"/"):
            os.makedirs(where, exist_ok=True)
        elif data.startswith(b"->"):
            os.makedirs(os.path.dirname(where), exist_ok=True)
            os.symlink(data[2:], where)
        else:
            os.makedirs(os.path.dirname(where), exist_ok=True)
            with open(where, "wb") as f:
                f.write(data)
            if data.startswith(b"#!"):
                os.chmod(where, 0o755)  # noqa: S103 (an executable in a tree to be canonicalised)
    return real


def register_tree(
    store: LocalStore,
    path: StorePath,
    files: dict[bytes, bytes],
    references: Sequence[StorePath] = (),
    deriver: StorePath | None = None,
) -> PathInfo:
    """Write, canonicalise, hash and register one path (its references must be valid already)."""
    real = write_path(store, path, files)
    canonicalise(real)
    digest = hashlib.sha256()
    size = dump_path(real, digest.update, case_hack=store.settings.case_hack)
    info = PathInfo(path, digest.digest(), size, tuple(sorted(set(references))), deriver)
    store.register(info)
    return info


def make_store(store: LocalStore, spec: Spec) -> dict[str, StorePath]:
    """Register the paths of `spec` (in an order where references come first); returns them by name.
    Each path also names its references' full paths (in a file `refs`, or at the end of a single file),
    as a build would leave them."""
    paths = {name: store_path(name) for name in spec}
    done: set[str] = set()

    def add(name: str) -> None:
        if name in done:
            return
        files, refs, deriver = spec[name]
        for ref in refs:
            if ref != name:
                add(ref)
        if deriver is not None and deriver not in done and deriver in spec:
            add(deriver)
        files = dict(files)
        if refs:
            named = " ".join(paths[r].path for r in refs).encode() + b"\n"
            if list(files) == [b""]:
                files[b""] += named
            else:
                files[b"refs"] = named
        register_tree(
            store, paths[name], files, [paths[r] for r in refs], paths[deriver] if deriver else None
        )
        done.add(name)

    for name in spec:
        add(name)
    return paths


# -- stores Nix makes ---------------------------------------------------------------------------------


def nix_eval_paths(nix: Nix, root: Path, expression: str) -> list[str]:
    """`nix-instantiate --store ROOT --read-write-mode --eval --strict --json -E EXPRESSION`, an expression
    giving a list of store paths (made by `builtins.toFile`); returns them."""
    import json

    exe = os.path.join(os.path.dirname(nix.nix_store_exe), "nix-instantiate")
    argv: list[Arg] = [
        exe,
        *NixStore(root, {}).store_args(),
        "--read-write-mode",
        "--eval",
        "--strict",
        "--json",
    ]
    values = json.loads(nix.run([*argv, "-E", expression]).stdout)
    assert isinstance(values, list)
    assert all(isinstance(value, str) for value in values)
    return values


def build_chain(nix: Nix, root: Path, length: int, *, name: str = "link", lines: int = 2000) -> list[str]:
    """A chain of `length` text paths in a Nix-made store at `root`, each referring to the one before
    (and so holding all of them in its closure), each some `lines` lines long; dependencies first."""
    parts = [f'p0 = builtins.toFile "{name}-0" (body 0);']
    parts += [f'p{i} = builtins.toFile "{name}-{i}" ((body {i}) + "${{p{i - 1}}}");' for i in range(1, length)]  # noqa: E501
    expression = (
        'let body = n: builtins.concatStringsSep "" (builtins.genList (x: "line ${toString x} of '
        f'${{toString n}}\\n") {lines});\n'
        + "\n".join(parts)
        + "\nin [ "
        + " ".join(f"p{i}" for i in range(length))
        + " ]"
    )
    return nix_eval_paths(nix, root, expression)


_GC_KILLER = """
import os, signal, sys
from xstore.gc import GcOptions, collect_garbage
from xstore.store import LocalStore
step, count = sys.argv[2], int(sys.argv[3])
seen = 0
def hook(name, _what):
    global seen
    if name == step:
        seen += 1
        if seen == count:
            os.kill(os.getpid(), signal.SIGKILL)
with LocalStore.open(sys.argv[1]) as store:
    collect_garbage(store, GcOptions(), hook=hook)
"""


def gc_killed_at(root: Path, step: str, count: int) -> int:
    """Collect garbage in the store at `root` in a child process that SIGKILLs itself the `count`th
    time the collector reaches `step` (the collector's test hook). Returns the child's exit status."""
    argv = [*XSTORE[:-2], "-c", _GC_KILLER, str(root), step, str(count)]
    return subprocess.run(argv, check=False).returncode
