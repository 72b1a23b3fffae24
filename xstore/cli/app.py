"""The `xstore` command: one typer sub-app per noun, joined here.

Heavy imports live inside the commands that need them, so `xstore --help` stays fast.
"""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from xstore import __version__
from xstore.cli import casehack as casehack_cli
from xstore.cli import gc as gc_cli
from xstore.cli import hash as hash_cli
from xstore.cli import key as key_cli
from xstore.cli import mount as mount_cli
from xstore.cli import nar as nar_cli
from xstore.cli import optimise as optimise_cli
from xstore.cli import query as query_cli
from xstore.cli import ro as ro_cli
from xstore.cli import serve as serve_cli
from xstore.cli import store as store_cli
from xstore.cli.common import guard_standard_streams

app = typer.Typer(
    name="xstore",
    help=(
        "Move Nix store paths across machines and filesystems without losing a byte: NAR archives, "
        "Nix's case hack for case-insensitive filesystems (macOS), hashes.\n\n"
        "Errors print one line 'error: ...' and exit 1 (usage errors exit 2); set XSTORE_DEBUG=1 for a "
        "traceback."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(nar_cli.app, name="nar")
app.add_typer(hash_cli.app, name="hash")
app.add_typer(casehack_cli.app, name="casehack")
app.add_typer(store_cli.app, name="store")
app.add_typer(ro_cli.app, name="ro")
app.add_typer(mount_cli.app, name="mount")
app.command("umount")(mount_cli.umount)
app.add_typer(key_cli.app, name="key")
app.add_typer(serve_cli.app, name="serve")
app.command("sign")(key_cli.sign)
store_cli.register(app)
query_cli.register(app)
gc_cli.register(app)
optimise_cli.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xstore {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Global options."""


def _terminate(signum: int, _frame: object) -> None:
    # Unwind like Ctrl-C, so every `finally` runs: restores and imports remove their temporaries.
    raise KeyboardInterrupt


def main() -> None:
    # SIGHUP too: a terminal that goes away must not leave half-written temporaries behind.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    guard_standard_streams()
    app(prog_name="xstore")
