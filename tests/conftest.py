"""Suite-wide fixtures and settings.

- `nix`: the real Nix (see `tests/helpers.py`), one isolated environment per session.
- `nix_fixtures`: the directory of Nix's own NAR test fixtures (`tests/data/nix-fixtures/`).
- Tests under `tests/compat/` get the `compat` marker automatically.
- Hypothesis: no per-example deadline (the suite runs under `python -X dev` on small machines, where
  timing is noise, and benchmarks are not tests); in CI the failing example's blob is printed too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import IN_CI, Nix, find_nix

TESTS_DIR = Path(__file__).resolve().parent
NIX_FIXTURES_DIR = TESTS_DIR / "data" / "nix-fixtures"

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile("ci" if IN_CI else "dev")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    compat_dir = TESTS_DIR / "compat"
    for item in items:
        if item.path.is_relative_to(compat_dir):
            item.add_marker(pytest.mark.compat)


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
