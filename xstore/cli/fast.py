"""The fast path: the plain command lines of the commands scripts call most, run without typer and click.

Importing typer and click costs more than everything else a small `xstore nar dump` does (about 60 ms
on a slow machine, three times Python's own start-up). So `entry.py` first offers the command line to
`parse()` here, which knows the commands whose bodies live in `actions.py` and accepts only forms it
reads exactly as click would: long options with a separate or `=` value, the short options as separate
words, flags, `--`, options before or after the arguments. Anything else (`--help`, a typo, a bad
choice, a missing argument, bundled short options) is left to typer, which gives the usual help and
usage errors. The tables below mirror the typer declarations in `nar.py`, `hash.py` and `store.py`;
`tests/unit/test_fast_path.py` checks, command line by command line, that both paths call the same
action with the same arguments.
"""

from __future__ import annotations

from xstore.cli.common import CaseHackOpt, FoldOpt

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    import enum
    from collections.abc import Sequence


class Opt:
    """An option: its spellings, the parameter it sets, and how (`value`, `flag` or `multi`)."""

    __slots__ = ("choices", "convert", "default", "dest", "kind", "names")

    def __init__(
        self,
        names: tuple[str, ...],
        dest: str,
        kind: str = "value",
        default: object = None,
        choices: type[enum.Enum] | None = None,
        convert: type[float] | None = None,
    ) -> None:
        self.names = names
        self.dest = dest
        self.kind = kind
        self.default = default
        self.choices = choices
        self.convert = convert  # a value's type where it is not a string (click's FLOAT is `float()`)


class Spec:
    """A subcommand: its positional parameters (a name, or `*name` for one or more; `name=` with a
    default for an optional last one), its options and the function in `actions.py` that runs it."""

    __slots__ = ("action", "by_name", "optional", "options", "positionals", "rest")

    def __init__(
        self,
        action: str,
        positionals: tuple[str, ...],
        options: tuple[Opt, ...],
        optional: dict[str, str] | None = None,
    ) -> None:
        self.action = action
        self.rest = bool(positionals) and positionals[-1].startswith("*")
        self.positionals = tuple(p.lstrip("*") for p in positionals)
        self.optional = optional or {}
        self.options = options
        self.by_name = {name: o for o in options for name in o.names}


_CASE_HACK = Opt(("--case-hack",), "case_hack", default=CaseHackOpt.auto, choices=CaseHackOpt)
_TYPE = Opt(("--type",), "type_", default="sha256")
_FORMAT = Opt(("--format",), "format_", default="sri")
_STORE = Opt(("--store",), "store")

# The command's words (one for a top-level command, two for a subcommand) -> how to read the rest.
SPECS: dict[tuple[str, ...], Spec] = {
    ("nar", "dump"): Spec(
        "nar_dump",
        ("path",),
        (Opt(("-o", "--output"), "output"), _CASE_HACK, Opt(("--exclude",), "exclude", "multi")),
    ),
    ("nar", "restore"): Spec(
        "nar_restore",
        ("dest",),
        (
            Opt(("-i", "--input"), "input_"),
            _CASE_HACK,
            Opt(("--case-fold",), "case_fold", default=FoldOpt.auto, choices=FoldOpt),
            Opt(("--json",), "json_", "flag", default=False),
        ),
    ),
    ("nar", "ls"): Spec(
        "nar_ls",
        ("nar", "path"),
        (
            Opt(("-R", "--recursive"), "recursive", "flag", default=False),
            Opt(("-l", "--long"), "long", "flag", default=False),
            Opt(("-d", "--directory"), "directory", "flag", default=False),
            Opt(("--json",), "json_", "flag", default=False),
        ),
        optional={"path": "/"},
    ),
    ("nar", "cat"): Spec("nar_cat", ("nar", "path"), ()),
    ("hash", "path"): Spec("hash_path", ("*paths",), (_TYPE, _FORMAT, _CASE_HACK)),
    ("hash", "file"): Spec("hash_file", ("*paths",), (_TYPE, _FORMAT)),
    ("import",): Spec(
        "import_paths",
        (),
        (
            _STORE,
            Opt(("-i", "--input"), "input_"),
            _CASE_HACK,
            Opt(("--case-fold",), "case_fold", default=FoldOpt.auto, choices=FoldOpt),
        ),
    ),
    ("copy",): Spec(
        "copy",
        ("*paths",),
        (
            Opt(("--from",), "from_"),
            Opt(("--to",), "to"),
            Opt(("-r", "--recursive"), "recursive", "flag", default=False),
            _CASE_HACK,
            Opt(("--case-fold",), "case_fold", default=FoldOpt.auto, choices=FoldOpt),
            Opt(("--no-check-sigs",), "no_check_sigs", "flag", default=False),
            Opt(("--trusted-public-keys",), "trusted_public_keys"),
        ),
    ),
    ("serve", "ssh"): Spec(
        "serve_ssh",
        (),
        (
            _STORE,
            Opt(("--write",), "write", "flag", default=False),
            Opt(("--serve",), "serve", "flag", default=False),
            Opt(("--timeout",), "timeout", default=300.0, convert=float),
            Opt(("--idle-timeout",), "idle_timeout", default=3600.0, convert=float),
        ),
    ),
    ("export",): Spec(
        "export_paths",
        ("*paths",),
        (
            _STORE,
            Opt(("-r", "--recursive"), "recursive", "flag", default=False),
            Opt(("-o", "--output"), "output"),
        ),
    ),
}


def parse(argv: Sequence[str]) -> tuple[str, dict[str, object]] | None:
    """The action and its keyword arguments for `argv` (the words after `xstore`), or None when the
    fast path does not take this command line."""
    words_of_command = 1
    spec = SPECS.get(tuple(argv[:1]))
    if spec is None and len(argv) >= 2:
        words_of_command = 2
        spec = SPECS.get(tuple(argv[:2]))
    if spec is None:
        return None
    values: dict[str, object] = {o.dest: o.default for o in spec.options}
    multi: dict[str, list[str]] = {}
    words: list[str] = []
    args = list(argv[words_of_command:])
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            words.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = spec.by_name.get(name)
        if opt is None:
            return None  # --help, a typo, bundled short flags: typer answers
        if opt.kind == "flag":
            if eq:
                return None
            values[opt.dest] = True
            continue
        if eq:
            value = inline
        elif i < len(args):
            value = args[i]
            i += 1
        else:
            return None
        if opt.kind == "multi":
            multi.setdefault(opt.dest, []).append(value)
        elif opt.choices is not None or opt.convert is not None:
            try:
                values[opt.dest] = (opt.choices or opt.convert)(value)  # type: ignore[misc]
            except ValueError:
                return None
        else:
            values[opt.dest] = value
    values.update(multi)
    if spec.rest:
        if not words:
            return None
        (dest,) = spec.positionals
        values[dest] = words
        return spec.action, values
    required = [p for p in spec.positionals if p not in spec.optional]
    if not len(required) <= len(words) <= len(spec.positionals):
        return None
    for dest in spec.positionals:
        values[dest] = words.pop(0) if words else spec.optional[dest]
    return spec.action, values


def run(argv: Sequence[str]) -> bool:
    """Run `argv` on the fast path if it takes it; False when it does not (nothing has been done)."""
    found = parse(argv)
    if found is None:
        return False
    from xstore.cli import actions

    action, kwargs = found
    getattr(actions, action)(**kwargs)
    return True
