"""Suite-wide fixtures and settings.

- `nix`: the real Nix (see `tests/helpers.py`), one isolated environment per session.
- `nix_fixtures`: the directory of Nix's own NAR test fixtures (`tests/data/nix-fixtures/`).
- Tests under `tests/compat/` get the `compat` marker automatically.
- Hypothesis: no per-example deadline (the suite runs under `python -X dev` on small machines, where
  timing is noise, and benchmarks are not tests); in CI the failing example's blob is printed too.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import IN_CI, Nix, find_nix
from xstore.casehack import probe

# Fixtures shared across directories: `store` and `filled` (synthetic local stores).
pytest_plugins = ("tests.localstores",)

TESTS_DIR = Path(__file__).resolve().parent
NIX_FIXTURES_DIR = TESTS_DIR / "data" / "nix-fixtures"

# A script that starts the suite in the background (`cmd &` without job control) starts it with SIGINT
# ignored, and children inherit an ignored signal: the tests that stop a process with SIGINT, as Ctrl-C
# would, then wait for an interrupt that never lands. A handler here becomes the default in each child at
# exec, as if the suite had been started from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile("ci" if IN_CI else "dev")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    compat_dir = TESTS_DIR / "compat"
    for item in items:
        if item.path.is_relative_to(compat_dir):
            item.add_marker(pytest.mark.compat)
            # Side by side with Linux trees (/usr/include, colliding names on disk).
            item.add_marker(pytest.mark.case_sensitive_tmp)


@functools.cache
def _tmp_folding() -> str | None:
    """Why the temporary directory's filesystem cannot hold every name the suite builds, or None."""
    tmp = tempfile.mkdtemp(prefix="xstore-fs-check-")
    try:
        behaviour = probe(tmp)
        if behaviour.folds_names:
            return f"the temporary directory {tempfile.gettempdir()} folds case or normalisation"
        try:
            os.close(os.open(os.path.join(os.fsencode(tmp), b"\xff"), os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError:
            return f"the temporary directory {tempfile.gettempdir()} refuses names that are not UTF-8"
        return None
    finally:
        shutil.rmtree(tmp)


@pytest.fixture(autouse=True)
def _case_sensitive_tmp(request: pytest.FixtureRequest) -> None:
    """Tests marked `case_sensitive_tmp` expect a filesystem that keeps every name apart, as Linux
    filesystems do; on one that folds names (APFS, HFS+) they skip with the reason, since what they
    check there is covered by tests that expect what that filesystem does (tests/macos)."""
    if request.node.get_closest_marker("case_sensitive_tmp") is None:
        return
    reason = _tmp_folding()
    if reason is not None:
        pytest.skip(f"needs a filesystem that keeps case and normalisation variants apart: {reason}")


@pytest.fixture(scope="session")
def nix(tmp_path_factory: pytest.TempPathFactory) -> Nix:
    """The real Nix tools, run in a per-session environment that never touches the host's /nix.

    Skips the test when Nix is missing, except in CI (`CI=true`), where it fails.
    """
    return find_nix(tmp_path_factory.mktemp("nix-env"))


@pytest.fixture(scope="session")
def nix_fixtures() -> Path:
    """The directory holding Nix's own NAR fixtures and their README (the table of expectations)."""
    return NIX_FIXTURES_DIR
