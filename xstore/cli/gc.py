"""Garbage collection commands: `xstore gc`, `xstore delete`, `xstore add-root` (as `nix-store --gc`,
`--delete` and `--add-root`)."""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

from xstore.cli.common import cli_errors, err
from xstore.cli.store import PathsArg, StoreOpt

KeepDerivationsOpt = Annotated[
    bool,
    typer.Option(
        "--keep-derivations/--no-keep-derivations",
        help="Keep the derivations of live paths (Nix's keep-derivations, on by default).",
    ),
]
KeepOutputsOpt = Annotated[
    bool,
    typer.Option(
        "--keep-outputs/--no-keep-outputs",
        help="Keep the outputs of live derivations (Nix's keep-outputs, off by default).",
    ),
]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """A byte count with an optional K, M, G or T suffix (powers of 1024), as Nix's `--max-freed`."""
    from xstore.errors import UsageError

    match = re.fullmatch(r"(-?[0-9]{1,20})([KMGT]?)", text.strip())
    if match is None:
        raise UsageError(f"'{text}' is not a byte count (digits with an optional K, M, G or T suffix)")
    return max(0, int(match.group(1)) * _UNITS[match.group(2)])


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def gc(
    store: StoreOpt = None,
    max_freed: Annotated[
        str | None,
        typer.Option(
            "--max-freed", metavar="BYTES", help="Stop after freeing this much (K, M, G, T suffixes)."
        ),
    ] = None,
    print_roots: Annotated[
        bool, typer.Option("--print-roots", help="Print the roots (LINK -> PATH).")
    ] = False,
    print_live: Annotated[
        bool, typer.Option("--print-live", help="Print the paths that would stay.")
    ] = False,
    print_dead: Annotated[bool, typer.Option("--print-dead", help="Print the paths that would go.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would be deleted and how much it frees; delete nothing."),
    ] = False,
    keep_derivations: KeepDerivationsOpt = True,
    keep_outputs: KeepOutputsOpt = False,
) -> None:
    """Delete every path of a local store that no root keeps alive, as `nix-store --gc` does (beside Nix
    itself, which is told and waits through Nix's own lock and socket).

    Roots: symlinks under nix/var/nix/gcroots and profiles (see 'xstore add-root'), paths running
    processes use, and temporary roots of running imports and copies, xstore's or Nix's. Referrers go
    before their references; a crash at any point leaves a consistent store.

    Example: xstore gc --max-freed 10G
    """
    from xstore.cli.actions import open_local
    from xstore.errors import UsageError
    from xstore.gc import Action, GcOptions, collect_garbage, find_roots

    with cli_errors():
        if print_roots + print_live + print_dead + dry_run > 1:
            raise UsageError("give at most one of --print-roots, --print-live, --print-dead and --dry-run")
        with open_local(store, "gc", writes=not (print_roots or print_live or print_dead or dry_run)) as s:
            if print_roots:
                roots = sorted((link, path) for path, links in find_roots(s).items() for link in links)
                for link, path in roots:
                    sys.stdout.write(f"{link} -> {path}\n")
                return
            action = (
                Action.RETURN_LIVE if print_live else Action.RETURN_DEAD if print_dead else Action.DELETE_DEAD
            )
            options = GcOptions(
                action,
                max_freed=parse_bytes(max_freed) if max_freed is not None else None,
                keep_derivations=keep_derivations,
                keep_outputs=keep_outputs,
                dry_run=dry_run,
            )
            result = collect_garbage(s, options, on_delete=lambda p: err(f"deleting '{p}'"))
            if action is not Action.DELETE_DEAD:
                sys.stdout.writelines(shown + "\n" for shown in result.paths)
            elif dry_run:
                for shown in result.paths:
                    err(f"would delete '{shown}'")
                freed = _mib(result.bytes_freed)
                sys.stdout.write(
                    f"{len(result.paths)} store paths would be deleted, {freed} would be freed\n"
                )
            else:
                if result.links_saving is not None:
                    err(f"note: currently hard linking saves {result.links_saving:.2f} MiB")
                sys.stdout.write(
                    f"{len(result.paths)} store paths deleted, {_mib(result.bytes_freed)} freed\n"
                )


def delete(
    paths: PathsArg,
    store: StoreOpt = None,
    ignore_liveness: Annotated[
        bool,
        typer.Option(
            "--ignore-liveness",
            help="Delete even if a root keeps the paths alive (not if a path refers to them).",
        ),
    ] = False,
) -> None:
    """Delete PATHS from a local store, as `nix-store --delete` does: only if no other valid path refers
    to them and no root keeps them alive. Otherwise nothing is deleted and the error names a referrer or
    a root.

    Example: xstore delete /nix/store/...-hello-2.12
    """
    from xstore.cli.actions import open_local
    from xstore.gc import delete_paths
    from xstore.stores import resolve_paths

    with cli_errors(), open_local(store, "delete", writes=True) as s:
        result = delete_paths(
            s,
            resolve_paths(s, paths),
            ignore_liveness=ignore_liveness,
            on_delete=lambda p: err(f"deleting '{p}'"),
        )
        if result.links_saving is not None:
            err(f"note: currently hard linking saves {result.links_saving:.2f} MiB")
        sys.stdout.write(f"{len(result.paths)} store paths deleted, {_mib(result.bytes_freed)} freed\n")


def add_root(
    link: Annotated[str, typer.Argument(help="The symlink to make (outside the store).", show_default=False)],
    path: Annotated[str, typer.Argument(help="The valid store path it keeps alive.", show_default=False)],
    store: StoreOpt = None,
) -> None:
    """Make LINK a garbage collector root for PATH, as `nix-store --add-root LINK` does: LINK points at
    /nix/store/..., and nix/var/nix/gcroots/auto records LINK, so removing LINK frees the path again.

    Example: xstore add-root ./result /nix/store/...-hello-2.12
    """
    from xstore.cli.actions import open_local
    from xstore.gc import add_root as make_root
    from xstore.stores import resolve_path

    with cli_errors(), open_local(store, "add-root") as s:
        sys.stdout.write(make_root(s, link, resolve_path(s, path)) + "\n")
