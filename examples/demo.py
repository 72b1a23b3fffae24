"""xstore's main job as a user does it: a Linux closure through binary caches onto a Mac-like volume and back.

The bundled example (examples/linux-headers.nar: netfilter headers, terminfo, man pages, and one NFC/NFD
pair) is a store path whose names collide on a Mac; with a small path that refers to it, it makes a closure
of two paths on a "Linux machine" (a local store). The demo, with the commands a user would type:

1. publishes the closure to a local binary cache (file://, zstd, with listings) signed with a fresh key;
2. checks the cache for names that would collide on a Mac, from its listings alone;
3. copies the closure from the cache into a store on a case-insensitive volume (`xstore mount casefold`,
   a FUSE layer that folds names as APFS does), where signatures are checked (refused until the key is
   trusted) and the case hack is applied as the store's settings say;
4. copies it back out of that store into a second cache;
5. proves that both caches hold the same NARs (and narinfos), that the NARs are the original archive byte
   for byte, and, where Nix is installed, that Nix accepts the second cache (signatures, hashes) and reads
   the case-hacked tree back to the original archive.

Without FUSE (no /dev/fuse or pyfuse3) the Mac-like store is a plain directory with the case hack forced on.
Nothing needs the network. Exits 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from xstore.casehack import Fold, fold_key
from xstore.compression import open_reader
from xstore.exportstream import STREAM_END, trailer
from xstore.nar.encoder import NarEncoder
from xstore.nar.events import ArchiveEnd, DirectoryEnd, DirectoryStart, FileChunk, FileEnd, RegularFile
from xstore.storepath import StorePath, make_source_path, make_store_path
from xstore.wire import encode_u64

EXAMPLE = Path(__file__).resolve().parent / "linux-headers.nar"
CASE_HACK = "~nix~case~hack~"


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run(
    *args: str, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None, show: bool = True
) -> subprocess.CompletedProcess[bytes]:
    shown = " ".join(shlex.quote(a) for a in args)
    say(f"\n$ {shown}")
    argv = [sys.executable, "-m", "xstore", *args[1:]] if args[0] == "xstore" else list(args)
    result = subprocess.run(argv, capture_output=True, check=False, env=env)
    sys.stdout.write(result.stdout.decode("utf-8", "replace") if show and len(result.stdout) < 4000 else "")
    sys.stdout.write(result.stderr.decode("utf-8", "replace"))
    if result.returncode not in ok:
        say(f"(exit status {result.returncode})")
        raise SystemExit(1)
    return result


def check(label: str, ok: bool) -> bool:
    say(f"{'ok ' if ok else 'FAIL'}  {label}")
    return ok


# -- the closure on the "Linux machine" ------------------------------------------------------------------


def closure_export(headers_nar: bytes) -> tuple[bytes, StorePath, StorePath]:
    """An export stream (as `nix-store --export` writes) of the headers and of a small path that names
    them: (stream, headers path, env path)."""
    headers = make_source_path("linux-headers", hashlib.sha256(headers_nar).digest())
    env = make_store_path("output:out", hashlib.sha256(b"xstore demo: kernel-env").digest(), "kernel-env")
    text = f"{headers}\n".encode()
    encoder = NarEncoder()
    events = (
        DirectoryStart(()),
        DirectoryStart((b"nix-support",)),
        RegularFile((b"nix-support", b"propagated-build-inputs"), False, len(text), 0),
        FileChunk(text),
        FileEnd((b"nix-support", b"propagated-build-inputs")),
        DirectoryEnd((b"nix-support",)),
        DirectoryEnd(()),
        ArchiveEnd(0),
    )
    env_nar = b"".join(encoder.send(event) for event in events)
    stream = b"".join(
        (
            encode_u64(1), headers_nar, trailer(headers, (), None),
            encode_u64(1), env_nar, trailer(env, (headers,), None),
            STREAM_END,
        )
    )  # fmt: skip
    return stream, headers, env


# -- the Mac-like volume -------------------------------------------------------------------------------------


@contextlib.contextmanager
def mac_like_volume(work: Path) -> Iterator[tuple[Path, bool]]:
    """A case-insensitive directory: the casefold FUSE layer (APFS model) when it can be mounted, else a
    plain directory. Yields (directory, whether it folds)."""
    backing, mountpoint = work / "backing", work / "mac"
    backing.mkdir()
    mountpoint.mkdir()
    say("\n3. A case-insensitive volume, as on a Mac (FUSE layer with APFS's folding)")
    argv = [
        sys.executable,
        "-m",
        "xstore",
        "mount",
        "casefold",
        str(backing),
        str(mountpoint),
        "--model",
        "apfs",
    ]
    say(f"\n$ xstore mount casefold {backing} {mountpoint} --model apfs")
    mounted = subprocess.run(argv, capture_output=True, check=False, timeout=120)
    if mounted.returncode != 0:
        say(mounted.stderr.decode("utf-8", "replace").strip())
        say("(no FUSE here: using a plain directory, the case hack forced on)")
        yield mountpoint, False
        return
    try:
        yield mountpoint, True
    finally:
        subprocess.run(
            [sys.executable, "-m", "xstore", "umount", str(mountpoint)], capture_output=True, check=False
        )


def fits_on_apfs(tree: Path) -> bool:
    for _dir, dirs, files in os.walk(os.fsencode(tree)):
        keys = [fold_key(name, Fold.APFS) for name in dirs + files]
        if len(keys) != len(set(keys)):
            return False
    return True


def nar_files(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cache / "nar").iterdir())}


def narinfos(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(cache.glob("*.narinfo"))}


def decompressed(data: bytes) -> bytes:
    reader = open_reader(io.BytesIO(data).read, "zstd")
    return b"".join(iter(lambda: reader(1 << 20), b""))


def nix_environment(base: Path) -> dict[str, str]:
    """Nix's state, configuration and cache under `base`: the demo never touches the machine's /nix."""
    dirs = {name: base / name for name in ("state", "log", "conf", "cache", "home")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    (dirs["conf"] / "nix.conf").write_text(
        "sandbox = false\nsubstituters =\nbuild-users-group =\nexperimental-features = nix-command\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIX_")}
    env.update(
        NIX_STATE_DIR=str(dirs["state"]), NIX_LOG_DIR=str(dirs["log"]), NIX_CONF_DIR=str(dirs["conf"]),
        XDG_CACHE_HOME=str(dirs["cache"]), HOME=str(dirs["home"]), LC_ALL="C",
    )  # fmt: skip
    return env


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="xstore-demo-"))
    try:
        return journey(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def journey(work: Path) -> int:
    original = EXAMPLE.read_bytes()
    stream, headers, env = closure_export(original)
    (work / "closure.export").write_bytes(stream)
    linux, key, public = work / "linux", work / "secret.key", work / "public.key"
    cache_a, cache_b = work / "cache-a", work / "cache-b"
    params = f"compression=zstd&secret-key={key}&write-nar-listing=1"

    say("0. On the Linux machine: a store holding the closure (the headers, and a path that refers to them)")
    run("xstore", "import", "--store", str(linux), "--case-hack", "off", "-i", str(work / "closure.export"))

    say("\n1. Publish it to a binary cache, signed with a fresh key")
    key.write_bytes(run("xstore", "key", "generate-secret", "--key-name", "demo-cache-1").stdout)
    converted = subprocess.run(
        [sys.executable, "-m", "xstore", "key", "convert-secret-to-public"],
        input=key.read_bytes(), capture_output=True, check=True,
    )  # fmt: skip
    say("$ xstore key convert-secret-to-public < secret.key > public.key")
    public.write_bytes(converted.stdout)
    say(converted.stdout.decode())
    run("xstore", "copy", "--from", str(linux), "--to", f"file://{cache_a}?{params}", "-r", env.path)

    say(
        "\n2. Before downloading anything: which names would collide on a Mac? "
        "(from the cache's listings; exit 3)"
    )
    run("xstore", "casehack", "scan", f"file://{cache_a}", "-r", env.path, ok=(3,))

    results: list[bool] = []
    with mac_like_volume(work) as (volume, folds):
        mac = volume / "root"
        init = ["xstore", "store", "init", "--store", str(mac)]
        run(*(init if folds else [*init, "--case-hack", "on", "--case-fold", "apfs"]))
        say("\n   Copy the closure in: the cache's key is not trusted yet, so the copy is refused")
        refused = run(
            "xstore", "copy", "--from", f"file://{cache_a}", "--to", str(mac), "-r", env.path, ok=(1,)
        )
        results.append(
            check("an unsigned (untrusted) path is refused", b"lacks a valid signature" in refused.stderr)
        )
        run("xstore", "store", "trust", "--store", str(mac), public.read_text())
        run("xstore", "copy", "--from", f"file://{cache_a}", "--to", str(mac), "-r", env.path)
        run("xstore", "verify", "--store", str(mac), "--check-contents")
        tree = mac / "nix" / "store" / headers.base
        renamed = sorted(
            os.path.relpath(os.path.join(d, n), tree)
            for d, dirs, files in os.walk(tree)
            for n in dirs + files
            if CASE_HACK in n
        )
        say("renamed on the case-insensitive volume:\n" + "".join(f"  {r}\n" for r in renamed))

        say("4. Copy it back out, to a second cache")
        run("xstore", "copy", "--from", str(mac), "--to", f"file://{cache_b}?{params}", "-r", env.path)

        say("\nChecks:")
        results += [
            check(f"{len(renamed)} colliding names renamed with {CASE_HACK}N", len(renamed) > 0),
            check("no two names in a directory fold to the same name (APFS rules)", fits_on_apfs(tree)),
            check(
                "both caches hold the same NAR files, byte for byte", nar_files(cache_a) == nar_files(cache_b)
            ),
            check(
                "both caches hold the same signed narinfos, byte for byte",
                narinfos(cache_a) == narinfos(cache_b),
            ),
            check(
                "the headers' NAR in the second cache is the original archive",
                original in [decompressed(data) for data in nar_files(cache_b).values()],
            ),
        ]
        nix_store = shutil.which("nix-store")
        nix = shutil.which("nix")
        if nix_store and nix:
            say("\n5. Nix agrees: it copies from the second cache, checking the signatures, and verifies")
            nix_env = nix_environment(work / "nix")
            nix_root = work / "nix-root"
            trusted = public.read_text()
            run(nix, "copy", "--store", str(nix_root), "--option", "trusted-public-keys", trusted,
                "--from", f"file://{cache_b}", env.path, env=nix_env)  # fmt: skip
            verified = run(nix_store, "--store", str(nix_root), "--verify", "--check-contents", env=nix_env)
            dumped = run(
                nix_store, "--dump", str(nix_root / "nix" / "store" / headers.base), env=nix_env, show=False
            ).stdout
            hacked = run(
                nix_store, "--option", "use-case-hack", "true", "--dump", str(tree), env=nix_env, show=False
            ).stdout
            results += [
                check("nix copy accepts the second cache with the key trusted", True),
                check(
                    "nix-store --verify --check-contents finds nothing wrong", b"error" not in verified.stderr
                ),
                check("Nix's copy of the headers dumps to the original archive", dumped == original),
                check(
                    "nix-store --dump gives the original archive too, from the case-hacked tree",
                    hacked == original,
                ),
            ]
        else:
            say("\n(Nix is not installed: skipping the checks with Nix)")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
