"""Serving commands: `xstore serve ssh` (the `nix-store --serve` protocol on stdin and stdout)."""

from __future__ import annotations

from typing import Annotated

import typer

from xstore.cli.common import cli_errors

app = typer.Typer(help="Serve a store to other machines.", no_args_is_help=True)


@app.command("ssh")
def ssh(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            metavar="URL",
            help="The store to serve (a directory, or any store URL). Default: $XSTORE_STORE, else a "
            "per-user data directory. With --write, a local store is created if missing.",
            show_default=False,
        ),
    ] = None,
    write: Annotated[
        bool, typer.Option("--write", help="Allow adding paths (AddToStoreNar, ImportPaths), as nix-store.")
    ] = False,
    serve: Annotated[
        bool,
        typer.Option("--serve", hidden=True, help="Accepted and ignored: Nix appends it to remote-program."),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the rest of a request, or for the client to read, before giving up."
        ),
    ] = 300.0,
    idle_timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait for the next request before ending the session."),
    ] = 3600.0,
) -> None:
    """Speak the `nix-store --serve` protocol on stdin and stdout, as `nix-store --serve [--write]`
    does, so that Nix and xstore can copy to and from this machine over ssh.

    Nix runs its remote-program as `PROGRAM --serve --write [--store STORE]`, so this works as it
    stands: nix copy --to 'ssh://host?remote-program=xstore serve ssh' PATH. As a forced command in
    ~/.ssh/authorized_keys: command="xstore serve ssh --write --store /srv/nix-root" ssh-ed25519 ...

    Paths locked by a client (QueryValidPaths with its lock flag, with --write) stay safe from
    garbage collection until the session ends. Builds are refused: xstore builds nothing.
    """
    import os
    import sys

    from xstore.remote.channel import Channel
    from xstore.serve.ssh import serve_ssh
    from xstore.stores import open_store

    del serve
    with cli_errors():
        if sys.stdin.isatty() or sys.stdout.isatty():
            from xstore.errors import UsageError

            raise UsageError(
                "'xstore serve ssh' speaks a binary protocol on stdin and stdout; run it from ssh or Nix "
                "(remote-program), not from a terminal"
            )
        blocking = (os.get_blocking(0), os.get_blocking(1))
        try:
            with open_store(store, create=write) as s:
                channel = Channel(0, 1, peer="the client", timeout=timeout)
                serve_ssh(s, channel, write=write, idle_timeout=idle_timeout)
        finally:
            os.set_blocking(0, blocking[0])
            os.set_blocking(1, blocking[1])
