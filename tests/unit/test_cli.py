"""The command line: in-process with CliRunner where output is text, as a real subprocess where exit
codes, binary stdin/stdout and tracebacks matter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xstore import __version__
from xstore.cli.app import app

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "nix-fixtures"
runner = CliRunner()


def xstore(
    *args: str | os.PathLike[str], input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "xstore", *(os.fspath(a) for a in args)],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"xstore {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nar"],
        ["nar", "dump", "--help"],
        ["nar", "restore", "--help"],
        ["nar", "ls", "--help"],
        ["nar", "cat", "--help"],
        ["hash", "path", "--help"],
        ["casehack", "scan", "--help"],
    ],
)
def test_help_everywhere(argv: list[str]) -> None:
    result = runner.invoke(app, argv)
    assert "Usage:" in result.output
    if argv and argv[-1] == "--help" and len(argv) == 3:
        assert "Example: xstore" in result.output


def test_dump_restore_round_trip_through_pipes(tmp_path: Path) -> None:
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "f").write_bytes(b"contents")
    (tmp_path / "src" / "l").symlink_to("sub/f")
    dump = xstore("nar", "dump", tmp_path / "src")
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.startswith(b"\x0d\0\0\0\0\0\0\0nix-archive-1")
    restore = xstore("nar", "restore", tmp_path / "dst", input=dump.stdout)
    assert restore.returncode == 0, restore.stderr
    again = xstore("nar", "dump", tmp_path / "dst")
    assert again.stdout == dump.stdout


def test_dump_to_file_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "x.nar"
    out.write_bytes(b"old")
    bad = xstore("nar", "dump", tmp_path / "missing", "-o", out)
    assert bad.returncode == 1
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["x.nar"]
    good = xstore("nar", "dump", FIXTURES / "README.md", "-o", out)
    assert good.returncode == 0
    assert out.read_bytes().startswith(b"\x0d\0\0\0\0\0\0\0nix-archive-1")


def test_errors_are_one_line_with_status_1(tmp_path: Path) -> None:
    data = (FIXTURES / "duplicate.nar").read_bytes()
    result = xstore("nar", "restore", tmp_path / "out", input=data)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines == ["error: bad archive: NAR directory is not sorted ('a' after 'a') (at byte 320, in /)"]
    assert os.listdir(tmp_path) == []


def test_control_characters_in_an_error_are_escaped(tmp_path: Path) -> None:
    # A hostile name (here a file name holding a newline, a carriage return and a terminal escape) keeps
    # the error one line and cannot drive the terminal; other bytes are written back as they were.
    missing = tmp_path / "a\nb\rc\x1b[31md\té\udcff"
    result = xstore("nar", "ls", missing)
    assert result.returncode == 1
    assert result.stderr.count(b"\n") == 1
    assert b"'" + os.fsencode(tmp_path) + b"/a\\nb\\rc\\x1b[31md\t\xc3\xa9\xff'" in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    data = (FIXTURES / "duplicate.nar").read_bytes()
    result = xstore("nar", "restore", tmp_path / "out", input=data, env={"XSTORE_DEBUG": "1"})
    assert result.returncode != 0
    assert b"Traceback" in result.stderr
    assert b"NarError" in result.stderr


# `main` as the console script runs it, with an object whose finaliser tells when the interpreter's
# teardown ran, and an exit handler the command registers (which must run either way).
_AS_PROGRAM = """
import atexit, sys
import xstore.cli.entry as entry

class Teardown:
    def __del__(self) -> None:
        sys.stderr.write("teardown\\n")

seen = Teardown()
command = entry.run

def run(argv: list[str]) -> None:
    atexit.register(lambda: sys.stderr.write("handler\\n"))
    command(argv)

entry.run = run
sys.argv = ["xstore", *sys.argv[1:]]
sys.exit(entry.main())
"""


@pytest.mark.parametrize("dev", [False, True])
def test_a_finished_command_leaves_without_the_teardown(tmp_path: Path, dev: bool) -> None:
    # Outside development mode the process ends once the command and the exit handlers are done, without
    # the interpreter's teardown; buffered output still arrives whole, and the status is the command's.
    # Under -X dev (as the tests run xstore) the teardown runs, so that leaked resources show.
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3000):
        (tree / f"file-{i:04}").write_bytes(b"x" * (i % 7))
    nar = tmp_path / "tree.nar"
    assert xstore("nar", "dump", tree, "-o", nar).returncode == 0
    flags = ["-X", "dev"] if dev else []
    listed = subprocess.run(
        [sys.executable, *flags, "-c", _AS_PROGRAM, "nar", "ls", "-R", nar, "/"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().splitlines() == [f"./file-{i:04}" for i in range(3000)]
    expected = ["handler", "teardown"] if dev else ["handler"]
    assert listed.stderr.decode().splitlines() == expected
    failed = subprocess.run(
        [sys.executable, *flags, "-c", _AS_PROGRAM, "nar", "ls", nar, "/nope"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert failed.returncode == 1
    lines = failed.stderr.decode().splitlines()
    assert lines[0].startswith("error: ")
    assert lines[1:] == expected
    usage = subprocess.run(
        [sys.executable, *flags, "-c", _AS_PROGRAM, "nar", "frobnicate"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert usage.returncode == 2
    assert usage.stderr.decode().splitlines()[-len(expected) :] == expected


def test_usage_errors_exit_2() -> None:
    result = xstore("nar", "dump", "--case-hack", "sometimes", ".")
    assert result.returncode == 2
    result = xstore("nar", "frobnicate")
    assert result.returncode == 2


def test_restore_refuses_trailing_bytes(tmp_path: Path) -> None:
    data = (FIXTURES / "simple.nar").read_bytes() + b"\0"
    result = xstore("nar", "restore", tmp_path / "out", input=data)
    assert result.returncode == 1
    assert b"unexpected data after the end of the archive" in result.stderr
    assert os.listdir(tmp_path) == []


def test_restore_json_summary(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "nar",
            "restore",
            str(tmp_path / "out"),
            "-i",
            str(FIXTURES / "case.nar"),
            "--case-hack",
            "on",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["caseHack"] is True
    assert summary["renamed"] == 5
    assert summary["fold"] == "ascii"
    assert summary["narSize"] == (FIXTURES / "case.nar").stat().st_size


def test_ls_and_cat() -> None:
    nar = str(FIXTURES / "case.nar")
    result = runner.invoke(app, ["nar", "ls", nar, "/x"])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["./FOO", "./Foo", "./foo", "./foo-1", "./foo0"]
    result = runner.invoke(app, ["nar", "ls", nar, "/", "--json"])
    listing = json.loads(result.stdout)
    assert listing["type"] == "directory"
    assert list(listing["entries"]) == ["x", "xt_CONNMARK.h", "xt_CONNmark.h", "xt_connmark.h"]
    simple = str(FIXTURES / "simple.nar")
    tree = json.loads(runner.invoke(app, ["nar", "ls", simple, "-R", "--json"]).stdout)
    files = [(k, v) for k, v in tree["entries"].items() if v["type"] == "regular" and v["size"]]
    assert files
    name, entry = files[0]
    cat = xstore("nar", "cat", simple, f"/{name}")
    assert cat.returncode == 0
    raw = (FIXTURES / "simple.nar").read_bytes()
    assert cat.stdout == raw[entry["narOffset"] : entry["narOffset"] + entry["size"]]
    piped = xstore("nar", "cat", "/dev/stdin", f"/{name}", input=raw)  # a pipe: read whole first
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == cat.stdout


def test_ls_errors() -> None:
    nar = str(FIXTURES / "case.nar")
    missing = xstore("nar", "ls", nar, "/nope")
    assert missing.returncode == 1
    assert missing.stderr.decode().strip() == "error: path '/nope' does not exist in the NAR"
    not_file = xstore("nar", "cat", nar, "/x")
    assert not_file.returncode == 1
    assert b"is not a regular file" in not_file.stderr
    invalid = xstore("nar", "ls", FIXTURES / "dot.nar")
    assert invalid.returncode == 1
    assert b"invalid file name" in invalid.stderr
    huge = xstore("nar", "cat", FIXTURES / "regular-truncated-large-contents.nar", "/")
    assert huge.returncode == 1
    assert huge.stderr.decode().splitlines() == [
        "error: bad archive: unexpected end of file: a file's contents need 18446744073709551614 more bytes, "
        "the archive has 0 (at byte 97, in /)"
    ]


def test_casehack_scan_exit_codes_and_json(tmp_path: Path) -> None:
    found = runner.invoke(app, ["casehack", "scan", str(FIXTURES / "case.nar"), "--json"])
    assert found.exit_code == 3
    report = json.loads(found.stdout)
    assert report["clean"] is False
    groups = {g["directory"]: g["names"] for g in report["collisions"]["ascii"]}
    assert groups["/"] == ["xt_CONNMARK.h", "xt_CONNmark.h", "xt_connmark.h"]
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "b").write_bytes(b"")
    clean = runner.invoke(app, ["casehack", "scan", str(tmp_path)])
    assert clean.exit_code == 0
    assert "0 group(s) colliding under the ASCII fold" in clean.stdout
    norm = runner.invoke(app, ["casehack", "scan", str(FIXTURES / "unnormalized.nar"), "--json"])
    assert norm.exit_code == 3
    report = json.loads(norm.stdout)
    assert report["collisions"]["ascii"] == []
    assert len(report["collisions"]["apfs"]) == 1


def test_hash_path_formats(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello")
    sri = runner.invoke(app, ["hash", "path", str(tmp_path / "f")])
    assert sri.exit_code == 0
    assert sri.stdout.startswith("sha256-")
    nix32 = runner.invoke(app, ["hash", "path", str(tmp_path / "f"), "--format", "base32"])
    assert len(nix32.stdout.strip()) == 52
    bad = runner.invoke(app, ["hash", "path", str(tmp_path / "f"), "--type", "crc32"])
    assert bad.exit_code == 2  # a usage error


def test_sigterm_mid_restore_leaves_nothing(tmp_path: Path) -> None:
    import signal
    import time

    header = (FIXTURES / "regular-truncated-large-contents.nar").read_bytes()[:-1]  # declares 2^64-1 bytes
    proc = subprocess.Popen(
        [sys.executable, "-m", "xstore", "nar", "restore", str(tmp_path / "out")],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(header + b"x" * (4 << 20))
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    while not any(".xstore-" in n for n in os.listdir(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until the restore is under way
    assert any(".xstore-" in n for n in os.listdir(tmp_path))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.decode().strip() == "error: interrupted"
    assert os.listdir(tmp_path) == []
