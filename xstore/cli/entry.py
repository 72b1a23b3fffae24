"""The `xstore` console script: the smallest possible first step before the command line is parsed.

`xstore --version` answers without loading the command-line machinery (typer and click are most of
xstore's start-up); everything else goes to `xstore.cli.app`.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from xstore import __version__

        sys.stdout.write(f"xstore {__version__}\n")
        return
    from xstore.cli.app import main as run

    run()
