"""Fixtures for the integration tests that request them by name (none is automatic)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fusehelpers import require_fuse, xstore_mounts


@pytest.fixture
def fuse_here(tmp_path: Path) -> Iterator[None]:
    """The test needs FUSE, and must leave no mount behind in its directory."""
    require_fuse()
    yield
    left = [line for line in xstore_mounts() if str(tmp_path) in line]
    assert not left, f"mounts left behind: {left}"


@pytest.fixture
def mountpoint(tmp_path: Path) -> Path:
    """An empty directory to mount on."""
    path = tmp_path / "mnt"
    path.mkdir()
    return path
