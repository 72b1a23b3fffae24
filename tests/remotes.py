"""Helpers for the tests of remote stores: xstore as a subprocess (also as Nix's `remote-program`), a fake
`ssh` first on PATH, and running Nix with an environment of its own.

Recipes from the team's protocol notes (§5): for the host `localhost` Nix 2.8 runs its remote command
itself (`bash -c COMMAND`); for any other host it runs the first `ssh` on PATH as `ssh HOST -x -a
<NIX_SSHOPTS> ... COMMAND`, so a script named `ssh` that runs the command locally stands in for a real
ssh server. The fake also handles newer Nix's conventions (`ssh -O check` fails: no master; a
`LocalCommand` option asks for a `started` line; the command follows `--`) and logs each argv.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Final

from tests.helpers import Arg, Nix

XSTORE: Final[list[str]] = [sys.executable, "-X", "dev", "-bb", "-W", "error", "-m", "xstore"]
TIMEOUT: Final = 120

FAKE_SSH: Final = r"""#!/bin/bash
# A stand-in for ssh: logs its argv, then runs the remote command here.
log="${FAKE_SSH_LOG:-/dev/null}"
for a in "$@"; do printf '[%s]' "$a" >> "$log"; done
printf '\n' >> "$log"
started=0
command=""
seen_dashdash=0
for a in "$@"; do
  if [ "$seen_dashdash" = 1 ]; then command="$command $a"; continue; fi
  case "$a" in
    -O) exit 1 ;;
    --) seen_dashdash=1 ;;
    *LocalCommand=*) started=1 ;;
  esac
done
if [ "$seen_dashdash" = 0 ]; then command="${@: -1}"; fi
if [ "$started" = 1 ]; then echo started; fi
exec bash -c "$command"
"""


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def xstore_program(bin_dir: Path) -> Path:
    """A script `xstore` in `bin_dir` running this checkout's xstore (warnings as errors), for Nix's
    `remote-program` and for the fake ssh."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    argv = " ".join(shlex.quote(a) for a in XSTORE)
    return write_script(bin_dir / "xstore", f'#!/bin/sh\nexec {argv} "$@"\n')


def fake_ssh(bin_dir: Path) -> Path:
    """The fake `ssh` in `bin_dir` (put `bin_dir` first on PATH; `FAKE_SSH_LOG` names its log)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    return write_script(bin_dir / "ssh", FAKE_SSH)


def ssh_log(log: Path) -> list[list[str]]:
    """The argvs the fake ssh was called with, one list per call."""
    if not log.exists():
        return []
    return [line[1:-1].split("][") for line in log.read_text().splitlines() if line]


def with_env(nix: Nix, **changes: str) -> Nix:
    """`nix` with its environment changed (`PATH=...` prepends nothing: give the whole value)."""
    env = dict(nix.env)
    env.update(changes)
    return dataclasses.replace(nix, env=env)


def path_with(bin_dir: Path) -> str:
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def run_xstore(
    *args: Arg, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    """`xstore ARGS...` as a real process; returns whatever it did."""
    return subprocess.run(
        [*XSTORE, *(os.fsdecode(a) for a in args)],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def xstore_ok(*args: Arg, input: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    """`xstore ARGS...`, which must succeed; returns stdout."""
    result = run_xstore(*args, input=input, env=env)
    assert result.returncode == 0, (args, result.stderr.decode("utf-8", "replace"))
    return result.stdout


def xstore_fails(*args: Arg, input: bytes | None = None, env: dict[str, str] | None = None) -> str:
    """`xstore ARGS...`, which must exit 1 with exactly one line `error: ...` on stderr; returns it."""
    result = run_xstore(*args, input=input, env=env)
    message = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1, (args, result.returncode, message)
    assert message.startswith("error: "), message
    assert message.count("\n") == 1, message
    return message.rstrip("\n")
