"""The fast path (`xstore/cli/fast.py`) against typer: for every command line it takes, the typer app
must call the same action with the same arguments; whatever it does not read exactly as click would, it
must leave to typer; and a run on it must not load typer or click at all."""

from __future__ import annotations

import enum
import inspect
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

from xstore.cli import actions, fast
from xstore.cli.app import app

runner = CliRunner()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], tuple[str, dict[str, object]]]:
    """Runs a command line through typer with every action replaced by a recorder; returns the action
    typer called and its arguments by name."""
    calls: list[tuple[str, dict[str, object]]] = []
    for action in {spec.action for spec in fast.SPECS.values()}:
        original = getattr(actions, action)

        def record(*args: object, _name: str = action, _f: object = original, **kwargs: object) -> None:
            bound = inspect.signature(_f).bind(*args, **kwargs)  # type: ignore[arg-type]
            calls.append((_name, dict(bound.arguments)))

        monkeypatch.setattr(actions, action, record)

    def run(argv: list[str]) -> tuple[str, dict[str, object]]:
        calls.clear()
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
        assert len(calls) == 1
        return calls[0]

    return run


def normal(kwargs: dict[str, object]) -> dict[str, object]:
    """Arguments as an action sees them: an unrepeated multiple option is None or empty either way."""
    return {k: (None if v in ([], ()) else list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}


TAKEN = [
    ["nar", "dump", "x"],
    ["nar", "dump", "x", "-o", "out.nar"],
    ["nar", "dump", "-o", "out.nar", "x"],
    ["nar", "dump", "--output=out.nar", "x", "--case-hack", "off"],
    ["nar", "dump", "x", "--exclude", "*.pyc", "--exclude=doc/*", "--case-hack=on"],
    ["nar", "dump", "--", "-x"],
    ["nar", "dump", "-"],
    ["nar", "dump", "x", "-o", "-"],
    ["nar", "dump", "x", "-o", "--"],
    ["nar", "dump", "x", "-o", "-o", "-o", "last"],
    ["nar", "restore", "dest"],
    ["nar", "restore", "dest", "-i", "in.nar", "--json"],
    ["nar", "restore", "--case-hack", "on", "--case-fold", "apfs", "dest", "--input=in.nar"],
    ["nar", "restore", "--json", "--json", "dest"],
    ["nar", "ls", "a.nar"],
    ["nar", "ls", "a.nar", "/bin", "-R", "-l"],
    ["nar", "ls", "--json", "-d", "a.nar", "--recursive", "--long", "--directory"],
    ["nar", "cat", "a.nar", "/bin/hello"],
    ["nar", "cat", "--", "a.nar", "-weird"],
    ["hash", "path", "a"],
    ["hash", "path", "a", "b", "c", "--format", "nix32", "--type=sha512"],
    ["hash", "path", "--case-hack", "off", "a"],
    ["hash", "file", "a", "b"],
    ["hash", "file", "--type", "md5", "--format", "base16", "--", "--a"],
    ["hash", "file", "--type", "nonsense", "a"],  # the action refuses it, as it would under typer
    ["import"],
    ["import", "--store", "/srv/root", "-i", "closure.export"],
    ["import", "--case-hack=on", "--case-fold", "ascii", "--input=-"],
    ["export", "/nix/store/p"],
    ["export", "-r", "--store", "local?root=/srv", "p1", "p2", "-o", "out.export"],
    ["export", "--recursive", "--output=-", "--", "-p"],
    ["copy", "--to", "x", "p"],
    ["copy", "--from", "file:///srv/cache", "--to", "/srv/root", "-r", "p1", "p2"],
    ["copy", "--from=s3://b?region=x", "--trusted-public-keys", "k:AAAA k2:BBBB", "--no-check-sigs", "p"],
    ["copy", "--to", "file:///c?compression=zstd&secret-key=k", "--case-hack=on", "--case-fold", "apfs", "p"],
    ["copy", "--recursive", "--", "-p"],
    ["serve", "ssh"],
    ["serve", "ssh", "--serve", "--write"],
    ["serve", "ssh", "--serve", "--write", "--store", "/srv/nix-root"],
    ["serve", "ssh", "--write", "--store=/srv/r", "--timeout", "2.5", "--idle-timeout=60"],
]


@pytest.mark.parametrize("argv", TAKEN, ids=" ".join)
def test_fast_path_calls_what_typer_calls(
    argv: list[str], recorded: Callable[[list[str]], tuple[str, dict[str, object]]]
) -> None:
    found = fast.parse(argv)
    assert found is not None, "the fast path should take this command line"
    action, kwargs = found
    typer_action, typer_kwargs = recorded(argv)
    assert action == typer_action
    assert normal(kwargs) == normal(typer_kwargs)


LEFT_TO_TYPER = [
    [],
    ["nar"],
    ["--version", "nar", "dump", "x"],
    ["nar", "dump"],
    ["nar", "dump", "x", "y"],
    ["nar", "dump", "--help"],
    ["nar", "dump", "-h", "x"],
    ["nar", "dump", "x", "-o"],
    ["nar", "dump", "x", "-oout.nar"],
    ["nar", "dump", "x", "-o=out.nar"],
    ["nar", "dump", "x", "--out", "f"],
    ["nar", "dump", "x", "--case-hack", "ON"],
    ["nar", "dump", "x", "--case-hack=maybe"],
    ["nar", "restore", "dest", "--json=yes"],
    ["nar", "restore", "dest", "--no-json"],
    ["nar", "ls", "a.nar", "-Rl"],
    ["nar", "ls", "a.nar", "/", "extra"],
    ["nar", "cat", "a.nar"],
    ["hash", "path"],
    ["hash", "path", "--"],
    ["hash", "file", "--format"],
    ["hash", "nar", "x"],
    ["store", "info"],
    ["import", "x"],
    ["import", "-h"],
    ["import", "--store"],
    ["export"],
    ["export", "-ro", "f", "p"],
    ["export", "p", "--recursive=1"],
    ["copy"],
    ["copy", "--to", "x"],
    ["copy", "-rh", "p"],
    ["copy", "--from", "a", "--to", "b", "--no-check-sigs=1", "p"],
    ["copy", "p", "--trusted-public-keys"],
    ["copy", "p", "--case-fold", "ntfs"],
    ["serve", "ssh", "--timeout", "soon"],
    ["serve", "ssh", "--idle-timeout="],
    ["serve", "ssh", "--write=1"],
    ["serve", "ssh", "extra"],
    ["serve", "http"],
]


@pytest.mark.parametrize("argv", LEFT_TO_TYPER, ids=lambda a: " ".join(a) or "(nothing)")
def test_fast_path_leaves_the_rest_to_typer(argv: list[str]) -> None:
    assert fast.parse(argv) is None


def _click_command(*words: str) -> Any:
    """The click command typer makes of `xstore WORDS` (typer carries its own click)."""
    root: Any = typer.main.get_command(app)
    with root.make_context("xstore", [*words, "--help"], resilient_parsing=True) as ctx:
        command = root.get_command(ctx, words[0])
        for word in words[1:]:
            command = command.get_command(ctx, word)
    assert command is not None
    return command


@pytest.mark.parametrize("key", list(fast.SPECS), ids=" ".join)
def test_tables_mirror_the_typer_declarations(key: tuple[str, str]) -> None:
    """Same options, same spellings, same kinds, same choices, same defaults, same arguments: an option
    added to or dropped from a typer command must be added to or dropped from the fast path's table."""
    spec = fast.SPECS[key]
    command = _click_command(*key)
    options: list[Any] = [p for p in command.params if isinstance(p, TyperOption) and p.name != "help"]
    arguments: list[Any] = [p for p in command.params if isinstance(p, TyperArgument)]
    assert {p.name for p in options} == {o.dest for o in spec.options}
    for param in options:
        (opt,) = [o for o in spec.options if o.dest == param.name]
        assert sorted(param.opts + param.secondary_opts) == sorted(opt.names)
        kind = "flag" if param.is_flag else "multi" if param.multiple else "value"
        assert kind == opt.kind
        if opt.choices is not None:
            assert sorted(param.type.choices) == sorted(m.value for m in opt.choices)
        else:
            assert not hasattr(param.type, "choices")
        assert (param.type.name == "float") == (opt.convert is float)
        if not param.is_flag:
            assert param.default == (opt.default.value if isinstance(opt.default, enum.Enum) else opt.default)
    assert [p.name for p in arguments] == list(spec.positionals)
    assert [p.nargs for p in arguments] == [-1 if spec.rest else 1] * len(arguments)
    for param in arguments:
        assert param.required == (param.name not in spec.optional)
        if param.name in spec.optional:
            assert param.default == spec.optional[param.name]


COMMON_WORDS = ["auto", "on", "off", "ascii", "apfs", "x", "y", "", "-", "--", "-x", "--x", "-Rl", "-h"]


def _vocabulary(spec: fast.Spec) -> list[str]:
    names = [name for o in spec.options for name in o.names]
    inline = [f"{name}={v}" for name in names if name.startswith("--") for v in ("on", "x", "")]
    return sorted({*names, *inline, *COMMON_WORDS})


VOCABULARY = {key: _vocabulary(spec) for key, spec in fast.SPECS.items()}


@given(data=st.data())
def test_whatever_the_fast_path_takes_typer_reads_the_same(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(list(fast.SPECS)))
    words = data.draw(st.lists(st.sampled_from(VOCABULARY[key]), max_size=7))
    argv = [*key, *words]
    found = fast.parse(argv)
    if found is None:
        return
    _action, kwargs = found
    # Click's own parse of the same words, without running anything.
    command = _click_command(*key)
    ctx = command.make_context(key[-1], list(words))
    expected = {k: (v.value if hasattr(v, "value") else v) for k, v in ctx.params.items()}
    got = {k: (v.value if hasattr(v, "value") else v) for k, v in kwargs.items()}
    assert normal(got) == normal(expected), argv


def probe_code(heavy: tuple[str, ...], record: Path | None = None) -> str:
    """Python code running `xstore ARGV...` (its arguments), then writing the modules of `heavy` that the
    run loaded, space-separated, as a line: to stderr, or appended to the file `record`."""
    out = "sys.stderr" if record is None else f"open({str(record)!r}, 'a')"
    return (
        "import sys\n"
        "from xstore.cli.entry import main\n"
        "sys.argv = ['xstore', *sys.argv[1:]]\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        f"    heavy = {heavy!r}\n"
        f"    {out}.write(' '.join(m for m in heavy if m in sys.modules) + '\\n')\n"
    )


def run_probed(cwd: Path, heavy: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess[str]:
    """`xstore ARGV...` in a fresh interpreter, whose last line on stderr names the modules of `heavy` that
    the run loaded (empty when none)."""
    return subprocess.run(
        [sys.executable, "-c", probe_code(heavy), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "80"},
    )


def test_a_run_on_the_fast_path_loads_neither_typer_nor_click(tmp_path: Path) -> None:
    """Nor, for `nar dump` and `nar restore`, the other heavy modules they do not need: what keeps their
    start-up short."""
    (tmp_path / "f").write_bytes(b"hello")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        heavy = ("typer", "click", "typing", "dataclasses", "inspect", "shutil", "re")
        return run_probed(tmp_path, heavy, *argv)

    fast_run = run("nar", "dump", "f", "-o", "f.nar")
    assert fast_run.returncode == 0, fast_run.stderr
    assert fast_run.stderr == "\n"
    assert (tmp_path / "f.nar").read_bytes().startswith(b"\x0d\0\0\0\0\0\0\0nix-archive-1")
    # Nor does a restore (or a listing): the parser, its events and the tree writer load none of them.
    restored = run("nar", "restore", "out", "-i", "f.nar")
    assert restored.returncode == 0, restored.stderr
    assert restored.stderr == "\n"
    assert (tmp_path / "out").read_bytes() == b"hello"
    hashed = run("hash", "file", "f", "--format", "base16")
    assert hashed.stdout == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n"
    assert not {"typer", "click"} & set(hashed.stderr.split())
    # An error on the fast path is the same one line and exit status as on typer's.
    missing = run("nar", "dump", "nothing-here")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ")
    assert missing.stderr.count("\n") == 2
    # Help is typer's.
    helped = run("nar", "dump", "--help")
    assert helped.returncode == 0
    assert "--exclude" in helped.stdout
    assert "typer" in helped.stderr.split()


def test_store_commands_load_neither_dataclasses_nor_inspect(tmp_path: Path) -> None:
    """`export`, `import` and `copy` from a zstd binary cache start without `dataclasses` and `inspect`
    (about 20 ms of every such command, see `xstore.records`), the `pyzstd` layer that loads them, or
    `typing`; nor do they load `shutil` (bz2, lzma) to remove an empty scratch directory."""
    from tests.localstores import add_path, sp
    from xstore.casehack import CaseHackMode
    from xstore.store import LocalStore

    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as store:
        lib = sp("9a", "lib")
        add_path(store, lib, {b"lib/": b"", b"lib/libx.so": b"\x7fELF" + bytes(300)})
        add_path(store, sp("3b", "app"), {b"bin/app": b"#!/bin/sh\n"}, lib)
    with LocalStore.create(tmp_path / "dst", case_hack=CaseHackMode.OFF):
        pass

    def run(*argv: str) -> str:
        heavy = ("typer", "click", "dataclasses", "inspect", "pyzstd", "typing", "shutil")
        done = run_probed(tmp_path, heavy, *argv)
        assert done.returncode == 0, done.stderr
        return done.stderr.splitlines()[-1]

    app = sp("3b", "app").path
    assert run("export", "--store", "./src", "-r", app, "-o", "closure.export") == ""
    assert run("import", "--store", "./dst", "-i", "closure.export") == ""
    cache = f"file://{tmp_path / 'cache'}?compression=zstd"
    assert run("copy", "--from", "./src", "--to", cache, "-r", app) == ""
    assert run("copy", "--from", cache, "--to", "./dst", "--no-check-sigs", "-r", app) == ""
    assert (tmp_path / "cache" / "nix-cache-info").is_file()


def test_serve_ssh_and_its_client_load_neither_typing_nor_dataclasses(tmp_path: Path) -> None:
    """`xstore serve ssh`, started once per `nix copy` to or from a machine where xstore is the far end,
    loads neither `typing`, `dataclasses` nor `inspect` (its protocol's messages are records), nor
    `subprocess` or `tempfile`, which only a client starting ssh needs; `xstore copy` over
    `ssh://` in both directions loads none of the first three either."""
    from tests.localstores import add_path, sp
    from xstore.casehack import CaseHackMode
    from xstore.store import LocalStore

    with LocalStore.create(tmp_path / "src", case_hack=CaseHackMode.OFF) as store:
        lib = sp("9a", "lib")
        add_path(store, lib, {b"lib/": b"", b"lib/libx.so": b"\x7fELF" + bytes(300)})
        add_path(store, sp("3b", "app"), {b"bin/app": b"#!/bin/sh\n"}, lib)
    for name in ("far", "back"):
        with LocalStore.create(tmp_path / name, case_hack=CaseHackMode.OFF):
            pass
    far_heavy = ("typing", "dataclasses", "inspect", "subprocess", "tempfile")
    loaded = tmp_path / "far-loaded"
    # The far end as Nix starts it (`PROGRAM --serve --write --store ROOT`), noting what it loaded.
    (tmp_path / "probe.py").write_text(probe_code(far_heavy, loaded))
    program = tmp_path / "far-xstore"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "probe.py"}" serve ssh "$@"\n')
    program.chmod(0o755)

    def run(*argv: str) -> str:
        done = run_probed(tmp_path, ("typing", "dataclasses", "inspect"), *argv)
        assert done.returncode == 0, done.stderr
        return done.stderr.splitlines()[-1]

    app = sp("3b", "app").path
    assert (
        run(
            "copy",
            "--from",
            "./src",
            "--to",
            f"ssh://localhost?remote-store={tmp_path / 'far'}&remote-program={program}",
            "-r",
            app,
        )
        == ""
    )
    assert (
        run(
            "copy",
            "--from",
            f"ssh://localhost?remote-store={tmp_path / 'far'}&remote-program={program}",
            "--to",
            "./back",
            "--no-check-sigs",
            "-r",
            app,
        )
        == ""
    )
    assert loaded.read_text().splitlines() == ["", ""]
    with LocalStore.open(tmp_path / "back") as back:
        assert back.is_valid(sp("3b", "app"))
