"""`xstore casehack`: pre-flight checks for case-insensitive filesystems."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any, Final

import typer

from xstore.cli.common import cli_errors

EXIT_FINDINGS: Final = 3

app = typer.Typer(
    help="Check trees and archives for names a case-insensitive filesystem cannot hold.", no_args_is_help=True
)


def _tree_directories(root: bytes) -> Iterator[tuple[tuple[bytes, ...], list[bytes]]]:
    from xstore.casehack import unhack_name

    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        rel = os.path.relpath(dirpath, root)
        parts = () if rel == b"." else tuple(rel.split(b"/"))
        yield tuple(unhack_name(p) for p in parts), [unhack_name(n) for n in dirnames + filenames]


def _raise(e: OSError) -> None:
    raise e


def _nar_directories(path: str) -> Iterator[tuple[tuple[bytes, ...], list[bytes]]]:
    from xstore.nar.listing import DirectoryNode, Node, index_file

    with open(path, "rb") as f:
        index = index_file(f)

    def walk(node: Node, where: tuple[bytes, ...]) -> Iterator[tuple[tuple[bytes, ...], list[bytes]]]:
        if isinstance(node, DirectoryNode):
            yield where, list(node.entries)
            for name, child in node.entries.items():
                yield from walk(child, (*where, name))

    yield from walk(index.root, ())


def _text(parts: tuple[bytes, ...]) -> str:
    return "/" + b"/".join(parts).decode("utf-8", "backslashreplace")


@app.command("scan")
def scan(
    path: Annotated[str, typer.Argument(help="A directory tree, or a .nar file.")],
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable report on stdout.")] = False,
) -> None:
    """Report names that would collide on a case-insensitive filesystem, under Nix's ASCII fold and
    under the APFS fold (Unicode case and NFC/NFD), and names macOS cannot store at all (not UTF-8).

    Exit status: 0 nothing found, 3 findings reported, 1 error.

    Example: xstore casehack scan closure.nar --json
    """
    from xstore.casehack import Fold, NameScanner

    with cli_errors():
        scanner = NameScanner()
        is_tree = os.path.isdir(path)
        directories = _tree_directories(os.fsencode(path)) if is_tree else _nar_directories(path)
        for where, names in directories:
            scanner.add_directory(where, names)
        if json_:
            report: dict[str, Any] = {
                "path": path,
                "directories": scanner.directories,
                "names": scanner.names,
                "clean": scanner.clean,
                "collisions": {
                    fold.value: [
                        {
                            "directory": _text(where),
                            "names": [n.decode("utf-8", "backslashreplace") for n in group],
                        }
                        for where, group in scanner.collisions[fold]
                    ]
                    for fold in Fold
                },
                "notUtf8": [_text(p) for p in scanner.not_utf8],
            }
            sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
        else:
            out = [f"scanned {scanner.directories} directories, {scanner.names} names"]
            for fold, title in (
                (Fold.ASCII, "colliding under the ASCII fold (Nix's case hack renames these)"),
                (Fold.APFS, "colliding under the APFS fold (macOS: Unicode case, NFC/NFD)"),
            ):
                groups = scanner.collisions[fold]
                out.append(f"{len(groups)} group(s) {title}")
                for where, group in groups:
                    shown = ", ".join(n.decode("utf-8", "backslashreplace") for n in group)
                    out.append(f"  {_text(where)}: {shown}")
            out.append(f"{len(scanner.not_utf8)} name(s) that are not UTF-8 (macOS cannot store them)")
            out.extend(f"  {_text(p)}" for p in scanner.not_utf8)
            sys.stdout.write("\n".join(out) + "\n")
        if not scanner.clean:
            raise typer.Exit(EXIT_FINDINGS)
