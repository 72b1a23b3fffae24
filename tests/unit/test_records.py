"""`Record`: the plain classes that stand in for frozen dataclasses on the start-up path."""

from __future__ import annotations

import pytest

from xstore.casehack import Fold
from xstore.nar.events import DirectoryEnd, DirectoryStart, FileEnd, RegularFile
from xstore.nar.restore import RestoreResult


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
