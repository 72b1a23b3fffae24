"""Constant memory: peak RSS of real `xstore` processes must not grow with the archive or file size.

Each command runs twice, on a small and on a large input (a 16 MiB and a 320 MiB file), streamed
through pipes so nothing is buffered by the test. The large run may use at most a few MiB more than the
small one, and stays under 64 MiB in all. Peak RSS comes from `wait4`, the kernel's own count, taken by
a minimal launcher: Linux carries a process's peak over from the process that forked it, so measured
from pytest itself every child would start at pytest's own peak and the test could not fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xstore.exportstream import trailer
from xstore.storepath import parse_store_path
from xstore.wire import U64, encode_strings, encode_u64

SMALL = 16 << 20
LARGE = 320 << 20
BLOCK = bytes(range(256)) * 4096  # 1 MiB


def nar_of_file(size: int) -> Iterator[bytes]:
    yield encode_strings(b"nix-archive-1", b"(", b"type", b"regular", b"contents") + U64.pack(size)
    left = size
    while left:
        n = min(left, len(BLOCK))
        yield BLOCK[:n]
        left -= n
    yield bytes(-size & 7) + encode_strings(b")")


# Runs argv[2:] as a child, waits with wait4 and writes the child's peak RSS to the fd in argv[1].
LAUNCHER = """
import os, sys
report = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(report)
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(report, str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_kib(argv: list[str], feed: Iterator[bytes] | None = None) -> int:
    report_r, report_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", LAUNCHER, str(report_w), sys.executable, "-m", "xstore", *argv],
        pass_fds=(report_w,),
        stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(report_w)
    if feed is not None:
        assert proc.stdin is not None
        for block in feed:
            proc.stdin.write(block)
        proc.stdin.close()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait() == 0, err.decode()
    with os.fdopen(report_r, "rb") as report:
        return int(report.read())


@pytest.mark.slow
def test_restore_dump_and_hash_run_in_constant_memory(tmp_path: Path) -> None:
    results: dict[str, tuple[int, int]] = {}
    small_rss = peak_rss_kib(["nar", "restore", str(tmp_path / "small")], nar_of_file(SMALL))
    large_rss = peak_rss_kib(["nar", "restore", str(tmp_path / "large")], nar_of_file(LARGE))
    results["restore"] = (small_rss, large_rss)
    assert (tmp_path / "large").stat().st_size == LARGE
    for command in (["nar", "dump"], ["hash", "path"]):
        small = peak_rss_kib([*command, str(tmp_path / "small")])
        large = peak_rss_kib([*command, str(tmp_path / "large")])
        results[" ".join(command)] = (small, large)
    for name, (small, large) in results.items():
        assert large < 64 * 1024, f"{name}: peak RSS {large} KiB on {LARGE >> 20} MiB"
        assert large - small < 8 * 1024, f"{name}: {small} KiB -> {large} KiB, grows with input size"


def export_stream_of_file(size: int, name: str) -> Iterator[bytes]:
    path = parse_store_path(f"/nix/store/{'0' * 32}-{name}")
    yield encode_u64(1)
    yield from nar_of_file(size)
    yield trailer(path, [], None) + encode_u64(0)


@pytest.mark.slow
def test_import_and_export_run_in_constant_memory(tmp_path: Path) -> None:
    results: dict[str, tuple[int, int]] = {}
    rss = []
    for size, name in ((SMALL, "small"), (LARGE, "large")):
        store = str(tmp_path / name)
        rss.append(
            (
                peak_rss_kib(["import", "--store", store], export_stream_of_file(size, name)),
                peak_rss_kib(["export", "--store", store, f"/nix/store/{'0' * 32}-{name}"]),
            )
        )
    results["import"] = (rss[0][0], rss[1][0])
    results["export"] = (rss[0][1], rss[1][1])
    for name, (small, large) in results.items():
        assert large < 64 * 1024, f"{name}: peak RSS {large} KiB on {LARGE >> 20} MiB"
        assert large - small < 8 * 1024, f"{name}: {small} KiB -> {large} KiB, grows with input size"
