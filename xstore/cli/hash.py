"""`xstore hash`: hashes of trees (as NARs) and files, in Nix's formats. What each command does is in
`actions.py`, shared with the fast path (`fast.py`)."""

from __future__ import annotations

from typing import Annotated

import typer

from xstore.cli import actions
from xstore.cli.common import CaseHackOpt

app = typer.Typer(help="Compute hashes the way Nix does.", no_args_is_help=True)

TYPE_HELP = "Hash algorithm: sha256, sha512, sha1 or md5."
FORMAT_HELP = "Output: sri (sha256-...), nix32 (Nix's base-32; 'base32' is accepted too), base16 or base64."


@app.command("path")
def path(
    paths: Annotated[list[str], typer.Argument(help="Files, directories or symlinks.", metavar="PATH...")],
    type_: Annotated[str, typer.Option("--type", help=TYPE_HELP)] = "sha256",
    format_: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "sri",
    case_hack: Annotated[
        CaseHackOpt, typer.Option(help="Strip case-hack suffixes first ('off' refuses them).")
    ] = CaseHackOpt.auto,
) -> None:
    """Hash the NAR serialisation of each PATH, in one pass and constant memory. The result equals
    `nix hash path` (and, with --format nix32, `nix-hash --type sha256 --base32`).

    Example: xstore hash path ./result --format nix32
    """
    actions.hash_path(paths, type_, format_, case_hack)


@app.command("file")
def file(
    paths: Annotated[list[str], typer.Argument(help="Regular files.", metavar="FILE...")],
    type_: Annotated[str, typer.Option("--type", help=TYPE_HELP)] = "sha256",
    format_: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "sri",
) -> None:
    """Hash the plain contents of each FILE, like `nix hash file`.

    Example: xstore hash file closure.nar --format base16
    """
    actions.hash_file(paths, type_, format_)
