"""`Record`: the plain classes that stand in for frozen dataclasses on the start-up path."""

from __future__ import annotations

import copy
import pickle

import pytest

from xstore.casehack import Fold
from xstore.errors import InvalidStorePathError, StoreError
from xstore.nar.events import DirectoryEnd, DirectoryStart, FileEnd, RegularFile
from xstore.nar.restore import RestoreResult
from xstore.storeapi import PathInfo
from xstore.storepath import StorePath

HASH = "1" * 32


def test_records_are_equal_by_type_and_every_field() -> None:
    path = (b"a", b"b")
    assert RegularFile(path, True, 3, 96) == RegularFile(path, True, 3, 96)
    assert RegularFile(path, True, 3, 96) != RegularFile(path, False, 3, 96)
    assert RegularFile(path, True, 3, 96) != RegularFile(path, True, 3, 97)
    # The same fields in another type are another event, as with dataclasses.
    assert FileEnd(path) != DirectoryEnd(path)
    assert DirectoryStart(path) != DirectoryEnd(path)
    assert FileEnd(path) != (path,)
    # Fields a kind inherits count too.
    assert FileEnd((b"x",)) != FileEnd((b"y",))
    assert repr(DirectoryStart(path)) == "DirectoryStart(path=(b'a', b'b'))"


def test_records_hash_as_they_compare() -> None:
    events = {FileEnd((b"x",)), FileEnd((b"x",)), DirectoryEnd((b"x",)), FileEnd((b"y",))}
    assert len(events) == 3
    first, second = RestoreResult(8, False, Fold.ASCII, 0, None), RestoreResult(8, False, Fold.ASCII, 0, None)
    assert first == second
    assert hash(first) == hash(second)


def test_records_print_like_dataclasses() -> None:
    assert repr(RegularFile((b"a",), False, 5, 104)) == (
        "RegularFile(path=(b'a',), executable=False, size=5, contents_offset=104)"
    )
    assert repr(RestoreResult(8, True, Fold.APFS, 2, None)) == (
        "RestoreResult(nar_size=8, case_hack=True, fold=<Fold.APFS: 'apfs'>, renamed=2, probed=None)"
    )


def test_records_have_no_instance_dict() -> None:
    with pytest.raises(AttributeError):
        FileEnd((b"x",)).other = 1  # type: ignore[attr-defined]


def test_frozen_records_refuse_assignment_and_deletion() -> None:
    path = StorePath(HASH, "x")
    with pytest.raises(AttributeError, match="cannot assign to field 'name' of StorePath"):
        path.name = "y"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="cannot delete field 'name' of StorePath"):
        del path.name
    assert path.name == "x"
    assert not hasattr(path, "__dict__")


def test_frozen_records_replace_through_their_constructor() -> None:
    info = PathInfo(StorePath(HASH, "x"), bytes(32), 8)
    changed = info.replace(nar_size=9, sigs=("k:s",))
    assert (changed.nar_size, changed.sigs, changed.path, info.nar_size) == (9, ("k:s",), info.path, 8)
    assert changed == PathInfo(StorePath(HASH, "x"), bytes(32), 9, sigs=("k:s",))
    # The constructor's checks apply to a replacement too.
    with pytest.raises(StoreError, match="not a SHA-256 digest"):
        info.replace(nar_hash=b"short")
    with pytest.raises(InvalidStorePathError):
        StorePath(HASH, "x").replace(name="not/valid")


def test_frozen_records_copy_and_pickle() -> None:
    info = PathInfo(StorePath(HASH, "x"), bytes(32), 8, (StorePath(HASH, "x"),), ca="text:sha256:abc")
    assert copy.copy(info) == info
    assert copy.deepcopy(info) == info
    assert pickle.loads(pickle.dumps(info)) == info  # noqa: S301 (our own bytes)
    assert hash(pickle.loads(pickle.dumps(info.path))) == hash(info.path)  # noqa: S301


def test_store_paths_order_hash_and_compare_as_their_base_names() -> None:
    names = [StorePath(HASH, "b"), StorePath("0" * 32, "z"), StorePath(HASH, "a-1"), StorePath(HASH, "a")]
    assert [p.base for p in sorted(names)] == sorted(p.base for p in names)
    assert StorePath(HASH, "a") <= StorePath(HASH, "a") < StorePath(HASH, "b")
    assert StorePath(HASH, "b") >= StorePath(HASH, "b") > StorePath(HASH, "a")
    assert StorePath(HASH, "a") == StorePath(HASH, "a")
    assert StorePath(HASH, "a") != StorePath(HASH, "b")
    assert StorePath(HASH, "a") != (HASH, "a")
    assert len({StorePath(HASH, "a"), StorePath(HASH, "a"), StorePath(HASH, "b")}) == 2
    with pytest.raises(TypeError):
        _ = StorePath(HASH, "a") < (HASH, "a")  # type: ignore[operator]
