"""`xstore serve`: a store served to other machines: `serve http` as a binary cache, `serve ssh` as the
far end of Nix's `nix-store --serve` protocol (on stdin and stdout)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from xstore.cli.common import cli_errors, err
from xstore.cli.store import StoreOpt

app = typer.Typer(help="Serve a store to other machines.", no_args_is_help=True)


class ServedCompression(enum.StrEnum):
    none = "none"
    zstd = "zstd"
    xz = "xz"


@app.command("http")
def http(
    store: StoreOpt = None,
    listen: Annotated[
        str,
        typer.Option(
            "--listen",
            metavar="HOST:PORT",
            help="The address to listen on ([IPV6]:PORT for IPv6; port 0 picks a free port).",
        ),
    ] = "127.0.0.1:5000",
    secret_key: Annotated[
        str | None,
        typer.Option(
            "--secret-key",
            metavar="FILE",
            help="Sign every narinfo with this key (from `xstore key generate-secret` or `nix key "
            "generate-secret`); clients trust its public key.",
        ),
    ] = None,
    compression: Annotated[
        ServedCompression,
        typer.Option(
            help="Compress NARs on the fly. 'none' also serves byte ranges (resumed downloads) and "
            "announces sizes."
        ),
    ] = ServedCompression.none,
    priority: Annotated[
        int,
        typer.Option(
            help="The priority announced in nix-cache-info (lower is preferred; cache.nixos.org has 40)."
        ),
    ] = 30,
) -> None:
    """Serve a store over HTTP as a binary cache that Nix substitutes from (as harmonia and nix-serve do),
    with the original names also from a case-hacked store. Runs in the foreground, logs one line per
    request on stderr, and stops on Ctrl-C or SIGTERM. Paths added while it runs are served at once.

    Example: xstore serve http --store ~/nix-root --secret-key cache.sk --listen 0.0.0.0:5000

    and on another machine: nix copy --from http://HOST:5000 --option trusted-public-keys "$(cat cache.pk)"
    /nix/store/...  (or list http://HOST:5000 in `substituters`).
    """
    from xstore.compression import Method
    from xstore.errors import UsageError

    with cli_errors():
        from xstore.serve.http import ServeOptions, parse_listen, serve_http
        from xstore.stores import open_store

        try:
            parse_listen(listen)
        except ValueError as e:
            raise UsageError(f"--listen: {e}") from None
        key = None
        if secret_key is not None:
            from xstore.signing import read_secret_key_file

            key = read_secret_key_file(secret_key)
        options = ServeOptions(Method(compression.value), key, priority)
        with open_store(store, read_only=True) as opened:
            serve_http(opened, listen, options, err)


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
    from xstore.cli import actions

    actions.serve_ssh(store, write, serve, timeout, idle_timeout)
