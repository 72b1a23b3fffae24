"""Helpers shared by the test suite: running the real Nix, and skips that become failures in CI.

The reference implementation is Debian's `nix-bin` (Nix 2.8), run as root without a daemon. Every Nix
subprocess gets an environment of its own (`nix_environment`): state, logs, configuration and cache live in
a per-session temporary directory, and the default store is a chroot store there, so no test reads or
writes the host's /nix. The store directory stays `/nix/store`, as store path hashes depend on it; tests
that need a particular store pass `--store ROOT`.

A test that cannot run here says why and skips, except in CI (`CI=true`), where the compat, FUSE and
namespace tests must run: there `require_or_skip` fails instead.

`CountingU64` counts how often the wire readers look at an item, for tests of how much work a reader
does (not how long it takes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pytest

Arg: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]

IN_CI = os.environ.get("CI", "").lower() == "true"

# Generous: the slowest Nix call in the suite dumps or imports a few hundred MiB.
NIX_TIMEOUT = 600.0

NIX_MISSING = "nix-store not found (apt-get install nix-bin)"


def require_or_skip(condition: object, reason: str) -> None:
    """Skip the calling test (or fixture) with `reason` unless `condition` holds; in CI, fail instead.

    CI must run the compat, FUSE and namespace tests, so a missing prerequisite there is an error in the
    machine's set-up, not a reason to pass quietly.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)", pytrace=False)
    pytest.skip(reason)


class NixCommandError(AssertionError):
    """A Nix command exited with an unexpected status; carries its argv, status and stderr."""

    def __init__(self, argv: list[Arg], returncode: int, stderr: bytes) -> None:
        shown = " ".join(os.fsdecode(a) for a in argv)
        message = stderr.decode("utf-8", "replace").strip()
        super().__init__(f"`{shown}` exited with status {returncode}:\n{message}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


def nix_environment(base: Path) -> dict[str, str]:
    """An environment for Nix subprocesses that keeps everything under `base` (created if missing)."""
    dirs = {name: base / name for name in ("state", "log", "conf", "cache", "home", "default-store")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    # Replaces /etc/nix/nix.conf (Debian's sets only `sandbox = false`, which we keep).
    # No substituters: nothing may be fetched (the machines have no network), and trying costs seconds.
    (dirs["conf"] / "nix.conf").write_text("sandbox = false\nsubstituters =\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("NIX_")}
    env.update(
        NIX_STATE_DIR=str(dirs["state"]),
        NIX_LOG_DIR=str(dirs["log"]),
        NIX_CONF_DIR=str(dirs["conf"]),
        NIX_REMOTE=str(dirs["default-store"]),
        XDG_CACHE_HOME=str(dirs["cache"]),
        XDG_CONFIG_HOME=str(dirs["conf"]),
        HOME=str(dirs["home"]),
        LC_ALL="C",
    )
    return env


@dataclass(frozen=True)
class Nix:
    """The real Nix tools found on PATH, and an isolated environment to run them in."""

    nix_store_exe: str
    nix_exe: str
    nix_hash_exe: str
    env: Mapping[str, str]
    version: str

    def run(
        self, argv: list[Arg], *, input: bytes | None = None, expect_success: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` in the Nix environment; raise `NixCommandError` unless it exits as expected.

        `expect_success=False` expects a non-zero status (and raises if the command succeeded).
        """
        result = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=dict(self.env),
            timeout=NIX_TIMEOUT,
            check=False,
        )
        if (result.returncode == 0) != expect_success:
            raise NixCommandError(argv, result.returncode, result.stderr)
        return result

    def nix_store(self, *args: Arg, input: bytes | None = None) -> bytes:
        """`nix-store ARGS...`; returns stdout."""
        return self.run([self.nix_store_exe, *args], input=input).stdout

    def nix_cmd(self, *args: Arg, input: bytes | None = None) -> bytes:
        """`nix --extra-experimental-features nix-command ARGS...`; returns stdout."""
        return self.run(self._nix_argv(args), input=input).stdout

    def nix_hash(self, *args: Arg) -> bytes:
        """`nix-hash ARGS...`; returns stdout."""
        return self.run([self.nix_hash_exe, *args]).stdout

    def nix_store_fails(self, *args: Arg, input: bytes | None = None) -> str:
        """`nix-store ARGS...`, which must fail; returns its stderr as text."""
        return self._stderr(self.run([self.nix_store_exe, *args], input=input, expect_success=False))

    def nix_cmd_fails(self, *args: Arg, input: bytes | None = None) -> str:
        """`nix --extra-experimental-features nix-command ARGS...`, which must fail; returns stderr."""
        return self._stderr(self.run(self._nix_argv(args), input=input, expect_success=False))

    def _nix_argv(self, args: tuple[Arg, ...]) -> list[Arg]:
        return [self.nix_exe, "--extra-experimental-features", "nix-command", *args]

    @staticmethod
    def _stderr(result: subprocess.CompletedProcess[bytes]) -> str:
        return result.stderr.decode("utf-8", "replace")


def find_nix(base: Path) -> Nix:
    """Locate nix-store, nix and nix-hash on PATH and check that they run; skip (fail in CI) if not."""
    exes = {name: shutil.which(name) for name in ("nix-store", "nix", "nix-hash")}
    require_or_skip(exes["nix-store"] is not None, NIX_MISSING)
    missing = [name for name, exe in exes.items() if exe is None]
    require_or_skip(not missing, f"{', '.join(missing)} not found (apt-get install nix-bin)")
    env = nix_environment(base)
    probe = subprocess.run(
        [str(exes["nix-store"]), "--version"],
        capture_output=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    require_or_skip(
        probe.returncode == 0,
        f"nix-store --version failed: {probe.stderr.decode('utf-8', 'replace').strip()}",
    )
    return Nix(
        nix_store_exe=str(exes["nix-store"]),
        nix_exe=str(exes["nix"]),
        nix_hash_exe=str(exes["nix-hash"]),
        env=env,
        version=probe.stdout.decode().strip(),
    )


# What Nix's case.nar (tests/data/nix-fixtures) restores to with the case hack on: its README's table.
CASE_NAR_HACKED = sorted(
    [
        b"x",
        b"x/FOO",
        b"x/Foo~nix~case~hack~1",
        b"x/foo-1",
        b"x/foo0",
        b"x/foo~nix~case~hack~2",
        b"x/foo~nix~case~hack~2/A",
        b"x/foo~nix~case~hack~2/A/foo",
        b"x/foo~nix~case~hack~2/a~nix~case~hack~1",
        b"x/foo~nix~case~hack~2/a~nix~case~hack~1/foo",
        b"xt_CONNMARK.h",
        b"xt_CONNmark.h~nix~case~hack~1",
        b"xt_connmark.h~nix~case~hack~2",
    ]
)


class CountingU64:
    """A stand-in for `xstore.wire.U64` (monkeypatched) that counts the integers read."""

    def __init__(self) -> None:
        import xstore.wire

        self.reads = 0
        self._real = xstore.wire.U64

    def unpack_from(self, buffer: bytes | bytearray, offset: int = 0) -> tuple[int]:
        self.reads += 1
        return self._real.unpack_from(buffer, offset)

    def pack(self, n: int) -> bytes:
        return self._real.pack(n)
