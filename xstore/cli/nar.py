"""`xstore nar`: dump, restore, list and read NAR archives."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from xstore.cli.common import (
    CaseHackOpt,
    FoldOpt,
    Progress,
    atomic_output,
    cli_errors,
    descriptor_of,
    err,
    file_size,
    open_input,
    require_stdout,
    stdout_binary,
)

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
    from xstore.nar.dump import dump_path

    with cli_errors(), Progress("dumping") as progress, atomic_output(output) as sink:
        dump_path(
            path,
            sink,
            case_hack=case_hack is not CaseHackOpt.off,
            exclude=exclude or (),
            progress=progress,
        )


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
    from xstore import sniff
    from xstore.casehack import CaseHackMode, Fold
    from xstore.errors import UsageError
    from xstore.nar.restore import restore_path

    with cli_errors():
        if json_:
            require_stdout()  # a closed standard output stops the restore before it starts
        with open_input(input_, raw=True) as f:
            if f.isatty():
                raise UsageError("no archive on stdin: pipe one in or use -i FILE")
            kind, method, read = sniff.open_input(f.read)
            sniff.expect(kind, sniff.Kind.NAR, input_ or "the input")
            plain = method.value == "none"
            with Progress("restoring", file_size(f) if plain else None) as progress:
                result = restore_path(
                    dest,
                    read,
                    case_hack=CaseHackMode(case_hack.value),
                    fold=None if case_fold is FoldOpt.auto else Fold(case_fold.value),
                    progress=progress,
                    source_fd=descriptor_of(f) if plain else None,
                )
        summary = {
            "destination": os.path.abspath(dest),
            "narSize": result.nar_size,
            "caseHack": result.case_hack,
            "fold": result.fold.value,
            "renamed": result.renamed,
        }
        if result.probed is not None:
            summary["filesystem"] = {
                "caseInsensitive": result.probed.case_insensitive,
                "unicodeCaseInsensitive": result.probed.unicode_case_insensitive,
                "normalizationInsensitive": result.probed.normalization_insensitive,
            }
        if json_:
            sys.stdout.write(json.dumps(summary) + "\n")
        elif result.renamed:
            err(f"restored {dest}: case hack renamed {result.renamed} name(s) ({result.fold.value} fold)")


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
    from xstore.errors import UsageError
    from xstore.nar.listing import NarFile, dump_json, listing_json, listing_lines

    with cli_errors():
        if json_ and directory:
            raise UsageError("'--directory' is useless with '--json'")
        with open(nar, "rb") as f:
            index = NarFile(f, nar).index
        node = index.lookup(path)
        out = sys.stdout.buffer
        if json_:
            out.write(dump_json(listing_json(node, recursive=recursive)).encode() + b"\n")
        else:
            for line in listing_lines(index, path, recursive=recursive, long=long, directory=directory):
                out.write(line + b"\n")
        out.flush()


@app.command("cat")
def cat(
    nar: Annotated[str, typer.Argument(help="The NAR file.")],
    path: Annotated[str, typer.Argument(help="Path of a regular file inside the archive.")],
) -> None:
    """Print the contents of a regular file inside a NAR, like `nix nar cat`. The whole archive is
    validated first.

    Example: xstore nar cat closure.nar /bin/hello > hello
    """
    from xstore.errors import XstoreError
    from xstore.nar.listing import NarFile, RegularNode

    with cli_errors(), open(nar, "rb") as f:
        archive = NarFile(f, nar)
        node = archive.index.lookup(path)
        if not isinstance(node, RegularNode):
            raise XstoreError(f"path '{path}' is not a regular file in the NAR")
        out = stdout_binary() if node.size else sys.stdout.buffer
        for block in archive.contents(node):
            out.write(block)
        out.flush()
