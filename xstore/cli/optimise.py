"""`xstore optimise`: hard-link identical files of a local store, as `nix-store --optimise` does."""

from __future__ import annotations

import sys

from xstore.cli.common import Progress, cli_errors
from xstore.cli.store import StoreOpt


def optimise(store: StoreOpt = None) -> None:
    """Save space in a local store by hard-linking identical files through nix/store/.links, with
    Nix's names for the links, so Nix and xstore share them (either can run after the other). Prints
    what it freed, as Nix does.

    Example: xstore optimise --store ~/nix-root
    """
    from xstore.cli.actions import open_local
    from xstore.optimise import optimise_store

    with cli_errors(), open_local(store, "optimise", writes=True) as s:
        paths = s.all_paths()
        with Progress("optimising", len(paths), unit="paths") as progress:
            stats = optimise_store(s, paths=paths, progress=progress)
        sys.stdout.write(stats.summary() + "\n")
