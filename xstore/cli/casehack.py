"""`xstore casehack`: pre-flight checks for case-insensitive filesystems."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from xstore.cli.common import cli_errors

if TYPE_CHECKING:
    from xstore.casehack import NameScanner

EXIT_FINDINGS: Final = 3

app = typer.Typer(
    help="Check trees and archives for names a case-insensitive filesystem cannot hold.", no_args_is_help=True
)


def _lines(scanner: NameScanner, indent: str = "") -> list[str]:
    from xstore.casehack import Fold

    report = scanner.report()
    out = [f"{indent}scanned {scanner.directories} directories, {scanner.names} names"]
    for fold, title in (
        (Fold.ASCII, "colliding under the ASCII fold (Nix's case hack renames these)"),
        (Fold.APFS, "colliding under the APFS fold (macOS: Unicode case, NFC/NFD)"),
    ):
        groups = report["collisions"][fold.value]
        out.append(f"{indent}{len(groups)} group(s) {title}")
        out.extend(f"{indent}  {g['directory']}: {', '.join(g['names'])}" for g in groups)
    out.append(f"{indent}{len(report['notUtf8'])} name(s) that are not UTF-8 (macOS cannot store them)")
    out.extend(f"{indent}  {p}" for p in report["notUtf8"])
    return out


@app.command("scan")
def scan(
    path: Annotated[
        str,
        typer.Argument(
            help="A directory tree, a .nar file or an export stream (compressed or not); or a store URL "
            "(a binary cache such as file://DIR, https://HOST, s3://BUCKET, or a local store), followed by "
            "store paths."
        ),
    ],
    store_paths: Annotated[
        list[str] | None,
        typer.Argument(help="With a store URL: the store paths to scan.", show_default=False),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="With a store URL: scan the paths' closures too.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable report on stdout.")] = False,
) -> None:
    """Report names that would collide on a case-insensitive filesystem, under Nix's ASCII fold and
    under the APFS fold (Unicode case and NFC/NFD), and names macOS cannot store at all (not UTF-8).
    An export stream is reported per store path.

    Given a binary cache and store paths, it tells before a byte of NAR is downloaded which paths of the
    closure would collide on a Mac: it reads the cache's .ls listings (write-nar-listing=1), and streams
    a path's NAR only when the cache has no listing for it.

    Exit status: 0 nothing found, 3 findings reported, 1 error.

    Example: xstore casehack scan closure.nar --json
    Example: xstore casehack scan https://cache.example.org -r /nix/store/...-linux-headers
    """
    from xstore.casehack import NameScanner
    from xstore.scan import scan_file, scan_tree

    with cli_errors():
        if store_paths or "://" in path:
            _scan_store(path, store_paths or [], recursive, json_)
            return
        if os.path.isdir(path):
            found: NameScanner | list[Any] = scan_tree(os.fsencode(path))
        else:
            with open(path, "rb") as f:
                _, found = scan_file(f.read, f"'{path}'")
        if isinstance(found, NameScanner):
            clean = found.clean
            report: dict[str, Any] = {"path": path, **found.report()}
            lines = _lines(found)
        else:
            clean = all(p.scanner.clean for p in found)
            report = {
                "path": path,
                "clean": clean,
                "storePaths": {p.path.path: p.scanner.report() for p in found},
            }
            lines = [f"{len(found)} store path(s) in the export stream"]
            for p in found:
                lines.append(f"{p.path}: {'clean' if p.scanner.clean else 'findings'}")
                lines.extend(_lines(p.scanner, "  "))
        if json_:
            sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
        else:
            sys.stdout.write("\n".join(lines) + "\n")
        if not clean:
            raise typer.Exit(EXIT_FINDINGS)


def _scan_store(url: str, args: list[str], recursive: bool, json_: bool) -> None:
    from xstore.errors import UsageError
    from xstore.scan import scan_store_paths
    from xstore.storeapi import topo_sort
    from xstore.stores import open_store, resolve_paths

    if not args:
        raise UsageError(f"name the store paths to scan in '{url}'")
    with open_store(url) as store:
        wanted = resolve_paths(store, args)
        if recursive:
            order = topo_sort(store.query_closure(wanted))
        else:
            order = list(dict.fromkeys(wanted))
            for store_path in order:
                store.require(store_path)
        found = scan_store_paths(store, order)
    clean = all(p.scanner.clean for p in found)
    if json_:
        report = {
            "store": url,
            "clean": clean,
            "storePaths": {p.path.path: {"source": p.source, **p.scanner.report()} for p in found},
        }
        sys.stdout.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    else:
        from_listing = sum(p.source == "listing" for p in found)
        lines = [
            f"{len(found)} store path(s) in {url}: {from_listing} read from .ls listings, "
            f"{len(found) - from_listing} from their NARs"
        ]
        for p in found:
            lines.append(f"{p.path}: {'clean' if p.scanner.clean else 'findings'}")
            lines.extend(_lines(p.scanner, "  "))
        sys.stdout.write("\n".join(lines) + "\n")
    if not clean:
        raise typer.Exit(EXIT_FINDINGS)
