"""The `xstore` command: one typer sub-app per noun, joined here, loaded on dispatch.

Start-up is paid by every command, so the command tree is a table of names and where each lives; a
command's module is imported, and its typer app turned into a click command, only when that command
runs (or when `--help` lists them all). A run of `xstore nar dump` imports the `nar` commands and
nothing of stores, caches, FUSE or protocols. Heavy libraries stay inside the functions that use them.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, Final

import typer
from typer.core import TyperGroup

from xstore import __version__
from xstore.cli.common import prepare_process

# name -> (module, attribute): a `typer.Typer` attribute is a group of subcommands, a function a command.
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "nar": ("xstore.cli.nar", "app"),
    "hash": ("xstore.cli.hash", "app"),
    "casehack": ("xstore.cli.casehack", "app"),
    "store": ("xstore.cli.store", "app"),
    "import": ("xstore.cli.store", "import_"),
    "export": ("xstore.cli.store", "export"),
    "copy": ("xstore.cli.store", "copy"),
    "path-info": ("xstore.cli.store", "path_info"),
    "verify": ("xstore.cli.store", "verify"),
    "repair": ("xstore.cli.store", "repair"),
    "query": ("xstore.cli.query", "query"),
    "why-depends": ("xstore.cli.query", "why_depends"),
    "gc": ("xstore.cli.gc", "gc"),
    "delete": ("xstore.cli.gc", "delete"),
    "add-root": ("xstore.cli.gc", "add_root"),
    "optimise": ("xstore.cli.optimise", "optimise"),
    "key": ("xstore.cli.key", "app"),
    "sign": ("xstore.cli.key", "sign"),
    "ro": ("xstore.cli.ro", "app"),
    "mount": ("xstore.cli.mount", "app"),
    "umount": ("xstore.cli.mount", "umount"),
    "serve": ("xstore.cli.serve", "app"),
}

# Per-command settings for commands given as functions.
COMMAND_SETTINGS: Final[dict[str, dict[str, Any]]] = {
    # -h is --human-readable there, as in `nix path-info`.
    "path-info": {"context_settings": {"help_option_names": ["--help"]}},
}


class LazyGroup(TyperGroup):
    """A click group whose commands are built from `COMMANDS` the first time they are asked for."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        found = self.commands.get(cmd_name)
        if found is not None:
            return found
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attribute = where
        target = getattr(importlib.import_module(module), attribute)
        command: Any
        if isinstance(target, typer.Typer):
            command = typer.main.get_group(target)  # a group even with one subcommand, as add_typer makes
        else:
            single = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
            single.command(cmd_name, **COMMAND_SETTINGS.get(cmd_name, {}))(target)
            command = typer.main.get_command(single)
        command.name = cmd_name
        self.commands[cmd_name] = command
        return command


app = typer.Typer(
    name="xstore",
    cls=LazyGroup,
    help=(
        "Move Nix store paths across machines and filesystems without losing a byte: NAR archives, "
        "Nix's case hack for case-insensitive filesystems (macOS), stores, binary caches, hashes.\n\n"
        "Errors print one line 'error: ...' and exit 1 (usage errors exit 2); set XSTORE_DEBUG=1 for a "
        "traceback."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


def main() -> None:
    prepare_process()
    app(prog_name="xstore")
