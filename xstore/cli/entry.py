"""The `xstore` console script: the smallest possible first step before the command line is parsed.

`xstore --version` answers without loading anything; the plain command lines of the commands scripts
call most (`nar dump`, `hash path`, ...) run on the fast path (`fast.py`) without typer and click, which
are most of xstore's start-up; everything else goes to the typer app in `app.py`.

A command that has finished leaves without the interpreter's teardown (`_leave`): by then every file
is closed and every temporary removed (the commands hold them in `with` blocks), the threads are done
and the other exit handlers have run, so what is left is freeing memory the kernel frees anyway. In
development mode (`python -X dev`, as the tests run xstore) the full teardown runs, so that a resource
left open still shows as a warning.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line in `sys.argv` as the `xstore` program (the process ends with it: call
    `run` to run a command inside another program)."""
    finished: list[int] = []  # the command's exit status, once it has finished
    if not sys.flags.dev_mode:
        import atexit

        # Registered before anything of the command's, so run after all of those (last in, first out).
        atexit.register(_leave, finished)
    try:
        run(sys.argv[1:])
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            finished.append(e.code or 0)
        raise
    finished.append(0)


def run(argv: list[str]) -> None:
    """Run one xstore command line (raises SystemExit as the command ends with an error)."""
    if argv == ["--version"]:
        from xstore import __version__

        sys.stdout.write(f"xstore {__version__}\n")
        return
    from xstore.cli.common import prepare_process
    from xstore.cli.fast import run as run_fast

    prepare_process()
    if run_fast(argv):
        return
    from xstore.cli.app import app

    app(args=argv, prog_name="xstore")


def _leave(finished: list[int]) -> None:
    """The last exit handler: once the command has finished, end the process with its status, skipping
    the interpreter's teardown (a final garbage collection and the freeing of every module: about
    10 ms after a copy of a few hundred paths). Returns, for the ordinary exit, when the command did
    not finish (an uncaught exception) or the standard streams cannot be flushed."""
    if not finished:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    import os

    os._exit(finished[0])
