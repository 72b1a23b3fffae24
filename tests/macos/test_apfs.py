"""xstore on the filesystems macOS users have, checked against what the filesystem really does.

`macos-ci/run-tests.sh` runs these tests twice, with the temporary directory on a case-insensitive APFS
disk image (the macOS default) and on a case-sensitive one; run by hand, they use whatever volume holds
`--basetemp`/`TMPDIR`. Every expectation is measured on that volume first (create a name, look up its
variant), never assumed from the volume's name or the operating system:

- `probe()` reports what the volume does;
- `--case-hack auto` restores Nix's `case.nar` and `unnormalized.nar` there, choosing the hack where the
  volume needs it and not elsewhere, and the trees dump back byte for byte; the same through a store
  (`import`, `export`);
- the `apfs` fold predicts exactly which of a list of tricky names APFS takes for one name. Where it does
  not, the test fails and lists the pairs: that is how the fold learns APFS's real behaviour, so the
  list and the comparison must not be weakened to make it pass.

`XSTORE_MACOS_VOLUME` (`case-insensitive` or `case-sensitive`, set by run-tests.sh) states which image
the run is meant to be on; a test checks that it is, so a mix-up cannot pass unnoticed.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import CASE_NAR_HACKED
from xstore.casehack import Fold, fold_key, probe
from xstore.exportstream import trailer
from xstore.storepath import parse_store_path
from xstore.wire import encode_u64

pytestmark = pytest.mark.skipif(
    sys.platform != "darwin", reason="macOS only: checks xstore against APFS (run by macos-ci/run-tests.sh)"
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "nix-fixtures"
VOLUME_ENV = "XSTORE_MACOS_VOLUME"

# unnormalized.nar: a symlink to "/" named "a" + COMBINING CIRCUMFLEX (NFD), then a directory named
# LATIN SMALL LETTER A WITH CIRCUMFLEX (NFC).
A_CIRC_NFD = b"a\xcc\x82"
A_CIRC_NFC = b"\xc3\xa2"
SUFFIX = b"~nix~case~hack~"


# -- measuring the volume ---------------------------------------------------------------------------------


def same_name(directory: Path, first: bytes, second: bytes) -> bool:
    """Whether the filesystem takes `second` for `first`: create `first` in a fresh directory, look up
    `second`. Measured, not derived from xstore's code."""
    scratch = directory / f".same-{os.urandom(6).hex()}"
    scratch.mkdir()
    fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd))
        try:
            os.stat(second, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True
    finally:
        for name in os.listdir(fd):
            os.unlink(name, dir_fd=fd)
        os.close(fd)
        scratch.rmdir()


@dataclass(frozen=True)
class Volume:
    """What the volume holding a directory does, measured with names other than the probe's own."""

    case_insensitive: bool  # ASCII case
    unicode_case_insensitive: bool  # case beyond ASCII
    normalization_insensitive: bool  # NFC and NFD spellings of one text


def measure(directory: Path) -> Volume:
    return Volume(
        case_insensitive=same_name(directory, b"Makefile", b"MAKEFILE"),
        unicode_case_insensitive=same_name(directory, "\u00d6l".encode(), "\u00f6l".encode()),  # Öl, öl
        normalization_insensitive=same_name(directory, "\u00fc".encode(), "u\u0308".encode()),  # ü NFC, NFD
    )


@pytest.fixture
def volume(tmp_path: Path) -> Volume:
    return measure(tmp_path)


def test_the_volume_is_the_one_intended(volume: Volume, tmp_path: Path) -> None:
    intended = os.environ.get(VOLUME_ENV)
    if intended is None:
        pytest.skip(f"{VOLUME_ENV} is not set: not run by macos-ci/run-tests.sh, no volume is intended")
    assert intended in ("case-insensitive", "case-sensitive"), f"{VOLUME_ENV}={intended!r}"
    assert volume.case_insensitive == (intended == "case-insensitive"), (
        f"{tmp_path} should be on a {intended} volume, but measured {volume}"
    )


def test_probe_matches_reality(volume: Volume, tmp_path: Path) -> None:
    (tmp_path / "existing").write_bytes(b"")
    behaviour = probe(tmp_path)
    assert behaviour.method == "write"
    assert sorted(os.listdir(tmp_path)) == ["existing"], "the probe left something behind"
    assert behaviour.case_insensitive == volume.case_insensitive
    assert behaviour.unicode_case_insensitive == volume.unicode_case_insensitive
    assert behaviour.normalization_insensitive == volume.normalization_insensitive
    # And the simplest check of all, as the issue puts it: create A, look for a.
    (tmp_path / "A").write_bytes(b"")
    assert behaviour.case_insensitive == (tmp_path / "a").exists()


# -- restoring Nix's fixtures with --case-hack auto ---------------------------------------------------


def xstore(*args: str | os.PathLike[str]) -> bytes:
    """Run the xstore command; return stdout, failing the test with stderr on a non-zero status."""
    argv = [sys.executable, "-m", "xstore", *(os.fspath(a) for a in args)]
    proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=300, check=False)
    assert proc.returncode == 0, (
        f"`xstore {' '.join(os.fspath(a) for a in args)}` exited with {proc.returncode}:\n"
        + proc.stderr.decode("utf-8", "replace")
    )
    return proc.stdout


def tree_names(root: Path) -> list[bytes]:
    """Every path below `root`, relative, as bytes, sorted."""
    base = os.fsencode(root)
    out: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        prefix = b"" if rel == b"." else rel + b"/"
        out.extend(prefix + name for name in (*dirnames, *filenames))
    return sorted(out)


# case.nar restored with the case hack (tests/data/nix-fixtures/README.md), and without it.
CASE_NAR_PLAIN = sorted(
    [
        b"x",
        b"x/FOO",
        b"x/Foo",
        b"x/foo",
        b"x/foo/A",
        b"x/foo/A/foo",
        b"x/foo/a",
        b"x/foo/a/foo",
        b"x/foo-1",
        b"x/foo0",
        b"xt_CONNMARK.h",
        b"xt_CONNmark.h",
        b"xt_connmark.h",
    ]
)


def test_case_nar_auto_hacks_exactly_where_case_folds(volume: Volume, tmp_path: Path) -> None:
    nar = FIXTURES / "case.nar"
    dest = tmp_path / "out"
    summary = json.loads(xstore("nar", "restore", dest, "-i", nar, "--case-hack", "auto", "--json"))
    assert summary["filesystem"]["caseInsensitive"] == volume.case_insensitive
    assert summary["caseHack"] is volume.case_insensitive
    if volume.case_insensitive:
        assert tree_names(dest) == CASE_NAR_HACKED
        assert summary["renamed"] == 5
    else:
        assert tree_names(dest) == CASE_NAR_PLAIN
        assert summary["renamed"] == 0
    assert xstore("nar", "dump", dest) == nar.read_bytes()


def test_unnormalized_nar_auto_fold_restores_and_dumps_back(volume: Volume, tmp_path: Path) -> None:
    """Nix cannot restore this archive on APFS at all ("File exists"); with `--case-fold auto` xstore
    must, on either volume, and never through the symlink."""
    nar = FIXTURES / "unnormalized.nar"
    dest = tmp_path / "out"
    summary = json.loads(
        xstore("nar", "restore", dest, "-i", nar, "--case-hack", "auto", "--case-fold", "auto", "--json")
    )
    assert summary["filesystem"]["normalizationInsensitive"] == volume.normalization_insensitive
    names = sorted(os.listdir(os.fsencode(dest)))
    if volume.normalization_insensitive:
        assert summary["caseHack"] is True
        assert summary["fold"] == "apfs"
        assert summary["renamed"] == 1
        assert names == sorted([A_CIRC_NFD, A_CIRC_NFC + SUFFIX + b"1"])
        hacked_dir = os.fsencode(dest) + b"/" + A_CIRC_NFC + SUFFIX + b"1"
    else:
        assert summary["renamed"] == 0
        assert names == sorted([A_CIRC_NFD, A_CIRC_NFC])
        hacked_dir = os.fsencode(dest) + b"/" + A_CIRC_NFC
    assert os.readlink(os.fsencode(dest) + b"/" + A_CIRC_NFD) == b"/"
    assert os.path.isdir(hacked_dir)
    assert not os.path.islink(hacked_dir)
    # The directory's contents (nix/var/nix/profiles/default/bin/meow) went into the directory, not
    # through the symlink to /.
    assert os.path.isfile(hacked_dir + b"/nix/var/nix/profiles/default/bin/meow")
    assert xstore("nar", "dump", dest) == nar.read_bytes()


# -- the same through a store --------------------------------------------------------------------------


def export_stream(name: str, nar: bytes) -> bytes:
    """A one-path `nix-store --export` stream holding `nar`, framed with xstore's own wire helpers."""
    path = parse_store_path(f"/nix/store/{'1' * 32}-{name}")
    return encode_u64(1) + nar + trailer(path, [], None) + encode_u64(0)


@pytest.mark.parametrize("fixture", ["case.nar", "unnormalized.nar"])
def test_store_import_and_export_round_trip(volume: Volume, tmp_path: Path, fixture: str) -> None:
    root = tmp_path / "root"
    settings = json.loads(xstore("store", "init", "--store", root, "--case-hack", "auto", "--json"))
    assert settings["caseHack"] is volume.case_insensitive
    assert settings["caseFold"] == probe(tmp_path).fold.value
    name = fixture.removesuffix(".nar")
    stream = export_stream(name, (FIXTURES / fixture).read_bytes())
    (tmp_path / "stream").write_bytes(stream)
    imported = xstore("import", "--store", root, "-i", tmp_path / "stream").decode().split()
    assert imported == [f"/nix/store/{'1' * 32}-{name}"]
    assert xstore("export", "--store", root, imported[0]) == stream


# -- the apfs fold against APFS -------------------------------------------------------------------------

# Names whose case folding or normalisation is a corner of Unicode. Each is created on the volume and
# compared with every other; keep the list growing when a new corner turns up.
TRICKY_NAMES: tuple[str, ...] = (
    # ASCII baseline
    "a",
    "A",
    "i",
    "I",
    "k",
    "K",
    "s",
    "S",
    "ss",
    "SS",
    "fi",
    "FI",
    "ab",
    # Latin-1 case, and the same letters decomposed
    "\u00e9",  # é
    "\u00c9",  # É
    "e\u0301",  # é NFD
    "E\u0301",  # É NFD
    "\u00e5",  # å
    "\u00c5",  # Å LATIN CAPITAL LETTER A WITH RING ABOVE
    "a\u030a",  # å NFD
    "A\u030a",  # Å NFD
    "\u212b",  # Å ANGSTROM SIGN (canonical singleton of U+00C5)
    # titlecase digraphs
    "\u01c4",  # Ǆ
    "\u01c5",  # ǅ
    "\u01c6",  # ǆ
    "d\u017e",  # dž as two letters (compatibility, not canonical, equivalent of ǆ)
    # Greek sigma forms
    "\u03c3",  # GREEK SMALL LETTER SIGMA
    "\u03c2",  # GREEK SMALL LETTER FINAL SIGMA
    "\u03a3",  # GREEK CAPITAL LETTER SIGMA
    # sharp s: full case folding gives "ss", simple folding leaves it alone
    "\u00df",  # ß
    "\u1e9e",  # ẞ LATIN CAPITAL LETTER SHARP S
    # ligature: full case folding gives "fi"
    "\ufb01",  # ﬁ
    # n preceded by apostrophe: full case folding gives U+02BC n
    "\u0149",  # ŉ
    "\u02bcn",
    # Turkish i
    "\u0130",  # İ LATIN CAPITAL LETTER I WITH DOT ABOVE
    "\u0131",  # LATIN SMALL LETTER DOTLESS I
    "i\u0307",  # i + COMBINING DOT ABOVE (the full case folding of İ)
    # signs that are canonical singletons of letters
    "\u212a",  # K KELVIN SIGN
    "\u2126",  # Ω OHM SIGN
    "\u03a9",  # Ω
    "\u03c9",  # ω
    "\u017f",  # LATIN SMALL LETTER LONG S (folds to s)
    # full-width forms fold among themselves, not to ASCII
    "\uff21",  # FULLWIDTH LATIN CAPITAL LETTER A
    "\uff41",  # FULLWIDTH LATIN SMALL LETTER A
    # scripts whose case pairs came late to Unicode
    "\u13a0",  # CHEROKEE LETTER A (Unicode 3.0)
    "\uab70",  # CHEROKEE SMALL LETTER A (Unicode 8.0; folds to U+13A0)
    "\u10d0",  # ა GEORGIAN LETTER AN
    "\u1c90",  # Ა GEORGIAN MTAVRULI CAPITAL LETTER AN (Unicode 11.0)
    # canonical ordering of combining marks, and precomposition
    "a\u0301\u0323",  # acute then dot below
    "a\u0323\u0301",  # dot below then acute (the canonical order)
    "\u1ea1\u0301",  # ạ precomposed, then acute
    "\u0390",  # ΐ
    "\u1fd3",  # ΐ (canonically equivalent to U+0390)
    "\u01f0",  # ǰ (no precomposed capital)
    "j\u030c",
    # Hangul syllable and its conjoining jamo
    "\uac00",  # 가
    "\u1100\u1161",
    # an ignorable: HFS+ ignored some of these when comparing; a fold must not
    "a\u200db",  # ZERO WIDTH JOINER
    # compatibility only: never the same name
    "\u2460",  # ① CIRCLED DIGIT ONE
    "1",
)


def show(name: str) -> str:
    return f"{name!r} ({' '.join(f'U+{ord(c):04X}' for c in name)})"


@dataclass(frozen=True)
class Observed:
    """For each unordered pair of TRICKY_NAMES, whether the volume took them for one name."""

    same: dict[tuple[str, str], bool]
    problems: list[str]  # refusals and inconsistencies, which fail the test on their own


def observe(directory: Path) -> Observed:
    """Create each name alone in a directory of its own, then, for every other name, look it up (same
    inode?) and create it with O_EXCL (EEXIST?). Both must agree; the result is what APFS says."""
    one_way: dict[tuple[str, str], bool] = {}
    problems: list[str] = []
    for index, first in enumerate(TRICKY_NAMES):
        box = directory / f"n{index}"
        box.mkdir()
        fd = os.open(box, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                os.close(os.open(first.encode(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd))
            except OSError as e:
                problems.append(f"cannot create {show(first)}: {errno.errorcode.get(e.errno or 0, e.errno)}")
                continue
            listed = os.listdir(fd)
            if listed != [first]:
                problems.append(f"created {show(first)}, the directory lists {[show(n) for n in listed]}")
            inode = os.stat(first.encode(), dir_fd=fd, follow_symlinks=False).st_ino
            for second in TRICKY_NAMES:
                if second == first:
                    continue
                one_way[first, second] = same = _collides(fd, first, second, inode, problems)
                if (second, first) in one_way and one_way[second, first] != same:
                    problems.append(
                        f"not symmetric: {show(second)} then {show(first)} -> {one_way[second, first]}, "
                        f"{show(first)} then {show(second)} -> {same}"
                    )
        finally:
            os.close(fd)
    pairs = {
        (a, b): one_way.get((a, b), False) or one_way.get((b, a), False)
        for a, b in itertools.combinations(TRICKY_NAMES, 2)
    }
    return Observed(pairs, problems)


def _collides(fd: int, first: str, second: str, inode: int, problems: list[str]) -> bool:
    try:
        looked_up = os.stat(second.encode(), dir_fd=fd, follow_symlinks=False).st_ino == inode
    except FileNotFoundError:
        looked_up = False
    try:
        os.close(os.open(second.encode(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd))
    except FileExistsError:
        created = False
    except OSError as e:
        problems.append(f"cannot create {show(second)}: {errno.errorcode.get(e.errno or 0, e.errno)}")
        return looked_up
    else:
        created = True
        os.unlink(second.encode(), dir_fd=fd)
    if looked_up == created:
        problems.append(
            f"{show(first)} then {show(second)}: lookup says {'same' if looked_up else 'different'}, "
            f"O_EXCL create {'succeeded' if created else 'failed with EEXIST'}"
        )
    return not created


def mismatches(observed: Observed, predict: dict[tuple[str, str], bool], model: str) -> list[str]:
    return [
        f"  {show(a)}  vs  {show(b)}: the volume says {'SAME name' if same else 'different names'}, "
        f"{model} says {'same' if predict[a, b] else 'different'}"
        for (a, b), same in observed.same.items()
        if same != predict[a, b]
    ]


def test_tricky_names_are_distinct_strings() -> None:
    assert len(set(TRICKY_NAMES)) == len(TRICKY_NAMES)


def test_names_come_back_byte_for_byte(tmp_path: Path) -> None:
    """A restored name must list as it was written (APFS preserves normalisation; HFS+ stored NFD), or a
    dump would not give the archive back."""
    for index, name in enumerate(TRICKY_NAMES):
        box = tmp_path / f"n{index}"
        box.mkdir()
        (box / name).write_bytes(b"")
    changed = [
        f"  wrote {show(name)}, listed {[show(n) for n in os.listdir(tmp_path / f'n{index}')]}"
        for index, name in enumerate(TRICKY_NAMES)
        if os.listdir(tmp_path / f"n{index}") != [name]
    ]
    assert not changed, "names the volume does not preserve:\n" + "\n".join(changed)


def test_apfs_fold_predicts_case_insensitive_apfs(volume: Volume, tmp_path: Path) -> None:
    if not volume.case_insensitive:
        pytest.skip("the temporary directory is on a case-sensitive volume; the apfs fold models the default")
    observed = observe(tmp_path)
    predict = {
        (a, b): fold_key(a.encode(), Fold.APFS) == fold_key(b.encode(), Fold.APFS)
        for a, b in itertools.combinations(TRICKY_NAMES, 2)
    }
    differ = mismatches(observed, predict, "fold_key(Fold.APFS)")
    report = []
    if differ:
        report += [f"{len(differ)} pair(s) where the apfs fold is not what APFS does:", *differ]
    if observed.problems:
        report += ["problems while measuring:", *(f"  {p}" for p in observed.problems)]
    assert not report, "\n".join(report)


def test_case_sensitive_apfs_folds_normalisation_at_most(volume: Volume, tmp_path: Path) -> None:
    """A case-sensitive APFS volume still takes canonically equivalent spellings for one name when it is
    normalisation-insensitive (and then exactly those), and otherwise none; the probe must say which."""
    if volume.case_insensitive:
        pytest.skip("the temporary directory is on a case-insensitive volume")
    observed = observe(tmp_path)
    canonical = {
        (a, b): unicodedata.normalize("NFD", a) == unicodedata.normalize("NFD", b)
        for a, b in itertools.combinations(TRICKY_NAMES, 2)
    }
    if volume.normalization_insensitive:
        predict, model = canonical, "canonical equivalence (NFD)"
    else:
        predict, model = dict.fromkeys(canonical, False), "byte equality"
    report = mismatches(observed, predict, model)
    report += [f"  {p}" for p in observed.problems]
    assert not report, "\n".join(report)
    behaviour = probe(tmp_path)
    assert not behaviour.case_insensitive
    assert not behaviour.unicode_case_insensitive
    assert behaviour.normalization_insensitive == volume.normalization_insensitive
