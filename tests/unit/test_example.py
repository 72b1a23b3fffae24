"""The bundled example and the README's main-job demo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import NIX_MISSING, require_or_skip

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_bundled_example_is_what_its_generator_makes(tmp_path: Path) -> None:
    script = (EXAMPLES / "make_example.py").read_text()
    # Run the generator against a copy, so the committed archive is compared, not overwritten.
    (tmp_path / "make_example.py").write_text(script)
    subprocess.run([sys.executable, str(tmp_path / "make_example.py")], check=True, timeout=60)
    assert (tmp_path / "linux-headers.nar").read_bytes() == (EXAMPLES / "linux-headers.nar").read_bytes()


@pytest.mark.compat
def test_demo_passes_all_its_checks() -> None:
    require_or_skip(shutil.which("nix-store"), NIX_MISSING)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")], capture_output=True, timeout=300, check=False
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "FAIL" not in out
    for line in (
        "an unsigned (untrusted) path is refused",
        "both caches hold the same NAR files, byte for byte",
        "both caches hold the same signed narinfos, byte for byte",
        "the headers' NAR in the second cache is the original archive",
        "nix copy accepts the second cache with the key trusted",
        "Nix's copy of the headers dumps to the original archive",
        "nix-store --dump gives the original archive too, from the case-hacked tree",
    ):
        assert f"\nok   {line}\n" in out, line
    assert out.count("\nok ") >= 10
