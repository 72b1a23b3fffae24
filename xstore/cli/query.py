"""Query commands: `xstore query` (as `nix-store -q`) and `xstore why-depends` (as `nix why-depends`)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from xstore.cli.common import cli_errors
from xstore.cli.store import PathsArg, StoreOpt


def query(
    paths: PathsArg,
    store: StoreOpt = None,
    references: Annotated[bool, typer.Option("--references", help="The paths each path refers to.")] = False,
    referrers: Annotated[
        bool, typer.Option("--referrers", help="The valid paths that refer to each path (local store).")
    ] = False,
    requisites: Annotated[
        bool,
        typer.Option("-R", "--requisites", help="The closure: everything each path needs, itself included."),
    ] = False,
    referrers_closure: Annotated[
        bool,
        typer.Option(
            "--referrers-closure", help="Everything that refers to each path, transitively (local store)."
        ),
    ] = False,
    deriver: Annotated[
        bool,
        typer.Option("-d", "--deriver", help="The derivation that built each path, or 'unknown-deriver'."),
    ] = False,
    tree: Annotated[bool, typer.Option("--tree", help="The references as a tree.")] = False,
    roots: Annotated[
        bool,
        typer.Option("--roots", help="The garbage collector roots that keep each path alive (local store)."),
    ] = False,
    hash_: Annotated[bool, typer.Option("--hash", help="Each path's NAR hash (sha256, nix32).")] = False,
    size: Annotated[bool, typer.Option("--size", help="Each path's NAR size in bytes.")] = False,
    keep_derivations: Annotated[
        bool,
        typer.Option(
            "--keep-derivations/--no-keep-derivations",
            help="With --roots: a derivation is kept by its live outputs (keep-derivations, on by default).",
        ),
    ] = True,
    keep_outputs: Annotated[
        bool,
        typer.Option(
            "--keep-outputs/--no-keep-outputs",
            help="With --roots: outputs are kept by their live derivations (keep-outputs, off by default).",
        ),
    ] = False,
    include_outputs: Annotated[
        bool,
        typer.Option("--include-outputs", help="With -R: also the outputs of derivations in the closure."),
    ] = False,
) -> None:
    """Query the reference graph of PATHS, as `nix-store -q` does; one query flag at a time. Sets of paths
    are printed dependencies first.

    Example: xstore query --referrers /nix/store/...-glibc-2.37
    """
    from xstore import query as q
    from xstore.errors import UnsupportedError, UsageError
    from xstore.stores import open_store, resolve_paths

    chosen = [
        name
        for name, on in (
            ("--references", references),
            ("--referrers", referrers),
            ("--requisites", requisites),
            ("--referrers-closure", referrers_closure),
            ("--deriver", deriver),
            ("--tree", tree),
            ("--roots", roots),
            ("--hash", hash_),
            ("--size", size),
        )
        if on
    ]
    with cli_errors():
        if len(chosen) != 1:
            raise UsageError(
                "give one query: --references, --referrers, --requisites, --referrers-closure, --deriver, "
                "--tree, --roots, --hash or --size"
                + (f" (not {' and '.join(chosen)} together)" if chosen else "")
            )
        if include_outputs and not requisites:
            raise UsageError("--include-outputs goes with --requisites")
        with open_store(store) as s:
            wanted = resolve_paths(s, paths)
            lines: list[str]
            if references:
                lines = [p.path for p in q.references(s, wanted)]
            elif referrers:
                lines = [p.path for p in q.referrers(s, wanted)]
            elif requisites:
                lines = [p.path for p in q.requisites(s, wanted, include_outputs=include_outputs)]
            elif referrers_closure:
                lines = [p.path for p in q.referrers_closure(s, wanted)]
            elif deriver:
                infos = [s.require(p) for p in wanted]
                lines = [i.deriver.path if i.deriver else "unknown-deriver" for i in infos]
            elif tree:
                lines = list(q.tree_lines(s, wanted))
            elif roots:
                from xstore.gc import roots_keeping
                from xstore.store import LocalStore

                if not isinstance(s, LocalStore):
                    raise UnsupportedError(f"--roots needs a local store; {s.describe()} is not one")
                lines = [
                    f"{link} -> {path}"
                    for link, path in roots_keeping(s, wanted, keep=(keep_derivations, keep_outputs))
                ]
            elif hash_:
                lines = [s.require(p).nar_hash_nix32() for p in wanted]
            else:
                lines = [str(s.require(p).nar_size) for p in wanted]
            for line in lines:
                sys.stdout.write(line + "\n")


def why_depends(
    package: Annotated[str, typer.Argument(help="The path whose closure is explained.", show_default=False)],
    dependency: Annotated[str, typer.Argument(help="The path it depends on.", show_default=False)],
    store: StoreOpt = None,
    all_: Annotated[
        bool, typer.Option("-a", "--all", help="Every edge leading to DEPENDENCY, not just a shortest chain.")
    ] = False,
    precise: Annotated[
        bool,
        typer.Option("--precise", help="For each edge, the files that hold the reference, with context."),
    ] = False,
) -> None:
    """Show why PACKAGE has DEPENDENCY in its closure: the chain of references from one to the other, as
    `nix why-depends` prints it.

    Example: xstore why-depends ./result /nix/store/...-glibc-2.37
    """
    from xstore.query import why_depends as explain
    from xstore.stores import open_store, resolve_path

    with cli_errors(), open_store(store) as s:
        top = resolve_path(s, package)
        s.require(top)
        lines = explain(s, top, resolve_path(s, dependency), all_edges=all_, precise=precise)
        if lines is None:
            sys.stderr.write(f"'{top}' does not depend on '{resolve_path(s, dependency)}'\n")
            return
        for line in lines:
            sys.stdout.write(line + "\n")
