"""`xstore key` (signing keys, as `nix key`) and `xstore sign` (as `nix store sign`)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from xstore.cli.common import cli_errors

app = typer.Typer(
    help="Make and convert signing keys for binary caches (as `nix key`).", no_args_is_help=True
)


@app.command("generate-secret")
def generate_secret(
    key_name: Annotated[
        str,
        typer.Option("--key-name", help="The key's name, by convention the cache's host name and a number."),
    ],
) -> None:
    """Print a new Ed25519 secret key, NAME:BASE64 without a newline, exactly as `nix key
    generate-secret` does. Keep it secret; publish what `convert-secret-to-public` makes of it.

    Example: xstore key generate-secret --key-name cache.example.org-1 > secret.key
    """
    from xstore.signing import generate_secret_key

    with cli_errors():
        sys.stdout.write(generate_secret_key(key_name).to_text())
        sys.stdout.flush()


@app.command("convert-secret-to-public")
def convert_secret_to_public() -> None:
    """Read a secret key on stdin and print its public key, NAME:BASE64 without a newline (as `nix key
    convert-secret-to-public`).

    Example: xstore key convert-secret-to-public < secret.key > public.key
    """
    from xstore.signing import parse_secret_key

    with cli_errors():
        text = sys.stdin.read(4096)
        sys.stdout.write(parse_secret_key(text).public_key().to_text())
        sys.stdout.flush()


def sign(
    paths: Annotated[list[str], typer.Argument(help="Store paths to sign.", show_default=False)],
    key_file: Annotated[
        str,
        typer.Option("--key-file", "-k", metavar="FILE", help="The secret key (from `key generate-secret`)."),
    ],
    store: Annotated[
        str | None,
        typer.Option("--store", metavar="ROOT", help="The local store (default: the default store)."),
    ] = None,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Sign the closures too.")] = False,
) -> None:
    """Sign store paths with a secret key, recording the signatures in the store's database (as `nix
    store sign`). A copy to a binary cache carries them in the narinfo's Sig: lines.

    Example: xstore sign --key-file secret.key -r /nix/store/...-hello-2.12
    """
    from xstore.cli.actions import open_local, store_paths
    from xstore.signing import read_secret_key_file

    with cli_errors():
        key = read_secret_key_file(key_file)
        with open_local(store, "sign") as s:
            added = s.sign(store_paths(s, paths, recursive), key)
        sys.stderr.write(f"added {added} signature{'s' if added != 1 else ''}\n")
