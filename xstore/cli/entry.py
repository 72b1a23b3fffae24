"""The `xstore` console script: the smallest possible first step before the command line is parsed.

`xstore --version` answers without loading anything; the plain command lines of the commands scripts
call most (`nar dump`, `hash path`, ...) run on the fast path (`fast.py`) without typer and click, which
are most of xstore's start-up; everything else goes to the typer app in `app.py`.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv == ["--version"]:
        from xstore import __version__

        sys.stdout.write(f"xstore {__version__}\n")
        return
    from xstore.cli.common import prepare_process
    from xstore.cli.fast import run

    prepare_process()
    if run(argv):
        return
    from xstore.cli.app import main as run_app

    run_app()
