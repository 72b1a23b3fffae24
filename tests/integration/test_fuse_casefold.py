# mypy: disable-error-code="unreachable"
"""The case-insensitive layer (`xstore mount casefold`), mounted for real: POSIX behaviour through case
variants, the two fold models, and concurrent writers.

Each model gets one mount for the module (`xstore mount casefold BACKING MOUNTPOINT --model M`, served by
a background process and always unmounted); each test works in a fresh directory of it and checks both
what the mount shows and what the backing directory holds. The daemon logs to a file, and a test fails if
the log shows an error: a handler that meets a bug answers EIO and logs it rather than crashing, so
without this check a bug could pass as an expected errno. Names that collide are made at run time: the
repository holds none (STYLE.md).

The last tests call the handlers directly, without a mount, as the kernel would, to check what a mount
cannot show deterministically: which inode the kernel gets back after renames and removals, and that
forgetting every inode releases every descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fusehelpers import mounted, require_fuse
from xstore.casehack import Fold, fold_key

if sys.platform != "linux":
    # FUSE tests run on Linux (pyfuse3 is installed there only); the mypy comment at the top lets
    # this guard hide the Linux-only calls below when type-checking for another platform.
    pytest.skip("FUSE tests run on Linux only", allow_module_level=True)

pytestmark = pytest.mark.fuse

NFC_E = "\u00e9"  # é, composed
NFD_E = "e\u0301"  # é, decomposed


@dataclass(frozen=True)
class Layer:
    """A casefold mount: where it is mounted, the directory it shows, its model, and its log."""

    mount: Path
    backing: Path
    model: Fold
    log: Path


@dataclass(frozen=True)
class Place:
    """A fresh directory for one test: as the mount shows it, and in the backing tree."""

    mount: Path
    backing: Path
    model: Fold


def daemon_errors(log: Path) -> list[str]:
    """The lines of the daemon's log at level ERROR or above (bugs in handlers, failed replies)."""
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]


def mount_layer(base: Path, model: Fold) -> Iterator[Layer]:
    require_fuse()
    backing, mountpoint, log = base / "backing", base / "mnt", base / "fuse.log"
    backing.mkdir()
    mountpoint.mkdir()
    env = {**os.environ, "XSTORE_FUSE_LOG": str(log)}
    with mounted(["casefold", backing, mountpoint, "--model", model.value], mountpoint, env=env):
        yield Layer(mountpoint, backing, model, log)
    assert daemon_errors(log) == []


@pytest.fixture(scope="module")
def apfs_layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layer]:
    yield from mount_layer(tmp_path_factory.mktemp("casefold-apfs"), Fold.APFS)


@pytest.fixture(scope="module")
def ascii_layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layer]:
    yield from mount_layer(tmp_path_factory.mktemp("casefold-ascii"), Fold.ASCII)


def fresh_place(layer: Layer, request: pytest.FixtureRequest) -> Iterator[Place]:
    name = request.node.name.replace("/", "_").replace("[", "-").rstrip("]")
    (layer.mount / name).mkdir()
    yield Place(layer.mount / name, layer.backing / name, layer.model)
    assert daemon_errors(layer.log) == []


@pytest.fixture
def apfs(apfs_layer: Layer, request: pytest.FixtureRequest) -> Iterator[Place]:
    """A fresh directory on the apfs-model mount."""
    yield from fresh_place(apfs_layer, request)


@pytest.fixture
def ascii_(ascii_layer: Layer, request: pytest.FixtureRequest) -> Iterator[Place]:
    """A fresh directory on the ascii-model mount."""
    yield from fresh_place(ascii_layer, request)


@pytest.fixture(params=[Fold.APFS, Fold.ASCII], ids=["apfs", "ascii"])
def either(request: pytest.FixtureRequest) -> Iterator[Place]:
    """A fresh directory on each model's mount in turn."""
    layer = request.getfixturevalue("apfs_layer" if request.param is Fold.APFS else "ascii_layer")
    yield from fresh_place(layer, request)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def errno_of(call: object, *args: object, **kwargs: object) -> int:
    """The errno `call(*args, **kwargs)` fails with (the test fails if it succeeds)."""
    assert callable(call)
    try:
        call(*args, **kwargs)
    except OSError as e:
        return e.errno or 0
    pytest.fail(f"{getattr(call, '__name__', call)}{args} succeeded")


def create_exclusive(path: Path | bytes) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))


# -- one name, many spellings ---------------------------------------------------------------------------


def test_other_case_opens_the_same_file(either: Place) -> None:
    m = either.mount
    (m / "ReadMe.txt").write_bytes(b"one")
    assert (m / "README.TXT").read_bytes() == b"one"
    (m / "readme.txt").write_bytes(b"two")  # O_CREAT|O_TRUNC on a variant opens the existing file
    with open(m / "rEADME.tXT", "ab") as f:
        f.write(b"+")
    assert (m / "ReadMe.txt").read_bytes() == b"two+"
    assert stat.S_ISREG(os.stat(m / "README.txt").st_mode)
    assert listing(m) == listing(either.backing) == ["ReadMe.txt"]
    assert (either.backing / "ReadMe.txt").read_bytes() == b"two+"


def test_exclusive_create_of_a_variant_fails(either: Place) -> None:
    m = either.mount
    create_exclusive(m / "Makefile")
    (m / "Src").mkdir()
    for name in ("makefile", "MAKEFILE", "src", "SRC"):
        assert errno_of(create_exclusive, m / name) == errno.EEXIST
        with pytest.raises(FileExistsError):
            open(m / name, "xb").close()
    assert listing(m) == listing(either.backing) == ["Makefile", "Src"]


def test_creating_any_kind_of_variant_fails(either: Place) -> None:
    m = either.mount
    (m / "Name").write_bytes(b"x")
    (m / "Dir").mkdir()
    os.mkfifo(m / "Pipe")
    assert stat.S_ISFIFO(os.stat(m / "PIPE").st_mode)
    for existing in ("NAME", "dir", "pipe"):
        assert errno_of(os.mkdir, m / existing) == errno.EEXIST
        assert errno_of(os.symlink, "target", m / existing) == errno.EEXIST
        assert errno_of(os.link, m / "Name", m / existing) == errno.EEXIST
        assert errno_of(os.mkfifo, m / existing) == errno.EEXIST
    assert listing(m) == listing(either.backing) == ["Dir", "Name", "Pipe"]


def test_listing_keeps_the_first_spelling(either: Place) -> None:
    m = either.mount
    (m / "MixedCase").write_bytes(b"first")
    (m / "mixedcase").write_bytes(b"second")
    os.utime(m / "MIXEDCASE", ns=(10**9, 2 * 10**9))
    os.chmod(m / "mIXEDcASE", 0o600)
    (m / "Sub").mkdir()
    (m / "SUB" / "File").write_bytes(b"f")
    (m / "sub" / "FILE").write_bytes(b"g")
    assert listing(m) == listing(either.backing) == ["MixedCase", "Sub"]
    assert listing(m / "sUB") == listing(either.backing / "Sub") == ["File"]
    assert (either.backing / "Sub" / "File").read_bytes() == b"g"


# -- renaming --------------------------------------------------------------------------------------------


def test_case_only_rename(either: Place) -> None:
    m, b = either.mount, either.backing
    (m / "foo").write_bytes(b"contents")
    os.rename(m / "foo", m / "FOO")
    assert listing(m) == listing(b) == ["FOO"]
    os.rename(m / "foo", m / "Foo")  # the source named by yet another spelling
    assert listing(m) == listing(b) == ["Foo"]
    os.rename(m / "FOO", m / "Foo")  # onto the stored spelling: nothing to do
    assert listing(m) == listing(b) == ["Foo"]
    assert (m / "fOO").read_bytes() == (b / "Foo").read_bytes() == b"contents"

    (m / "dir").mkdir()
    (m / "dir" / "x").write_bytes(b"x")
    os.rename(m / "dir", m / "DIR")
    assert listing(m) == listing(b) == ["DIR", "Foo"]
    assert (m / "DIR" / "x").read_bytes() == (m / "dir" / "X").read_bytes() == b"x"
    os.rename(m / "dIr", m / "Dir")
    assert listing(m) == listing(b) == ["Dir", "Foo"]
    (m / "DIR" / "y").write_bytes(b"y")
    assert listing(b / "Dir") == ["x", "y"]


def test_case_only_rename_with_mv(apfs: Place) -> None:
    m = apfs.mount
    (m / "Report.TXT").write_bytes(b"r")
    subprocess.run(["mv", m / "Report.TXT", m / "report.txt"], check=True, capture_output=True)
    assert listing(m) == listing(apfs.backing) == ["report.txt"]


def test_rename_onto_a_variant_replaces_it(either: Place) -> None:
    m, b = either.mount, either.backing
    (m / "target").write_bytes(b"old")
    (m / "source").write_bytes(b"new")
    os.rename(m / "source", m / "TARGET")
    # As on macOS, the entry that remains has the name the rename gave.
    assert listing(m) == listing(b) == ["TARGET"]
    assert (m / "target").read_bytes() == b"new"

    (m / "d1").mkdir()
    (m / "D2").mkdir()
    (m / "D2" / "f").write_bytes(b"f")
    os.rename(m / "d2", m / "D1")
    assert listing(m) == listing(b) == ["D1", "TARGET"]
    assert listing(m / "d1") == ["f"]

    (m / "full").mkdir()
    (m / "full" / "g").write_bytes(b"g")
    (m / "Other").mkdir()
    assert errno_of(os.rename, m / "other", m / "FULL") == errno.ENOTEMPTY
    assert errno_of(os.rename, m / "target", m / "Full") == errno.EISDIR
    assert errno_of(os.rename, m / "other", m / "Target") == errno.ENOTDIR
    assert listing(m) == listing(b) == ["D1", "Other", "TARGET", "full"]

    (m / "x").mkdir()
    (m / "x" / "Moved").write_bytes(b"m")
    (m / "Other" / "MOVED").write_bytes(b"replaced")
    os.rename(m / "X" / "moved", m / "other" / "moved")
    assert listing(b / "x") == []
    assert listing(b / "Other") == ["moved"]
    assert (b / "Other" / "moved").read_bytes() == b"m"


def test_rename_between_hard_links_does_nothing(either: Place) -> None:
    m = either.mount
    (m / "one").write_bytes(b"1")
    os.link(m / "one", m / "two")
    os.rename(m / "ONE", m / "TWO")  # the same file under both names: POSIX says do nothing
    assert listing(m) == listing(either.backing) == ["one", "two"]


# -- links, removal, attributes -------------------------------------------------------------------------


def test_hard_link(either: Place) -> None:
    m, b = either.mount, either.backing
    (m / "Data").write_bytes(b"d")
    os.link(m / "DATA", m / "Copy")
    assert os.stat(m / "copy").st_nlink == 2
    # Names as stored share one inode number, as hard links do.
    assert os.stat(m / "Data").st_ino == os.stat(m / "Copy").st_ino
    (m / "COPY").write_bytes(b"changed")
    assert (m / "data").read_bytes() == b"changed"
    assert os.stat(b / "Data").st_ino == os.stat(b / "Copy").st_ino
    assert listing(m) == listing(b) == ["Copy", "Data"]


def test_symlink_and_readlink(either: Place) -> None:
    m, b = either.mount, either.backing
    os.symlink("Real/File", m / "Link")
    assert os.readlink(m / "LINK") == os.readlink(b / "Link") == "Real/File"
    assert stat.S_ISLNK(os.lstat(m / "link").st_mode)
    (m / "Real").mkdir()
    (m / "real" / "file").write_bytes(b"through")
    assert (m / "link").read_bytes() == b"through"  # the target resolves case-insensitively too
    assert (m / "Link").read_bytes() == b"through"
    os.utime(m / "lINK", ns=(3 * 10**9, 4 * 10**9), follow_symlinks=False)
    assert os.lstat(b / "Link").st_mtime_ns == 4 * 10**9
    os.chown(m / "LiNk", os.getuid(), os.getgid(), follow_symlinks=False)
    assert listing(m) == listing(b) == ["Link", "Real"]


def test_unlink_and_rmdir_by_another_case(either: Place) -> None:
    m, b = either.mount, either.backing
    (m / "Gone").write_bytes(b"g")
    (m / "Empty").mkdir()
    (m / "Full").mkdir()
    (m / "Full" / "x").write_bytes(b"x")
    os.unlink(m / "GONE")
    os.rmdir(m / "eMPTY")
    assert errno_of(os.rmdir, m / "full") == errno.ENOTEMPTY
    assert errno_of(os.unlink, m / "gone") == errno.ENOENT
    assert errno_of(os.unlink, m / "FULL") == errno.EISDIR
    os.unlink(m / "fULL" / "X")
    os.rmdir(m / "FULL")
    assert listing(m) == listing(b) == []


def test_chmod_utime_truncate_through_variants(either: Place) -> None:
    m, b = either.mount, either.backing
    (m / "Attr").write_bytes(b"0123456789")
    os.chmod(m / "ATTR", 0o640)
    os.truncate(m / "aTTR", 3)
    os.utime(m / "attr", ns=(5 * 10**9, 6 * 10**9))
    for st in (os.stat(m / "AtTr"), os.stat(b / "Attr")):
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_mtime_ns == 6 * 10**9
        assert st.st_size == 3
    fd = os.open(m / "ATTR", os.O_RDWR)
    try:
        os.ftruncate(fd, 7)
        os.fchmod(fd, 0o604)
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.stat(b / "Attr")
    assert (st.st_size, stat.S_IMODE(st.st_mode)) == (7, 0o604)
    (m / "Dir").mkdir()
    os.chmod(m / "DIR", 0o700)
    assert stat.S_IMODE(os.stat(b / "Dir").st_mode) == 0o700


def test_xattrs_through_variants(either: Place) -> None:
    m, b = either.mount, either.backing
    (m / "Xa").write_bytes(b"x")
    (m / "Xd").mkdir()
    for name in ("Xa", "Xd"):
        os.setxattr(m / name.upper(), "user.note", b"value")
        assert os.getxattr(m / name.lower(), "user.note") == b"value"
        assert "user.note" in os.listxattr(m / name.swapcase())
        assert os.getxattr(b / name, "user.note") == b"value"
        os.removexattr(m / name, "user.note")
        assert errno_of(os.getxattr, m / name.upper(), "user.note") == errno.ENODATA
        assert "user.note" not in os.listxattr(b / name)
    os.symlink("Xa", m / "Sym")
    os.setxattr(m / "SYM", "trusted.note", b"s", follow_symlinks=False)
    assert os.getxattr(b / "Sym", "trusted.note", follow_symlinks=False) == b"s"
    assert os.getxattr(m / "sym", "trusted.note", follow_symlinks=False) == b"s"


def test_open_file_outlives_its_name(either: Place) -> None:
    m = either.mount
    fd = os.open(m / "Temp", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.unlink(m / "TEMP")
        os.write(fd, b"still here")
        st = os.fstat(fd)
        assert (st.st_size, st.st_nlink) == (10, 0)
        assert os.pread(fd, 100, 0) == b"still here"
    finally:
        os.close(fd)
    assert listing(m) == listing(either.backing) == []


def test_large_file_and_fsync(apfs: Place) -> None:
    m = apfs.mount
    data = os.urandom(3 << 20)
    with open(m / "Big.bin", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    assert (m / "BIG.BIN").read_bytes() == data
    assert (apfs.backing / "Big.bin").read_bytes() == data
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.statvfs(m).f_bsize > 0


def test_large_directory(apfs: Place) -> None:
    m = apfs.mount
    names = [f"Entry-{i:04d}-{'ABCdef'[i % 6]}" for i in range(600)]
    for name in names:
        create_exclusive(m / name)
    assert listing(m) == listing(apfs.backing) == sorted(names)
    for name in names[::37]:
        assert stat.S_ISREG(os.stat(m / name.swapcase()).st_mode)
        assert errno_of(create_exclusive, m / name.upper()) == errno.EEXIST


# -- the two models ----------------------------------------------------------------------------------------


def test_apfs_unicode_case_and_normalisation(apfs: Place) -> None:
    m, b = apfs.mount, apfs.backing
    (m / f"caf{NFC_E}").write_bytes(b"nfc")
    assert (m / f"caf{NFD_E}").read_bytes() == b"nfc"
    assert (m / f"CAF{NFD_E.upper()}").read_bytes() == b"nfc"
    assert errno_of(create_exclusive, m / f"CAF{NFC_E.upper()}") == errno.EEXIST
    (m / f"r{NFD_E}sum{NFD_E}").mkdir()
    assert stat.S_ISDIR(os.stat(m / f"R{NFC_E.upper()}SUM{NFC_E.upper()}").st_mode)
    (m / "\u03a9mega").write_bytes(b"omega")  # Ωmega
    assert (m / "\u03c9MEGA").read_bytes() == b"omega"
    # Stored as first spelled: NFC stays NFC, NFD stays NFD.
    expected = sorted([f"caf{NFC_E}", f"r{NFD_E}sum{NFD_E}", "\u03a9mega"])
    assert listing(m) == listing(b) == expected


def test_ascii_folds_ascii_only(ascii_: Place) -> None:
    m, b = ascii_.mount, ascii_.backing
    for name in (f"caf{NFC_E}", f"caf{NFD_E}", "\u00c0", "\u00e0", "\u03a9mega", "\u03c9mega"):
        create_exclusive(m / name)
    assert errno_of(create_exclusive, m / f"CAF{NFC_E}") == errno.EEXIST
    assert errno_of(create_exclusive, m / "\u03a9MEGA") == errno.EEXIST
    assert len(listing(m)) == len(listing(b)) == 6


def test_apfs_refuses_names_that_are_not_utf8(apfs: Place) -> None:
    m, b = os.fsencode(apfs.mount), os.fsencode(apfs.backing)
    bad = m + b"/caf\xe9"  # Latin-1, not UTF-8
    assert errno_of(create_exclusive, bad) == errno.EILSEQ
    assert errno_of(os.mkdir, bad) == errno.EILSEQ
    assert errno_of(os.symlink, b"x", bad) == errno.EILSEQ
    assert errno_of(os.stat, bad) == errno.EILSEQ
    create_exclusive(m + b"/good")
    assert errno_of(os.rename, m + b"/good", bad) == errno.EILSEQ
    assert errno_of(os.link, m + b"/good", bad) == errno.EILSEQ
    assert os.listdir(b) == [b"good"]
    # A name the backing directory already held stays reachable by its exact spelling (APFS could not
    # hold it at all); only new names are refused.
    with open(b + b"/old\xff", "wb") as f:
        f.write(b"legacy")
    with open(m + b"/old\xff", "rb") as f:
        assert f.read() == b"legacy"
    assert sorted(os.listdir(m)) == [b"good", b"old\xff"]


def test_ascii_accepts_names_that_are_not_utf8(ascii_: Place) -> None:
    m = os.fsencode(ascii_.mount)
    create_exclusive(m + b"/caf\xe9")
    create_exclusive(m + b"/CAF\xc9")  # Latin-1 É: not an ASCII letter, so a different name
    assert errno_of(create_exclusive, m + b"/Caf\xe9") == errno.EEXIST
    assert (
        sorted(os.listdir(m)) == sorted(os.listdir(os.fsencode(ascii_.backing))) == [b"CAF\xc9", b"caf\xe9"]
    )


# Names that trip up folds: special casings, compatibility characters, canonical equivalents. Which of them
# collide is whatever `fold_key` says; the test checks that the mount agrees with it exactly.
TRICKY_NAMES = [
    "a", "A", "\u00df", "ss", "SS", "\u1e9e",  # ß, ẞ
    "\u01c4", "\u01c5", "\u01c6",  # Ǆ ǅ ǆ
    "\u03a3", "\u03c3", "\u03c2",  # sigma: capital, small, final
    "\ufb01", "fi", "FI",  # ﬁ ligature
    "k", "K", "\u212a",  # Kelvin sign
    "\u00c5", "\u212b", "\u00e5", "A\u030a", "a\u030a",  # Å, Angstrom sign, å, decomposed
    "i", "I", "\u0131", "\u0130", "i\u0307",  # dotless i, dotted capital I
    "\u03c9", "\u03a9", "\u2126",  # ω Ω, Ohm sign
    NFC_E, NFD_E, NFC_E.upper(), "E\u0301",
    "\ud55c", "\u1112\u1161\u11ab",  # Hangul syllable, and as jamo
    "\u216b", "\u217b",  # Roman numeral twelve, upper and lower
    "\uff26\uff2f\uff2f", "\uff46\uff4f\uff4f", "foo",  # fullwidth
    "\u01f0", "J\u030c", "j\u030c",  # ǰ
]  # fmt: skip
NOT_UTF8_NAMES = [b"\xff", b"\xfe", b"x\xe9", b"X\xe9", b"x\xc9"]


@pytest.mark.parametrize("model", [Fold.APFS, Fold.ASCII], ids=["apfs", "ascii"])
def test_fold_key_predicts_collisions_exactly(model: Fold, request: pytest.FixtureRequest) -> None:
    layer: Layer = request.getfixturevalue("apfs_layer" if model is Fold.APFS else "ascii_layer")
    top = layer.mount / f"tricky-{model.value}"
    top.mkdir()
    names = [name.encode() for name in TRICKY_NAMES]
    if model is Fold.ASCII:
        names += NOT_UTF8_NAMES
    keys = [fold_key(name, model) for name in names]
    collisions = 0
    for i, first in enumerate(names):
        where = os.fsencode(top / str(i))
        os.mkdir(where)
        create_exclusive(where + b"/" + first)
        for other, key in zip(names, keys, strict=True):
            same = key == keys[i]
            assert os.path.lexists(where + b"/" + other) == same, (first, other)
            collisions += same and other != first
    assert collisions > 0
    assert len(set(keys)) > 1
    assert daemon_errors(layer.log) == []


# -- concurrency ------------------------------------------------------------------------------------------

# A worker: random operations on case variants of a few names, in its own process. Files under any
# spelling of NAME always hold NAME's record, so whatever the interleaving, every surviving file must hold
# the record of the name it is stored under. Errors that the races make expected are counted, any other
# ends the worker with a traceback.
WORKER = textwrap.dedent(
    """
    import errno, os, random, sys, unicodedata
    top, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    BASES = ["alpha", "Beta", "caf\\u00e9", "\\u03a9mega"]
    EXPECTED = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR}

    def variant(base):
        text = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in base)
        return unicodedata.normalize(rng.choice(["NFC", "NFD"]), text)

    def record(base):
        return ("record of " + base + "\\n").encode()

    def write(path, base, flags):
        fd = os.open(path, flags | os.O_WRONLY, 0o644)
        try:
            data = record(base)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)

    done = {"ok": 0, "expected": 0}
    for _ in range(count):
        base = rng.choice(BASES)
        op = rng.choice(
            ["create", "rewrite", "rename", "unlink", "mkdir", "rmdir", "renamedir", "nested", "list"]
        )
        try:
            if op == "create":
                write(os.path.join(top, variant(base)), base, os.O_CREAT | os.O_EXCL)
            elif op == "rewrite":
                write(os.path.join(top, variant(base)), base, os.O_CREAT)
            elif op == "rename":
                os.rename(os.path.join(top, variant(base)), os.path.join(top, variant(base)))
            elif op == "unlink":
                os.unlink(os.path.join(top, variant(base)))
            elif op == "mkdir":
                os.mkdir(os.path.join(top, "dir-" + variant(base)))
            elif op == "rmdir":
                d = os.path.join(top, "dir-" + variant(base))
                for name in os.listdir(d):
                    os.unlink(os.path.join(d, name))
                os.rmdir(d)
            elif op == "renamedir":
                d = os.path.join(top, "dir-" + variant(base))
                os.rename(d, os.path.join(top, "dir-" + variant(base)))
            elif op == "nested":
                d = os.path.join(top, "dir-" + variant(base))
                write(os.path.join(d, variant(base)), base, os.O_CREAT)
            else:
                for name in os.listdir(top):
                    os.lstat(os.path.join(top, name.swapcase()))
            done["ok"] += 1
        except OSError as e:
            if e.errno not in EXPECTED:
                raise
            done["expected"] += 1
    print(done["ok"], done["expected"])
    """
)


def check_tree(mount: Path, backing: Path, model: Fold, bases: list[str]) -> int:
    """Check one directory of the stress test and its subdirectories; returns the files seen."""
    records = {fold_key(base.encode(), model): f"record of {base}\n".encode() for base in bases}
    names = sorted(os.listdir(os.fsencode(backing)))
    keys = [fold_key(name, model) for name in names]
    assert len(set(keys)) == len(keys), f"colliding names in {backing}: {names}"
    assert sorted(os.listdir(os.fsencode(mount))) == names
    files = 0
    for name, key in zip(names, keys, strict=True):
        st = os.lstat(os.fsencode(backing) + b"/" + name)
        if stat.S_ISDIR(st.st_mode):
            assert name.startswith(b"dir-")
            files += check_tree(mount / os.fsdecode(name), backing / os.fsdecode(name), model, bases)
            continue
        assert stat.S_ISREG(st.st_mode), name
        with open(os.fsencode(backing) + b"/" + name, "rb") as f:
            assert f.read() == records[key], name
        assert os.lstat(os.fsencode(mount) + b"/" + name.swapcase()).st_size == st.st_size
        files += 1
    return files


def test_concurrent_case_variants(apfs: Place) -> None:
    """Four processes create, rewrite, rename and delete case and normalisation variants of the same few
    names at once; afterwards the backing directory has one spelling per name, every file holds what its
    name says, and the mount shows exactly the backing directory."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(apfs.mount), str(seed), "400"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in range(4)
    ]
    outputs = []
    for proc in workers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode("utf-8", "replace")
        outputs.append(out.decode().split())
    assert all(int(ok) > 50 for ok, _ in outputs), outputs
    bases = ["alpha", "Beta", "caf\u00e9", "\u03a9mega"]
    check_tree(apfs.mount, apfs.backing, Fold.APFS, bases)


# -- the inode tables, driven directly (no mount) ---------------------------------------------------------

ROOT = 1  # pyfuse3.ROOT_INODE


@dataclass(frozen=True)
class Caller:
    """Stands in for `pyfuse3.RequestContext`: the handlers read only these."""

    uid: int = os.getuid()
    gid: int = os.getgid()
    pid: int = os.getpid()
    umask: int = 0o022


class Kernel:
    """Calls the handlers of a `CasefoldOperations` and keeps the kernel's lookup counts."""

    def __init__(self, backing: Path, model: Fold = Fold.APFS) -> None:
        require_fuse()
        from xstore.fuse.casefold import CasefoldOperations  # type: ignore[attr-defined, unused-ignore]  # Linux only

        self.ops = CasefoldOperations(os.fsencode(backing), model)
        self.ctx: Any = Caller()
        self.lookups: dict[int, int] = {}

    def _counted(self, inode: int) -> int:
        self.lookups[inode] = self.lookups.get(inode, 0) + 1
        return inode

    async def lookup(self, parent: int, name: bytes) -> int:
        return self._counted((await self.ops.lookup(parent, name, self.ctx)).st_ino)

    async def mkdir(self, parent: int, name: bytes) -> int:
        return self._counted((await self.ops.mkdir(parent, name, 0o755, self.ctx)).st_ino)

    async def create(self, parent: int, name: bytes) -> int:
        info, entry = await self.ops.create(parent, name, 0o644, os.O_WRONLY | os.O_CREAT, self.ctx)
        await self.ops.release(info.fh)
        return self._counted(entry.st_ino)

    async def forget_all(self) -> None:
        await self.ops.forget(list(self.lookups.items()))
        self.lookups.clear()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_forgetting_every_inode_releases_every_descriptor(tmp_path: Path) -> None:
    before = open_descriptors()
    kernel = Kernel(tmp_path)
    ops, ctx = kernel.ops, kernel.ctx
    top = await kernel.mkdir(ROOT, b"Top")
    for i in range(20):
        sub = await kernel.mkdir(top, b"Sub%d" % i)
        await kernel.create(sub, b"File")
        await kernel.lookup(sub, b"FILE")
        await kernel.lookup(top, b"SUB%d" % i)
    await ops.rename(top, b"sub0", top, b"SUB0", 0, ctx)
    await ops.unlink(await kernel.lookup(top, b"sub1"), b"file", ctx)
    assert open_descriptors() > before + 20  # the directories are held open
    await kernel.forget_all()
    assert open_descriptors() == before + 1  # the backing directory itself
    assert sorted(os.listdir(tmp_path / "Top")) == sorted(["SUB0", *(f"Sub{i}" for i in range(1, 20))])
    ops.close()
    assert open_descriptors() == before


async def test_case_only_rename_moves_the_kernels_node(tmp_path: Path) -> None:
    """The kernel moves the source's inode to the new name and writes the target's off: a lookup of
    the new spelling must give the source's inode, and the old alias must never come back."""
    kernel = Kernel(tmp_path)
    ops, ctx = kernel.ops, kernel.ctx
    for name, make in ((b"f", kernel.create), (b"d", kernel.mkdir)):
        stored = await make(ROOT, name)
        alias = await kernel.lookup(ROOT, name.upper())
        assert alias != stored
        await ops.rename(ROOT, name, ROOT, name.upper(), 0, ctx)
        assert await kernel.lookup(ROOT, name.upper()) == stored
        assert await kernel.lookup(ROOT, name) not in (stored, alias)
        # Through an alias onto the stored spelling: nothing changes on disk, the named node moves.
        moved = await kernel.lookup(ROOT, name)
        await ops.rename(ROOT, name, ROOT, name.upper(), 0, ctx)
        assert await kernel.lookup(ROOT, name.upper()) == moved
    assert sorted(os.listdir(tmp_path)) == ["D", "F"]
    await kernel.forget_all()
    kernel.ops.close()


async def test_a_removed_file_never_lends_its_inode(tmp_path: Path) -> None:
    """A file removed while the kernel still holds its inode: files made after it (the backing
    filesystem may well give them its inode number) get inodes of their own."""
    kernel = Kernel(tmp_path)
    ops, ctx = kernel.ops, kernel.ctx
    old = await kernel.create(ROOT, b"old")
    await ops.unlink(ROOT, b"OLD", ctx)
    news = [await kernel.create(ROOT, b"new%d" % i) for i in range(5)]
    assert old not in news
    old_dir = await kernel.mkdir(ROOT, b"olddir")
    await ops.rmdir(ROOT, b"OLDDIR", ctx)
    assert old_dir not in [await kernel.mkdir(ROOT, b"newdir%d" % i) for i in range(5)]
    await kernel.forget_all()
    kernel.ops.close()


async def test_a_name_swapped_for_a_symlink_never_redirects_an_operation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone writing the backing directory directly swaps a file for a symlink to a file outside,
    right after the layer has checked the name (the race is made deterministic by swapping inside
    the check): chmod, truncate and xattr calls must not reach the outside file."""
    backing, outside = tmp_path / "backing", tmp_path / "outside"
    backing.mkdir()
    outside.write_bytes(b"precious")
    outside.chmod(0o600)
    kernel = Kernel(backing)
    import pyfuse3

    ops, ctx = kernel.ops, kernel.ctx
    locate = ops._locate
    victim: list[str] = []

    def locate_then_swap(obj: Any) -> Any:
        found = locate(obj)
        if victim:
            (backing / victim[0]).unlink()
            (backing / victim[0]).symlink_to(outside)
            victim.clear()
        return found

    monkeypatch.setattr(ops, "_locate", locate_then_swap)
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o777
    attr.st_size = 0
    for n, field in enumerate(("update_mode", "update_size", "xattr")):
        name = f"file{n}"
        inode = await kernel.create(ROOT, name.encode())
        victim.append(name)
        # SetattrFields cannot be built in Python: a stand-in with the attributes the handler reads.
        flags = dict.fromkeys(
            ("update_mode", "update_size", "update_uid", "update_gid", "update_atime", "update_mtime"), False
        )
        flags[field] = True
        which: Any = types.SimpleNamespace(**flags)
        call = (
            ops.setxattr(inode, b"user.x", b"1", ctx)
            if field == "xattr"
            else ops.setattr(inode, attr, which, None, ctx)
        )
        with pytest.raises(pyfuse3.FUSEError):
            await call
        assert not victim  # the swap happened
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert outside.read_bytes() == b"precious"
    assert os.listxattr(outside) == []
    await kernel.forget_all()
    ops.close()


async def test_a_small_file_goes_into_the_page_cache_only_while_none_of_its_files_is_open(
    tmp_path: Path,
) -> None:
    """Opened for reading, a small file's contents are put into the page cache of the node it was
    opened through: only when no file of that node is open (else a read of it may be in progress,
    holding the pages `store` must lock), and again only once the file changed."""
    from xstore.fuse.casefold_cache import KernelCache

    stored: list[tuple[int, bytes]] = []

    class Recorder:
        mounted = True
        epoch = True

        def invalidate_attributes(self, inode: int) -> None:
            pass

        def increment_epoch(self) -> None:
            pass

        def store(self, inode: int, data: bytes) -> bool:
            stored.append((inode, data))
            return True

    kernel = Kernel(tmp_path)
    ops, ctx = kernel.ops, kernel.ctx
    ops._cache = KernelCache(ops._table, Fold.APFS, Recorder(), 10.0)
    node = await kernel.create(ROOT, b"f")
    (tmp_path / "f").write_bytes(b"one")
    first = await ops.open(node, os.O_RDONLY, ctx)
    assert stored == [(node, b"one")]
    second = await ops.open(node, os.O_RDONLY, ctx)  # `first` is open: no store
    writer = await ops.open(node, os.O_WRONLY, ctx)
    await ops.write(writer.fh, 0, b"two!")
    await ops.release(writer.fh)
    await ops.release(first.fh)
    third = await ops.open(node, os.O_RDONLY, ctx)  # `second` is still open
    assert stored == [(node, b"one")]
    await ops.release(second.fh)
    await ops.release(third.fh)
    await ops.release((await ops.open(node, os.O_RDONLY, ctx)).fh)  # none open, changed: store
    assert stored == [(node, b"one"), (node, b"two!")]
    await ops.release((await ops.open(node, os.O_RDONLY, ctx)).fh)  # unchanged: nothing to do
    assert len(stored) == 2
    await kernel.forget_all()
    ops.close()
