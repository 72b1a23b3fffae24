"""`xstore nar`: dump, restore, list and read NAR archives. The options and help are declared here; what
each command does is in `actions.py`, shared with the fast path (`fast.py`)."""

from __future__ import annotations

from typing import Annotated

import typer

from xstore.cli import actions
from xstore.cli.common import CaseHackOpt, FoldOpt

app = typer.Typer(
    help="Dump, restore, list and read NAR archives (Nix ARchives), byte-identical to Nix.",
    no_args_is_help=True,
)

CASE_HACK_DUMP_HELP = (
    "Strip ~nix~case~hack~N suffixes so a case-hacked tree dumps back to its original archive. "
    "'auto' and 'on' strip (only the case hack makes such names); 'off' refuses them, like Nix without "
    "use-case-hack."
)


@app.command("dump")
def dump(
    path: Annotated[str, typer.Argument(help="File, directory or symlink to serialise (not followed).")],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
    case_hack: Annotated[CaseHackOpt, typer.Option(help=CASE_HACK_DUMP_HELP)] = CaseHackOpt.auto,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="GLOB",
            help="Leave out entries whose name (or, for a GLOB with '/', path) matches; repeatable.",
        ),
    ] = None,
) -> None:
    """Serialise PATH as a NAR, exactly as `nix-store --dump` does.

    Example: xstore nar dump ./result -o result.nar
    """
    actions.nar_dump(path, output, case_hack, exclude)


@app.command("restore")
def restore(
    dest: Annotated[str, typer.Argument(help="Where to create the tree; must not exist.")],
    input_: Annotated[
        str | None, typer.Option("-i", "--input", help="Read the NAR from this file, not stdin.")
    ] = None,
    case_hack: Annotated[
        CaseHackOpt,
        typer.Option(
            help="Rename case-colliding names with ~nix~case~hack~N. 'auto' probes DEST's filesystem."
        ),
    ] = CaseHackOpt.auto,
    case_fold: Annotated[
        FoldOpt,
        typer.Option(
            help="Which names collide: 'ascii' as Nix; 'apfs' also Unicode case and NFC/NFD spellings; "
            "'auto' picks apfs where the filesystem folds beyond ASCII."
        ),
    ] = FoldOpt.auto,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Create DEST from a NAR, as `nix-store --restore` does, but safely: nothing outside DEST is
    touched, nothing is overwritten, and a refused or interrupted restore leaves nothing behind.
    Bytes after the end of the archive are refused.

    Example: xstore nar restore ./out -i closure.nar --case-hack on
    """
    actions.nar_restore(dest, input_, case_hack, case_fold, json_)


@app.command("ls")
def ls(
    nar: Annotated[str, typer.Argument(help="The NAR file.")],
    path: Annotated[str, typer.Argument(help="Path inside the archive.")] = "/",
    recursive: Annotated[
        bool, typer.Option("-R", "--recursive", help="List subdirectories recursively.")
    ] = False,
    long: Annotated[bool, typer.Option("-l", "--long", help="Show type, permissions and size.")] = False,
    directory: Annotated[
        bool, typer.Option("-d", "--directory", help="Show a directory itself, not its contents.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="JSON as `nix nar ls --json` prints it.")] = False,
) -> None:
    """List a path inside a NAR, like `nix nar ls`. The whole archive is validated first.

    Example: xstore nar ls closure.nar /share/terminfo -R --json
    """
    actions.nar_ls(nar, path, recursive, long, directory, json_)


@app.command("cat")
def cat(
    nar: Annotated[str, typer.Argument(help="The NAR file.")],
    path: Annotated[str, typer.Argument(help="Path of a regular file inside the archive.")],
) -> None:
    """Print the contents of a regular file inside a NAR, like `nix nar cat`. The whole archive is
    validated first; from a pipe (`/dev/stdin`) it is read into a temporary file for that.

    Example: xstore nar cat closure.nar /bin/hello > hello
    """
    actions.nar_cat(nar, path)
