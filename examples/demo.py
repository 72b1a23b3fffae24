"""xstore's main job on the bundled example, step by step, with the commands a user would type.

A Linux closure (examples/linux-headers.nar: netfilter headers, terminfo, man pages, and one NFC/NFD pair)
holds names that collide on a Mac. The demo scans it, restores it as macOS needs it (case hack on, APFS
fold), shows the renamed names, dumps the tree again and proves the archive and its hash come back byte
for byte, and, where Nix is installed, that Nix's own dump of the tree agrees.

Exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from xstore.casehack import Fold, fold_key

EXAMPLE = Path(__file__).resolve().parent / "linux-headers.nar"


def run(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
    shown = " ".join(shlex.quote(a) for a in args)
    sys.stdout.write(f"\n$ {shown}\n")
    sys.stdout.flush()
    argv = [sys.executable, "-m", "xstore", *args[1:]] if args[0] == "xstore" else list(args)
    result = subprocess.run(argv, capture_output=True, check=False)
    sys.stdout.write(result.stdout.decode("utf-8", "replace") if len(result.stdout) < 4000 else "")
    sys.stdout.write(result.stderr.decode("utf-8", "replace"))
    if result.returncode not in ok:
        sys.stdout.write(f"(exit status {result.returncode})\n")
        raise SystemExit(1)
    return result


def check(label: str, ok: bool) -> bool:
    sys.stdout.write(f"{'ok ' if ok else 'FAIL'}  {label}\n")
    return ok


def fits_on_apfs(tree: str) -> bool:
    for _dir, dirs, files in os.walk(os.fsencode(tree)):
        keys = [fold_key(name, Fold.APFS) for name in dirs + files]
        if len(keys) != len(set(keys)):
            return False
    return True


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="xstore-demo-"))
    try:
        nar = str(EXAMPLE)
        tree = str(work / "on-a-mac")
        again = str(work / "again.nar")
        sys.stdout.write("1. Which names would collide on a case-insensitive filesystem? (exit 3: some)\n")
        run("xstore", "casehack", "scan", nar, ok=(3,))

        sys.stdout.write("\n2. Restore it the way a Mac needs it: colliding names get ~nix~case~hack~N\n")
        summary = json.loads(
            run(
                "xstore",
                "nar",
                "restore",
                tree,
                "-i",
                nar,
                "--case-hack",
                "on",
                "--case-fold",
                "apfs",
                "--json",
            ).stdout
        )
        renamed = sorted(
            os.path.relpath(os.path.join(d, n), tree)
            for d, dirs, files in os.walk(tree)
            for n in dirs + files
            if "~nix~case~hack~" in n
        )
        sys.stdout.write("renamed on disk:\n" + "".join(f"  {r}\n" for r in renamed))

        sys.stdout.write(
            "\n3. Dump the tree again: the suffixes are stripped, the original names come back\n"
        )
        run("xstore", "nar", "dump", tree, "-o", again)
        tree_hash = run("xstore", "hash", "path", tree).stdout.decode().strip()
        nar_hash = run("xstore", "hash", "file", nar).stdout.decode().strip()

        sys.stdout.write("\nChecks:\n")
        sha256 = "sha256-" + base64.b64encode(hashlib.sha256(EXAMPLE.read_bytes()).digest()).decode()
        results = [
            check(f"{summary['renamed']} names renamed", summary["renamed"] == len(renamed) > 0),
            check("no two names in a directory fold to the same name (APFS rules)", fits_on_apfs(tree)),
            check(
                "the dumped archive is byte-identical to the original",
                Path(again).read_bytes() == EXAMPLE.read_bytes(),
            ),
            check(
                f"the tree's NAR hash equals the archive's hash ({tree_hash})",
                tree_hash == nar_hash == sha256,
            ),
        ]
        nix_store = shutil.which("nix-store")
        if nix_store:
            sys.stdout.write("\n4. Nix agrees: its own dump of the case-hacked tree (use-case-hack true)\n")
            nix_dump = run(nix_store, "--option", "use-case-hack", "true", "--dump", tree).stdout
            results.append(
                check("nix-store --dump gives the original archive too", nix_dump == EXAMPLE.read_bytes())
            )
        else:
            sys.stdout.write("\n(nix-store not installed: skipping the comparison with Nix)\n")
        return 0 if all(results) else 1
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
