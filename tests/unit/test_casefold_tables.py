"""The casefold layer's two tables, driven directly against a real temporary directory: no FUSE, no mount.

- The object table (`xstore.fuse.casefold_objects`): nodes for spellings (canonical and alias inodes,
  hard links sharing one), lookup counts and forget, places and their bound, detaching when the last
  name goes, rename bookkeeping, open descriptors and directory handles, releasing every descriptor.
- The name index (`xstore.fuse.casefold_names`): the two folds (`fold_key`), the exact spelling first,
  EEXIST on a taken key, EILSEQ for names that are not UTF-8 under APFS, the cached listings (trusted
  while the directory's mtime stands, read again when it moves or a name they offer is gone, kept in
  step by `noted`, bounded).

The tables do what the handlers of `CasefoldOperations` ask of them; `lookup` below does what the
`lookup` handler does, and the tests count the kernel's lookups on the nodes by hand, as the handlers'
replies do. Tests that rely on the temporary directory keeping case or normalisation variants apart
are marked `case_sensitive_tmp`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from xstore.casehack import Fold, fold_key
from xstore.fuse.casefold_names import LISTINGS_KEPT, NameIndex

if TYPE_CHECKING:
    from xstore.fuse.casefold_objects import (  # type: ignore[attr-defined, unused-ignore]  # Linux only
        BackingObject,
        Node,
        ObjectTable,
    )

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the casefold layer runs on Linux only (O_PATH descriptors)"
)

NFC_E = "\u00e9"  # é, composed
NFD_E = "e\u0301"  # é, decomposed
OLD_MTIME_NS = 1_000_000_000  # a directory mtime no change made now can produce


class Dir(NamedTuple):
    """A backing directory as the name index sees one."""

    ident: tuple[int, int]
    fd: int | None


def touch(directory: Path, name: bytes) -> None:
    os.close(os.open(os.path.join(os.fsencode(directory), name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))


def set_mtime(directory: Path, ns: int) -> None:
    os.utime(directory, ns=(ns, ns))


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def raises_errno(code: int) -> Iterator[None]:
    """The block must fail with an `OSError` carrying `code` (the errno the kernel would be given)."""
    with pytest.raises(OSError, match=rf"^\[Errno {code}\] ") as info:
        yield
    assert info.value.errno == code, info.value


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Dir]:
    """`tmp_path`, opened."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    st = os.fstat(fd)
    yield Dir((st.st_dev, st.st_ino), fd)
    os.close(fd)


@pytest.fixture
def dropped() -> list[tuple[int, int]]:
    """The identities the table reported dropped, in order."""
    return []


@pytest.fixture
def table(tmp_path: Path, dropped: list[tuple[int, int]]) -> Iterator[ObjectTable]:
    """An object table rooted at `tmp_path`, closed afterwards."""
    from xstore.fuse.casefold_objects import ObjectTable  # type: ignore[attr-defined, unused-ignore]  # Linux only

    objects = ObjectTable(os.fsencode(tmp_path), on_drop=dropped.append)
    yield objects
    objects.close()


def root_dir(table: ObjectTable) -> BackingObject:
    return table.root.obj


def counted(node: Node) -> Node:
    """`node`, handed to the kernel once more (as the handlers' replies count it)."""
    node.lookups += 1
    return node


def two_links(table: ObjectTable, tmp_path: Path, first: bytes, second: bytes) -> Node:
    """A file stored as `first` and `second` in `tmp_path`, both known to the table: the node the kernel
    holds for `first`."""
    touch(tmp_path, first)
    os.link(os.path.join(os.fsencode(tmp_path), first), os.path.join(os.fsencode(tmp_path), second))
    node = counted(table.node_at(root_dir(table), first, first)[0])
    table.object_at(root_dir(table), second)
    return node


def lookup(table: ObjectTable, index: NameIndex, parent: int, spelling: bytes) -> Node:
    """What the `lookup` handler does: the node `spelling` reaches in directory node `parent`, counted."""
    directory = table.directory(parent)
    stored = index.require(directory, spelling)
    node, _ = table.node_at(directory, stored, spelling)
    return counted(node)


# -- the object table: nodes and inode numbers -------------------------------------------------------------


def test_the_root_and_unknown_inodes(table: ObjectTable, tmp_path: Path) -> None:
    from xstore.fuse.casefold_objects import ROOT_INODE  # type: ignore[attr-defined, unused-ignore]  # Linux only

    assert table.node(ROOT_INODE) is table.root
    assert table.directory(ROOT_INODE).fd is not None
    with raises_errno(errno.ESTALE):
        table.node(ROOT_INODE + 1000)
    touch(tmp_path, b"file")
    node, st = table.node_at(root_dir(table), b"file", b"file")
    assert node.inode != ROOT_INODE
    assert stat.S_ISREG(st.st_mode)
    with raises_errno(errno.ENOTDIR):
        table.directory(node.inode)
    table.forget(ROOT_INODE, 1000)
    assert table.node(ROOT_INODE) is table.root
    assert table.root.lookups == 1  # the kernel never forgets the root


def test_hard_links_share_the_canonical_inode(table: ObjectTable, tmp_path: Path) -> None:
    touch(tmp_path, b"a")
    os.link(tmp_path / "a", tmp_path / "b")
    touch(tmp_path, b"c")
    root = root_dir(table)
    a, _ = table.node_at(root, b"a", b"a")
    b, _ = table.node_at(root, b"b", b"b")
    c, _ = table.node_at(root, b"c", b"c")
    assert a is b
    assert c.inode != a.inode
    assert a.alias == b""
    assert [name for _, name in a.obj.places] == [b"a", b"b"]
    assert root.refs == 3  # two places of one object, one of another


def test_each_other_spelling_gets_an_alias_inode(table: ObjectTable, tmp_path: Path) -> None:
    touch(tmp_path, b"ReadMe")
    root = root_dir(table)
    canonical, _ = table.node_at(root, b"ReadMe", b"ReadMe")
    upper, _ = table.node_at(root, b"ReadMe", b"README")
    lower, _ = table.node_at(root, b"ReadMe", b"readme")
    assert len({canonical.inode, upper.inode, lower.inode}) == 3
    assert canonical.obj is upper.obj is lower.obj
    assert (upper.alias, lower.alias) == (b"README", b"readme")
    assert table.node_at(root, b"ReadMe", b"README")[0] is upper
    assert canonical.obj.live == 3
    assert [name for _, name in canonical.obj.places] == [b"ReadMe"]  # one place, however spelled


# -- the object table: lifetimes ---------------------------------------------------------------------------


def test_forgetting_every_lookup_drops_the_node_and_its_object(
    table: ObjectTable, tmp_path: Path, dropped: list[tuple[int, int]]
) -> None:
    touch(tmp_path, b"f")
    root = root_dir(table)
    node, _ = table.node_at(root, b"f", b"f")
    node.lookups = 2
    ident = node.obj.ident
    table.forget(node.inode, 1)
    assert table.node(node.inode) is node
    assert ident in table.objects
    table.forget(node.inode, 5)  # more than the kernel holds: nothing goes negative
    with raises_errno(errno.ESTALE):
        table.node(node.inode)
    assert ident not in table.objects
    assert dropped == [ident]
    assert root.refs == 0
    table.forget(node.inode, 1)  # forgotten twice: nothing happens
    again, _ = table.node_at(root, b"f", b"f")
    assert again.inode != node.inode  # a forgotten inode number is never given out again


def test_an_alias_and_the_canonical_node_are_counted_apart(table: ObjectTable, tmp_path: Path) -> None:
    touch(tmp_path, b"f")
    root = root_dir(table)
    canonical = counted(table.node_at(root, b"f", b"f")[0])
    alias = counted(table.node_at(root, b"f", b"F")[0])
    ident = canonical.obj.ident
    table.forget(canonical.inode, 1)
    assert table.node(alias.inode) is alias
    assert ident in table.objects  # the alias still holds the object
    assert canonical.obj.live == 1
    table.forget(alias.inode, 1)
    assert ident not in table.objects


def test_a_directory_lives_while_something_in_it_is_known(
    table: ObjectTable, tmp_path: Path, dropped: list[tuple[int, int]]
) -> None:
    before = descriptors()
    (tmp_path / "sub").mkdir()
    touch(tmp_path / "sub", b"f")
    sub = counted(table.node_at(root_dir(table), b"sub", b"sub")[0])
    assert sub.obj.fd is not None
    assert descriptors() == before + 1
    file = counted(table.node_at(sub.obj, b"f", b"f")[0])
    assert sub.obj.refs == 1
    table.forget(sub.inode, 1)
    assert sub.obj.ident in table.objects  # the file the kernel knows is in it
    assert descriptors() == before + 1
    table.forget(file.inode, 1)
    assert sub.obj.ident not in table.objects
    assert descriptors() == before
    assert dropped == [file.obj.ident, sub.obj.ident]


def test_places_kept_per_object_are_bounded(table: ObjectTable, tmp_path: Path) -> None:
    from xstore.fuse.casefold_objects import PLACES_KEPT  # type: ignore[attr-defined, unused-ignore]  # Linux only

    names = [b"link%d" % i for i in range(PLACES_KEPT + 3)]
    touch(tmp_path, names[0])
    for name in names[1:]:
        os.link(os.path.join(os.fsencode(tmp_path), names[0]), os.path.join(os.fsencode(tmp_path), name))
    root = root_dir(table)
    for name in names:
        obj, _ = table.object_at(root, name)
    assert [name for _, name in obj.places] == names[-PLACES_KEPT:]  # the oldest went first
    assert root.refs == PLACES_KEPT


def test_the_last_name_removed_detaches_the_object(
    table: ObjectTable, tmp_path: Path, dropped: list[tuple[int, int]]
) -> None:
    node = two_links(table, tmp_path, b"f", b"g")
    root = root_dir(table)
    ident = node.obj.ident
    os.unlink(tmp_path / "g")
    table.gone(root, b"g", ident)
    assert table.objects[ident] is node.obj  # still has a name
    assert [name for _, name in node.obj.places] == [b"f"]
    os.unlink(tmp_path / "f")
    table.gone(root, b"f", ident)
    assert ident not in table.objects
    assert dropped == [ident]
    assert table.node(node.inode) is node  # the kernel still holds it
    touch(tmp_path, b"f")
    new, _ = table.node_at(root, b"f", b"f")
    assert new.obj is not node.obj
    assert new.inode != node.inode


def test_a_removed_directory_is_detached_at_once(
    table: ObjectTable, tmp_path: Path, dropped: list[tuple[int, int]]
) -> None:
    before = descriptors()
    (tmp_path / "d").mkdir()
    node = counted(table.node_at(root_dir(table), b"d", b"d")[0])
    ident = node.obj.ident
    os.rmdir(tmp_path / "d")
    table.gone(root_dir(table), b"d", ident)
    assert ident not in table.objects
    assert dropped == [ident]
    assert descriptors() == before + 1  # the kernel still holds it: its descriptor stays
    table.forget(node.inode, 1)
    assert descriptors() == before


def test_locate_forgets_places_changed_behind_its_back(
    table: ObjectTable, tmp_path: Path, dropped: list[tuple[int, int]]
) -> None:
    node = two_links(table, tmp_path, b"a", b"b")
    root = root_dir(table)
    obj = node.obj
    os.unlink(tmp_path / "b")
    found = table.locate(obj)
    assert found is not None
    assert found[:2] == (root, b"a")
    assert [name for _, name in obj.places] == [b"a"]
    held = os.open(tmp_path / "a", os.O_RDONLY)  # so that the new file cannot get its inode number
    try:
        os.unlink(tmp_path / "a")
        touch(tmp_path, b"a")  # another file under the old name is not the object
        assert table.locate(obj) is None
    finally:
        os.close(held)
    assert obj.places == []
    assert obj.ident not in table.objects
    assert dropped == [obj.ident]
    with raises_errno(errno.ENOENT):
        table.stat(obj)


def test_an_open_descriptor_outlives_the_last_name(
    table: ObjectTable, tmp_path: Path, dropped: list[tuple[int, int]]
) -> None:
    before = descriptors()
    (tmp_path / "f").write_bytes(b"12345")
    root = root_dir(table)
    node = counted(table.node_at(root, b"f", b"f")[0])
    obj = node.obj
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    table.opened(obj, fd)
    table.forget(node.inode, 1)
    assert table.objects[obj.ident] is obj  # open: still the object with that identity
    assert dropped == []
    node = counted(table.node_at(root, b"f", b"f")[0])
    assert node.obj is obj
    os.unlink(tmp_path / "f")
    table.gone(root, b"f", obj.ident)
    assert table.stat(obj).st_size == 5  # through the descriptor
    table.forget(node.inode, 1)
    assert obj.handles == {fd}
    assert os.fstat(fd).st_size == 5  # not closed: the table still needs it
    table.close_file(fd)
    assert obj.handles == set()
    assert descriptors() == before


def test_a_directory_handle_keeps_its_directory(
    table: ObjectTable, tmp_path: Path, dropped: list[tuple[int, int]]
) -> None:
    (tmp_path / "d").mkdir()
    node = counted(table.node_at(root_dir(table), b"d", b"d")[0])
    fh = table.open_dir_handle(node.obj, os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECTORY))
    table.forget(node.inode, 1)
    handle = table.dir_handle(fh)
    assert handle is not None
    assert handle.obj is node.obj
    assert node.obj.ident in table.objects
    assert dropped == []
    table.close_dir_handle(fh)
    assert table.dir_handle(fh) is None
    assert dropped == [node.obj.ident]
    table.close_dir_handle(fh)  # closing twice does nothing


def test_close_releases_every_descriptor(tmp_path: Path) -> None:
    from xstore.fuse.casefold_objects import ObjectTable  # type: ignore[attr-defined, unused-ignore]  # Linux only

    before = descriptors()
    objects = ObjectTable(os.fsencode(tmp_path), on_drop=lambda ident: None)
    for i in range(5):
        (tmp_path / f"d{i}").mkdir()
        touch(tmp_path / f"d{i}", b"f")
        d = counted(objects.node_at(objects.root.obj, b"d%d" % i, b"d%d" % i)[0])
        f = counted(objects.node_at(d.obj, b"f", b"f")[0])
        objects.opened(f.obj, os.open(tmp_path / f"d{i}" / "f", os.O_RDONLY))
        objects.open_dir_handle(d.obj, os.open(tmp_path / f"d{i}", os.O_RDONLY | os.O_DIRECTORY))
    assert descriptors() == before + 1 + 5 * 3
    objects.close()
    assert descriptors() == before
    assert objects.objects == {}
    assert objects.nodes == {}


# -- the object table: renames -----------------------------------------------------------------------------


def test_a_case_only_rename_makes_the_moved_node_canonical(table: ObjectTable, tmp_path: Path) -> None:
    """As the rename handler does for `a` -> `A` when `a` is stored: the alias node the kernel had for
    `A` is retired, and the node it moves (the canonical one) stays canonical under the new name."""
    touch(tmp_path, b"a")
    root = root_dir(table)
    canonical = counted(table.node_at(root, b"a", b"a")[0])
    alias = counted(table.node_at(root, b"a", b"A")[0])
    ident = canonical.obj.ident
    os.rename(tmp_path / "a", tmp_path / "A")
    table.retire(ident, b"A")
    table.moved(ident, root, b"a", b"a", root, b"A")
    assert [name for _, name in canonical.obj.places] == [b"A"]
    assert table.node_at(root, b"A", b"A")[0] is canonical
    again = table.node_at(root, b"A", b"a")[0]
    assert again not in (canonical, alias)  # the retired alias never comes back
    assert table.node(alias.inode) is alias  # until the kernel forgets it
    os.rename(tmp_path / "A", tmp_path / "a")  # back, behind the table's back
    assert table.node_at(root, b"a", b"A")[0] is not alias


def test_a_rename_through_an_alias_makes_that_node_canonical(table: ObjectTable, tmp_path: Path) -> None:
    """`X` (stored as `x`) renamed to `sub/y`: the kernel moved the node it had for `X`, which is now
    the entry as stored; the directories' references follow the place."""
    touch(tmp_path, b"x")
    (tmp_path / "sub").mkdir()
    root = root_dir(table)
    sub = counted(table.node_at(root, b"sub", b"sub")[0]).obj
    old_canonical = counted(table.node_at(root, b"x", b"x")[0])
    alias = counted(table.node_at(root, b"x", b"X")[0])
    refs = (root.refs, sub.refs)
    os.rename(tmp_path / "x", tmp_path / "sub" / "y")
    table.moved(alias.obj.ident, root, b"x", b"X", sub, b"y")
    assert alias.alias == b""
    assert table.node_at(sub, b"y", b"y")[0] is alias
    assert [(d, name) for d, name in alias.obj.places] == [(sub, b"y")]
    assert (root.refs, sub.refs) == (refs[0] - 1, refs[1] + 1)
    assert table.node(old_canonical.inode) is old_canonical  # still the kernel's, found no more


# -- the name index ----------------------------------------------------------------------------------------


def test_the_exact_spelling_needs_no_listing(directory: Dir, tmp_path: Path) -> None:
    touch(tmp_path, b"ReadMe")
    index = NameIndex(Fold.APFS)
    assert index.resolve(directory, b"ReadMe") == b"ReadMe"
    assert index.cached(directory.ident) is None
    assert index.resolve(directory, b"Other") is None
    assert index.cached(directory.ident) is not None


@pytest.mark.case_sensitive_tmp
@pytest.mark.parametrize("fold", [Fold.ASCII, Fold.APFS])
def test_other_spellings_resolve_to_the_stored_name(directory: Dir, tmp_path: Path, fold: Fold) -> None:
    touch(tmp_path, b"ReadMe")
    touch(tmp_path, b"other")
    index = NameIndex(fold)
    assert index.resolve(directory, b"README") == b"ReadMe"
    assert index.resolve(directory, b"readme") == b"ReadMe"
    assert index.resolve(directory, b"ReadMe.txt") is None
    assert index.require(directory, b"OTHER") == b"other"
    listing = index.cached(directory.ident)
    assert listing is not None
    assert listing.by_key == {fold_key(b"ReadMe", fold): [b"ReadMe"], fold_key(b"other", fold): [b"other"]}
    with raises_errno(errno.ENOENT):
        index.require(directory, b"missing")


@pytest.mark.case_sensitive_tmp
def test_apfs_folds_unicode_case_and_normalisation_ascii_does_not(directory: Dir, tmp_path: Path) -> None:
    stored = f"Caf{NFD_E}".encode()
    touch(tmp_path, stored)
    apfs, ascii_ = NameIndex(Fold.APFS), NameIndex(Fold.ASCII)
    for spelling in (f"caf{NFC_E}", f"CAF{NFC_E.upper()}", f"CAF{NFD_E.upper()}", f"cAf{NFD_E}"):
        assert apfs.resolve(directory, spelling.encode()) == stored, spelling
    assert ascii_.resolve(directory, f"caf{NFC_E}".encode()) is None
    assert ascii_.resolve(directory, f"CAF{NFC_E.upper()}".encode()) is None
    assert ascii_.resolve(directory, f"cAf{NFD_E}".encode()) == stored


@pytest.mark.case_sensitive_tmp
def test_a_taken_key_refuses_a_new_name_with_eexist(directory: Dir, tmp_path: Path) -> None:
    touch(tmp_path, f"caf{NFC_E}".encode())
    touch(tmp_path, b"ReadMe")
    index = NameIndex(Fold.APFS)
    for taken in (b"ReadMe", b"README", f"CAF{NFD_E.upper()}".encode()):
        with raises_errno(errno.EEXIST):
            index.require_free(directory, taken)
    index.require_free(directory, b"ReadMe2")
    NameIndex(Fold.ASCII).require_free(directory, f"CAF{NFC_E.upper()}".encode())


@pytest.mark.case_sensitive_tmp
def test_names_not_utf8_under_apfs_and_ascii(directory: Dir, tmp_path: Path) -> None:
    apfs, ascii_ = NameIndex(Fold.APFS), NameIndex(Fold.ASCII)
    with raises_errno(errno.EILSEQ):
        apfs.check_new_name(b"caf\xe9")
    with raises_errno(errno.EILSEQ):
        apfs.require_free(directory, b"\xff")
    with raises_errno(errno.EILSEQ):
        apfs.resolve(directory, b"\xffA")
    ascii_.check_new_name(b"caf\xe9")
    touch(tmp_path, b"\xffA")  # the backing directory may hold one already
    assert apfs.resolve(directory, b"\xffA") == b"\xffA"  # reachable by its exact spelling
    with raises_errno(errno.EILSEQ):
        apfs.resolve(directory, b"\xffa")
    assert ascii_.resolve(directory, b"\xffa") == b"\xffA"
    with raises_errno(errno.EEXIST):
        ascii_.require_free(directory, b"\xffa")


@pytest.mark.case_sensitive_tmp
def test_of_several_stored_spellings_the_smallest_wins(directory: Dir, tmp_path: Path) -> None:
    for name in (b"ab", b"Ab", b"AB"):  # written to the backing directory directly
        touch(tmp_path, name)
    index = NameIndex(Fold.ASCII)
    assert index.resolve(directory, b"aB") == b"AB"
    assert index.resolve(directory, b"ab") == b"ab"
    os.unlink(tmp_path / "AB")
    assert index.resolve(directory, b"aB") == b"Ab"


# -- the name index: the cached listings -------------------------------------------------------------------


@pytest.mark.case_sensitive_tmp
def test_a_listing_is_trusted_while_the_mtime_stands_and_read_again_when_it_moves(
    directory: Dir, tmp_path: Path
) -> None:
    index = NameIndex(Fold.APFS)
    set_mtime(tmp_path, OLD_MTIME_NS)
    assert index.resolve(directory, b"readme") is None
    touch(tmp_path, b"ReadMe")  # behind the index's back
    set_mtime(tmp_path, OLD_MTIME_NS)
    assert index.resolve(directory, b"readme") is None  # the cached listing, as the mtime says
    set_mtime(tmp_path, OLD_MTIME_NS + 1)
    assert index.resolve(directory, b"readme") == b"ReadMe"


@pytest.mark.case_sensitive_tmp
def test_a_change_behind_its_back_moves_the_mtime(directory: Dir, tmp_path: Path) -> None:
    index = NameIndex(Fold.APFS)
    set_mtime(tmp_path, OLD_MTIME_NS)
    assert index.resolve(directory, b"readme") is None
    touch(tmp_path, b"ReadMe")
    assert index.resolve(directory, b"readme") == b"ReadMe"


@pytest.mark.case_sensitive_tmp
def test_a_name_gone_from_a_trusted_listing_makes_it_read_again(directory: Dir, tmp_path: Path) -> None:
    touch(tmp_path, b"ReadMe")
    set_mtime(tmp_path, OLD_MTIME_NS)
    index = NameIndex(Fold.APFS)
    assert index.resolve(directory, b"readme") == b"ReadMe"
    os.rename(tmp_path / "ReadMe", tmp_path / "README")
    set_mtime(tmp_path, OLD_MTIME_NS)
    assert index.resolve(directory, b"readme") == b"README"
    listing = index.cached(directory.ident)
    assert listing is not None
    assert listing.by_key == {b"readme": [b"README"]}


@pytest.mark.case_sensitive_tmp
def test_noted_keeps_a_cached_listing_in_step(directory: Dir, tmp_path: Path) -> None:
    index = NameIndex(Fold.APFS)
    index.noted(directory, added=b"nothing")  # no listing cached: nothing to do
    assert index.cached(directory.ident) is None
    listing = index.listing(directory)
    touch(tmp_path, b"ReadMe")
    index.noted(directory, added=b"ReadMe")
    assert listing.stamp == os.stat(tmp_path).st_mtime_ns
    assert index.listing(directory) is listing  # not read again
    assert listing.by_key == {b"readme": [b"ReadMe"]}
    os.rename(tmp_path / "ReadMe", tmp_path / "README")
    index.noted(directory, removed=b"ReadMe", added=b"README")
    assert index.listing(directory) is listing
    assert listing.by_key == {b"readme": [b"README"]}
    os.unlink(tmp_path / "README")
    index.noted(directory, removed=b"README")
    assert index.listing(directory) is listing
    assert listing.by_key == {}


def test_listings_kept_are_bounded_least_recently_used_first(tmp_path: Path) -> None:
    dirs = []
    try:
        for i in range(LISTINGS_KEPT + 1):
            path = tmp_path / f"d{i}"
            path.mkdir()
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            st = os.fstat(fd)
            dirs.append(Dir((st.st_dev, st.st_ino), fd))
        index = NameIndex(Fold.ASCII)
        for d in dirs[:LISTINGS_KEPT]:
            index.listing(d)
        index.listing(dirs[0])  # used again: now the most recent
        index.listing(dirs[LISTINGS_KEPT])
        assert index.cached(dirs[0].ident) is not None
        assert index.cached(dirs[1].ident) is None
        assert all(index.cached(d.ident) is not None for d in dirs[2:])
        index.forget(dirs[2].ident)
        assert index.cached(dirs[2].ident) is None
    finally:
        for d in dirs:
            assert d.fd is not None
            os.close(d.fd)


# -- both tables, as the handlers use them -----------------------------------------------------------------


@pytest.mark.case_sensitive_tmp
def test_lookups_of_spellings_through_both_tables(tmp_path: Path, dropped: list[tuple[int, int]]) -> None:
    from xstore.fuse.casefold_objects import (  # type: ignore[attr-defined, unused-ignore]  # Linux only
        ROOT_INODE,
        ObjectTable,
    )

    index = NameIndex(Fold.APFS)

    def on_drop(ident: tuple[int, int]) -> None:
        dropped.append(ident)
        index.forget(ident)

    objects = ObjectTable(os.fsencode(tmp_path), on_drop=on_drop)
    try:
        (tmp_path / "Docs").mkdir()
        touch(tmp_path / "Docs", f"Caf{NFD_E}".encode())
        docs = lookup(objects, index, ROOT_INODE, b"docs")  # an alias of the directory
        assert docs.alias == b"docs"
        canonical = lookup(objects, index, docs.inode, f"Caf{NFD_E}".encode())
        via_alias_dir = lookup(objects, index, docs.inode, f"CAF{NFC_E.upper()}".encode())
        assert canonical.obj is via_alias_dir.obj
        assert canonical.inode != via_alias_dir.inode
        assert lookup(objects, index, ROOT_INODE, b"Docs").obj is docs.obj
        assert index.cached(docs.obj.ident) is not None
        with raises_errno(errno.ENOENT):
            lookup(objects, index, docs.inode, b"missing")
        # The directory goes: its cached listing goes with it.
        for name in os.listdir(tmp_path / "Docs"):
            os.unlink(tmp_path / "Docs" / name)
        os.rmdir(tmp_path / "Docs")
        objects.gone(objects.root.obj, b"Docs", docs.obj.ident)
        assert docs.obj.ident in dropped
        assert index.cached(docs.obj.ident) is None
    finally:
        objects.close()
