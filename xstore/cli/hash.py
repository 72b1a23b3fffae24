"""`xstore hash`: hashes of trees (as NARs) and files, in Nix's formats."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from xstore.cli.common import CaseHackOpt, Progress, cli_errors

if TYPE_CHECKING:
    from xstore.hashing import HashAlgorithm, HashFormat

app = typer.Typer(help="Compute hashes the way Nix does.", no_args_is_help=True)

TYPE_HELP = "Hash algorithm: sha256, sha512, sha1 or md5."
FORMAT_HELP = "Output: sri (sha256-...), nix32 (Nix's base-32; 'base32' is accepted too), base16 or base64."


def _choices(type_: str, format_: str) -> tuple[HashAlgorithm, HashFormat]:
    """The --type and --format options, parsed; a bad value is command-line misuse (exit 2)."""
    from xstore.errors import InvalidHashError, UsageError
    from xstore.hashing import HashAlgorithm, HashFormat

    try:
        return HashAlgorithm.parse(type_), HashFormat.parse(format_)
    except InvalidHashError as e:
        raise UsageError(str(e)) from None


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
    from xstore.hashing import HashSink
    from xstore.nar.dump import dump_path

    with cli_errors():
        algorithm, fmt = _choices(type_, format_)
        for p in paths:
            sink = HashSink(algorithm)
            with Progress(f"hashing {p}") as progress:
                dump_path(p, sink.update, case_hack=case_hack is not CaseHackOpt.off, progress=progress)
            sys.stdout.write(sink.format(fmt) + "\n")


@app.command("file")
def file(
    paths: Annotated[list[str], typer.Argument(help="Regular files.", metavar="FILE...")],
    type_: Annotated[str, typer.Option("--type", help=TYPE_HELP)] = "sha256",
    format_: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "sri",
) -> None:
    """Hash the plain contents of each FILE, like `nix hash file`.

    Example: xstore hash file closure.nar --format base16
    """
    from xstore.hashing import HashSink

    with cli_errors():
        algorithm, fmt = _choices(type_, format_)
        for p in paths:
            sink = HashSink(algorithm)
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    sink.update(block)
            sys.stdout.write(sink.format(fmt) + "\n")
