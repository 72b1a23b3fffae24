"""Session fixtures of the compat tests: trees built once, and archives that Nix made of them.

Everything here is made once per session and must be treated as read-only by the tests: a test that
needs to change a tree copies it first. Real trees come from the host: `/usr/include` (some 130 MB and
9000 files on a Debian machine with the usual -dev packages), and `/usr/include/linux`, which holds real
names colliding under case folding (`netfilter/xt_CONNMARK.h` and `xt_connmark.h`, among others).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.trees import (
    LINUX_HEADERS,
    USR_INCLUDE,
    collision_tree,
    materialise,
    mixed_tree,
    nix_store_to_file,
)
from tests.helpers import Nix, require_or_skip


@pytest.fixture(scope="session")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trees.mixed_tree()` on disk (read-only for tests)."""
    root = tmp_path_factory.mktemp("mixed") / "tree"
    materialise(root, mixed_tree())
    return root


@pytest.fixture(scope="session")
def mixed_nar(nix: Nix, mixed_dir: Path) -> bytes:
    """`nix-store --dump` of `mixed_dir`."""
    return nix.nix_store("--dump", mixed_dir)


@pytest.fixture(scope="session")
def collision_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trees.collision_tree()` on disk: names colliding under ASCII case folding (read-only)."""
    root = tmp_path_factory.mktemp("collisions") / "tree"
    materialise(root, collision_tree())
    return root


@pytest.fixture(scope="session")
def collision_nar(nix: Nix, collision_dir: Path) -> bytes:
    """`nix-store --dump` of `collision_dir` (Nix 2.8 on Linux does not case-hack by default)."""
    return nix.nix_store("--dump", collision_dir)


@pytest.fixture(scope="session")
def usr_include_nar(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`nix-store --dump /usr/include`, written to a file once per session."""
    require_or_skip(USR_INCLUDE.is_dir(), f"{USR_INCLUDE} does not exist (apt-get install linux-libc-dev)")
    return nix_store_to_file(
        nix, tmp_path_factory.mktemp("usr-include") / "include.nar", "--dump", USR_INCLUDE
    )


@pytest.fixture(scope="session")
def linux_headers_nar(nix: Nix, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`nix-store --dump /usr/include/linux`, written to a file once per session."""
    require_or_skip(
        (LINUX_HEADERS / "netfilter" / "xt_CONNMARK.h").is_file()
        and (LINUX_HEADERS / "netfilter" / "xt_connmark.h").is_file(),
        f"{LINUX_HEADERS}/netfilter/xt_CONNMARK.h and xt_connmark.h missing (apt-get install linux-libc-dev)",
    )
    return nix_store_to_file(nix, tmp_path_factory.mktemp("linux") / "linux.nar", "--dump", LINUX_HEADERS)
