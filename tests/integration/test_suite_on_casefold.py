"""The suite's own filesystem tests, run with their temporary directory on the case-insensitive layer:
what a Mac would do to them, here on Linux. No test may assume that the temporary directory keeps case
or normalisation variants apart; those that need it are marked `case_sensitive_tmp` and skip there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.fusehelpers import mounted, require_fuse

pytestmark = pytest.mark.fuse

ROOT = Path(__file__).resolve().parents[2]
SUITES = [
    "tests/unit/test_restore.py",
    "tests/unit/test_dump.py",
    "tests/unit/test_store.py",
    "tests/unit/test_cli.py",
]


@pytest.mark.slow
def test_filesystem_tests_pass_on_a_folding_filesystem(tmp_path: Path) -> None:
    require_fuse()
    backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    with mounted(["casefold", backing, mountpoint], mountpoint):
        result = subprocess.run(
            [
                sys.executable,
                "-X",
                "dev",
                "-bb",
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-rs",
                f"--basetemp={mountpoint / 'pytest'}",
                *SUITES,
            ],
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(mountpoint)},
            capture_output=True,
            timeout=600,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, out[-4000:] + result.stderr.decode()[-2000:]
    # The layer really folds: the tests that need a case-sensitive directory said so and skipped.
    assert "folds case or normalisation" in out
    assert " passed" in out
