"""`xstore ro`: protect a store directory as a read-only bind mount (Linux)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from xstore.cli.common import cli_errors

if TYPE_CHECKING:
    from xstore.mountns import Status

app = typer.Typer(
    help="Keep a store directory read-only for everyone but xstore's own writers (Linux).",
    no_args_is_help=True,
)

DirArg = Annotated[Path, typer.Argument(help="The store directory, e.g. /nix/store or ROOT/nix/store.")]


def _show(st: Status, json_: bool) -> None:
    if json_:
        sys.stdout.write(
            json.dumps(
                {
                    "path": st.path,
                    "readOnly": st.read_only,
                    "writable": st.writable,
                    "bindMount": st.bind,
                    "mountPoint": st.mount_point,
                    "isMountPoint": st.is_mount_point,
                    "options": list(st.options),
                    "fstype": st.fstype,
                }
            )
            + "\n"
        )
        return
    state = "read-only" if st.read_only else "writable"
    how = "bind mount of itself" if st.bind else f"on the {st.fstype} mount at {st.mount_point}"
    sys.stdout.write(f"{st.path}: {state}, {how} ({','.join(st.options)})\n")


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command("protect")
def protect(store_dir: DirArg, json_: JsonOpt = False) -> None:
    """Bind-mount STORE_DIR onto itself and remount it read-only, keeping its other mount flags
    (nosuid, nodev, noexec, atime). Idempotent. Needs root.

    Example: xstore ro protect /nix/store
    """
    from xstore import mountns

    with cli_errors():
        _show(mountns.protect(store_dir), json_)


@app.command("unprotect")
def unprotect(store_dir: DirArg, json_: JsonOpt = False) -> None:
    """Remove the read-only bind mount that `protect` made.

    Example: xstore ro unprotect /nix/store
    """
    from xstore import mountns

    with cli_errors():
        _show(mountns.unprotect(store_dir), json_)


@app.command("status")
def status(store_dir: DirArg, json_: JsonOpt = False) -> None:
    """Report whether STORE_DIR is read-only, whether it is a bind mount, and its mount options.

    Example: xstore ro status /nix/store --json
    """
    from xstore import mountns

    with cli_errors():
        _show(mountns.status(store_dir), json_)


@app.command("run", context_settings={"allow_interspersed_args": False})
def run(
    store_dir: DirArg,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments (after --).")],
) -> None:
    """Run a command in a private mount namespace in which STORE_DIR is writable; nobody else sees it
    writable. The command's exit status is passed through. Needs root.

    Example: xstore ro run /nix/store -- nix-store --import < closure.export
    """
    from xstore import mountns

    if command and command[0] == "--":
        command = command[1:]
    with cli_errors():
        code = mountns.run_writable(store_dir, command)
    raise typer.Exit(code)
