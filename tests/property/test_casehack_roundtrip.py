"""Case-hack round trips: NAR -> case-hacked tree -> the same NAR, byte for byte.

The expected on-disk names come from a reference implementation of Nix's rule written here (archive.cc
`restore`, case-hack branch): per directory, in NAR order, the first spelling of a fold key keeps its
name, each later one gets `~nix~case~hack~N` with N counting per key from 1, and a hacked name that lands
on the key of a first spelling is an error. Nix's map of first spellings compares like `strcasecmp` in
the C locale (the ASCII fold); the APFS fold is xstore's extension, and its reference key is Unicode's
canonical caseless match (D145: NFD(casefold(NFD(s)))), for names that are UTF-8.

The restores run on this machine's case-sensitive filesystem with the case hack forced on, and check
that the result would also fit on a folding one: no two names of a directory share a fold key.
"""

from __future__ import annotations

import os
import random
import tempfile
import unicodedata
from collections.abc import Callable, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import (
    CASE_HACK_SUFFIX,
    ChunkReader,
    Node,
    Tree,
    colliding_names,
    colliding_trees,
    draw_chunks,
    encode_tree,
    entry_names,
    iter_nodes,
    read_tree,
)
from xstore.casehack import CaseHackMode, CaseHackNames, Fold, fold_key, unhack_entries, unhack_name
from xstore.errors import CaseHackError, DumpError, XstoreError
from xstore.nar.dump import dump_path
from xstore.nar.restore import restore_path

# Hypothesis keys its caches by tuples of raw choices, where b"" and 0 (or "ab" and b"ab") hash alike;
# a lookup then compares bytes with int or str, which `python -bb` turns into an error inside Hypothesis
# (hypothesis/internal/conjecture/choice.py `choices_key`). Only warnings raised in Hypothesis's own
# modules are ignored: a BytesWarning from xstore still fails the test.

IN_MEMORY = settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
ON_DISK = settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])

_ASCII_LOWER = bytes.maketrans(bytes(range(ord("A"), ord("Z") + 1)), bytes(range(ord("a"), ord("z") + 1)))


def ascii_key(name: bytes) -> bytes:
    """`strcasecmp` in the C locale: only A-Z fold."""
    return name.translate(_ASCII_LOWER)


def apfs_key(name: bytes) -> bytes:
    """Unicode canonical caseless matching for UTF-8 names; the ASCII fold for others."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return ascii_key(name)
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", text).casefold()).encode()


REFERENCE_KEYS: dict[Fold, Callable[[bytes], bytes]] = {Fold.ASCII: ascii_key, Fold.APFS: apfs_key}


class ReferenceCollisionError(Exception):
    """The reference's version of Nix's "collides with case-hacked file name" error."""


def nix_disk_names(names: Iterable[bytes], key: Callable[[bytes], bytes]) -> dict[bytes, bytes]:
    """NAR name -> on-disk name for the entries of one directory, by Nix's rule, and xstore's one
    addition: a name that folds onto a hacked name given out before is refused too."""
    counts: dict[bytes, int] = {}  # key of each first spelling -> hacked names given out so far
    hacked_keys: set[bytes] = set()
    disk: dict[bytes, bytes] = {}
    for name in sorted(names):
        k = key(name)
        if k in hacked_keys:
            raise ReferenceCollisionError(name)
        if k not in counts:
            counts[k] = 0
            disk[name] = name
            continue
        counts[k] += 1
        hacked = name + CASE_HACK_SUFFIX + b"%d" % counts[k]
        if key(hacked) in counts:
            raise ReferenceCollisionError(name)
        hacked_keys.add(key(hacked))
        disk[name] = hacked
    return disk


def hacked_tree(node: Node, key: Callable[[bytes], bytes]) -> Node:
    """The tree Nix's rule makes of `node` on disk."""
    if node[0] != "dir":
        return node
    entries = node[1]
    disk = nix_disk_names(entries, key)
    return ("dir", {disk[name]: hacked_tree(child, key) for name, child in entries.items()})


def renamed_count(tree: Tree, key: Callable[[bytes], bytes]) -> int:
    total = 0
    for _, node in iter_nodes(tree):
        if node[0] == "dir":
            total += sum(disk != name for name, disk in nix_disk_names(node[1], key).items())
    return total


def dump_bytes(root: bytes, *, case_hack: bool) -> bytes:
    blocks: list[bytes] = []
    dump_path(root, blocks.append, case_hack=case_hack)
    return b"".join(blocks)


# -- the folds --------------------------------------------------------------------------------------------


@IN_MEMORY
@given(entry_names())
def test_fold_keys_agree_with_the_reference(name: bytes) -> None:
    assert fold_key(name, Fold.ASCII) == ascii_key(name)
    assert fold_key(name, Fold.APFS) == apfs_key(name)


@IN_MEMORY
@given(st.text(min_size=1, max_size=8), st.data())
def test_apfs_fold_ignores_normalisation_and_ascii_case(text: str, data: st.DataObject) -> None:
    """NFC and NFD spellings share a key (the key normalises first), and so do ASCII case spellings.
    (Not every Unicode case spelling does: the key of U+0345 U+0301 differs from that of its
    casefold, as canonical caseless matching defines.)"""
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)), label="flips")
    flipped = "".join(
        c.swapcase() if flip and c.isascii() else c for c, flip in zip(text, flips, strict=True)
    )
    spellings = {unicodedata.normalize(form, s) for s in (text, flipped) for form in ("NFC", "NFD")}
    assert len({fold_key(s.encode(), Fold.APFS) for s in spellings}) == 1


# -- restore and dump ---------------------------------------------------------------------------------------


@pytest.mark.case_sensitive_tmp
@ON_DISK
@given(colliding_trees(), st.sampled_from(Fold), st.data())
def test_case_hack_round_trip(tree: Tree, fold: Fold, data: st.DataObject) -> None:
    archive = encode_tree(tree)
    key = REFERENCE_KEYS[fold]
    reader = ChunkReader(draw_chunks(data, archive))
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.path.join(os.fsencode(tmp), b"out")
        result = restore_path(dest, reader.read, case_hack=CaseHackMode.ON, fold=fold)
        on_disk = read_tree(dest, check_modes=True)

        # Nix's names, exactly.
        assert on_disk == hacked_tree(("dir", tree), key)
        assert result.case_hack
        assert result.fold is fold
        assert result.renamed == renamed_count(tree, key)
        assert result.nar_size == len(archive)

        # The tree would fit on a filesystem that folds this way.
        for path, node in iter_nodes(on_disk):
            if node[0] == "dir":
                keys = [fold_key(name, fold) for name in node[1]]
                assert len(set(keys)) == len(keys), (path, sorted(node[1]))

        # And it dumps back to the original archive; without un-hacking, hacked names are refused.
        assert dump_bytes(dest, case_hack=True) == archive
        if result.renamed:
            with pytest.raises(DumpError):
                dump_bytes(dest, case_hack=False)
        else:
            assert dump_bytes(dest, case_hack=False) == archive


A_CIRC_NFC, A_CIRC_NFD = b"\xc3\xa2", b"a\xcc\x82"
CAP_A_CIRC_NFC, CAP_A_CIRC_NFD = b"\xc3\x82", b"A\xcc\x82"


@pytest.mark.case_sensitive_tmp
@pytest.mark.parametrize(
    ("fold", "expected"),
    [
        # NAR order: A^ (NFD), a^ (NFD), A^ (NFC), a^ (NFC). The ASCII fold sees only the base letters
        # of the NFD spellings; the NFC ones differ in a non-ASCII byte.
        (
            Fold.ASCII,
            [CAP_A_CIRC_NFD, A_CIRC_NFD + CASE_HACK_SUFFIX + b"1", CAP_A_CIRC_NFC, A_CIRC_NFC],
        ),
        (
            Fold.APFS,
            [
                CAP_A_CIRC_NFD,
                A_CIRC_NFD + CASE_HACK_SUFFIX + b"1",
                CAP_A_CIRC_NFC + CASE_HACK_SUFFIX + b"2",
                A_CIRC_NFC + CASE_HACK_SUFFIX + b"3",
            ],
        ),
    ],
)
def test_unicode_variants(fold: Fold, expected: list[bytes]) -> None:
    tree: Tree = {
        name: ("file", name, False) for name in (A_CIRC_NFC, A_CIRC_NFD, CAP_A_CIRC_NFC, CAP_A_CIRC_NFD)
    }
    archive = encode_tree(tree)
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.path.join(os.fsencode(tmp), b"out")
        restore_path(dest, ChunkReader([archive]).read, case_hack=CaseHackMode.ON, fold=fold)
        assert sorted(os.listdir(dest)) == sorted(expected)
        assert hacked_tree(("dir", tree), REFERENCE_KEYS[fold]) == read_tree(dest)
        assert dump_bytes(dest, case_hack=True) == archive


@pytest.mark.case_sensitive_tmp
def test_suffix_spelled_in_another_case() -> None:
    """A NAR may spell the suffix in another case (only the exact spelling is reserved). Like Nix,
    xstore refuses a hacked name that lands on an earlier entry; unlike Nix, also an entry that lands on
    an earlier hacked name (Nix creates both, and a folding filesystem then fails with "File exists"):
    either way, before anything is created."""
    earlier: Tree = {
        b"A": ("file", b"", False),
        b"A~NIX~CASE~HACK~1": ("file", b"", False),
        b"a": ("dir", {}),
    }
    later: Tree = {
        b"A": ("file", b"", False),
        b"a": ("dir", {}),
        b"a~NIX~CASE~HACK~1": ("file", b"", False),
    }
    for refused in (earlier, later):
        with pytest.raises(ReferenceCollisionError):
            hacked_tree(("dir", refused), ascii_key)
        with tempfile.TemporaryDirectory() as tmp:
            dest = os.path.join(os.fsencode(tmp), b"refused")
            with pytest.raises(CaseHackError, match="collides with case-hacked file name"):
                restore_path(dest, ChunkReader([encode_tree(refused)]).read, case_hack=CaseHackMode.ON)
            assert os.listdir(tmp) == []


# -- naming in memory ------------------------------------------------------------------------------------


@IN_MEMORY
@given(colliding_names(), st.sampled_from(Fold))
def test_case_hack_names_match_reference(names: list[bytes], fold: Fold) -> None:
    namer = CaseHackNames(fold)
    assert {name: namer.disk_name(name) for name in names} == nix_disk_names(names, REFERENCE_KEYS[fold])


@IN_MEMORY
@given(colliding_names(), st.sampled_from(Fold), st.randoms(use_true_random=False))
def test_unhack_entries_inverts_the_case_hack(names: list[bytes], fold: Fold, rng: random.Random) -> None:
    disk = nix_disk_names(names, REFERENCE_KEYS[fold])
    listing = list(disk.values())
    rng.shuffle(listing)  # directory order is arbitrary
    assert unhack_entries(listing, hack=True) == sorted(disk.items())
    assert all(unhack_name(hacked) == name for name, hacked in disk.items())


@IN_MEMORY
@given(st.lists(entry_names(), unique=True, max_size=10))
def test_unhack_entries_without_hack_is_identity(names: list[bytes]) -> None:
    assert unhack_entries(names, hack=False) == sorted((name, name) for name in names)
    assert unhack_entries(names, hack=True) == sorted((name, name) for name in names)


@IN_MEMORY
@given(colliding_names(), st.sampled_from(Fold), st.data())
def test_unhack_entries_refuses_collisions(names: list[bytes], fold: Fold, data: st.DataObject) -> None:
    disk = nix_disk_names(names, REFERENCE_KEYS[fold])
    victim = data.draw(st.sampled_from(names), label="victim")
    trailer = data.draw(st.binary(max_size=8).map(lambda b: b.replace(b"/", b"").replace(b"\0", b"")))
    # Anything from the suffix on is cut, so this unhacks to `victim` too (unless it is already there).
    extra = victim + CASE_HACK_SUFFIX + b"1000" + trailer
    with pytest.raises(CaseHackError) as info:
        unhack_entries([*disk.values(), extra], hack=True)
    assert isinstance(info.value, XstoreError)
    with pytest.raises(DumpError):
        unhack_entries([*disk.values(), extra], hack=False)
