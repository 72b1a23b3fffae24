"""The casefold layer's kernel-cache policy (`xstore.fuse.casefold_cache.KernelCache`), driven directly
with a recording notifier and a real object table: which changes increment the connection's epoch (the
dentries the kernel may hold under other spellings), which inodes get their attributes invalidated (every
node of the changed object but the ones the request came through), and that nothing is cached or sent
without a mount. What a mount shows is tested in tests/integration/test_casefold_kernel_cache.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from xstore.casehack import Fold
from xstore.fuse.notify import NullNotifier

if TYPE_CHECKING:
    from xstore.fuse.casefold_cache import KernelCache
    from xstore.fuse.casefold_objects import (  # type: ignore[attr-defined, unused-ignore]  # Linux only
        BackingObject,
        Node,
        ObjectTable,
    )

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the casefold layer runs on Linux only (O_PATH descriptors)"
)


@dataclass
class Recorder:
    """A notifier that records what it would tell the kernel."""

    epoch: bool = True
    mounted: bool = True
    epochs: int = 0
    invalidated: list[int] = field(default_factory=list)

    def invalidate_attributes(self, inode: int) -> None:
        self.invalidated.append(inode)

    def increment_epoch(self) -> None:
        self.epochs += 1

    def store(self, inode: int, data: bytes) -> bool:
        return True


@pytest.fixture
def table(tmp_path: Path) -> Iterator[ObjectTable]:
    from xstore.fuse.casefold_objects import ObjectTable  # type: ignore[attr-defined, unused-ignore]  # Linux only

    objects = ObjectTable(os.fsencode(tmp_path), on_drop=lambda ident: None)
    yield objects
    objects.close()


def make_cache(table: ObjectTable, notifier: Recorder | NullNotifier, timeout: float = 10.0) -> KernelCache:
    from xstore.fuse.casefold_cache import KernelCache

    return KernelCache(table, Fold.APFS, notifier, timeout)


def known(table: ObjectTable, directory: BackingObject, stored: bytes, spelling: bytes) -> Node:
    """The node `spelling` reaches for the entry stored as `stored`, counted as the kernel's."""
    node = table.node_at(directory, stored, spelling)[0]
    node.lookups += 1
    return node


def touch(path: Path) -> None:
    path.write_bytes(b"")


def test_one_spelling_per_name_never_moves_the_epoch(table: ObjectTable, tmp_path: Path) -> None:
    """A tree built and walked through the stored spellings and the canonical directory nodes (an
    import, a build, a grep): nothing is recorded, and removals and renames leave the epoch alone."""
    recorder = Recorder()
    cache = make_cache(table, recorder)
    root = table.root.obj
    for name in (b"a", b"b"):
        touch(tmp_path / name.decode())
        known(table, root, name, name)
        cache.handed(root, table.root, name, name)
    cache.name_changed(root, table.root, b"a", b"a")
    cache.name_changed(root, table.root, b"b", b"b")
    assert recorder.epochs == 0
    assert (cache.entry_timeout, cache.attr_timeout) == (10.0, 10.0)


def test_a_change_through_another_spelling_moves_the_epoch(table: ObjectTable, tmp_path: Path) -> None:
    recorder = Recorder()
    cache = make_cache(table, recorder)
    root = table.root.obj
    touch(tmp_path / "foo")
    cache.name_changed(root, table.root, b"FOO", b"foo")  # `rm FOO`: the kernel may hold `foo`
    assert recorder.epochs == 1


def test_a_change_through_another_node_of_the_directory_moves_the_epoch(
    table: ObjectTable, tmp_path: Path
) -> None:
    """`DIR/x` removed while `dir` is stored: the kernel may hold `dir/x`, a dentry under another node."""
    recorder = Recorder()
    cache = make_cache(table, recorder)
    (tmp_path / "dir").mkdir()
    alias_dir = known(table, table.root.obj, b"dir", b"DIR")
    assert not table.is_canonical(alias_dir)
    cache.name_changed(alias_dir.obj, alias_dir, b"x", b"x")
    assert recorder.epochs == 1


def test_other_spellings_handed_out_are_remembered_until_the_epoch_moves(
    table: ObjectTable, tmp_path: Path
) -> None:
    """`stat FOO` then `rm foo`: the removal comes through the stored spelling, but the kernel holds a
    dentry for `FOO`, so the epoch moves; after that, nothing is remembered any more."""
    recorder = Recorder()
    cache = make_cache(table, recorder)
    root = table.root.obj
    touch(tmp_path / "foo")
    touch(tmp_path / "bar")
    cache.handed(root, table.root, b"FOO", b"foo")
    cache.handed(root, table.root, b"bar", b"bar")
    cache.name_changed(root, table.root, b"bar", b"bar")  # another key: nothing to do
    assert recorder.epochs == 0
    cache.name_changed(root, table.root, b"foo", b"foo")
    assert recorder.epochs == 1
    cache.name_changed(root, table.root, b"foo", b"foo")  # the records went with the epoch
    assert recorder.epochs == 1


def test_records_are_bounded(table: ObjectTable, tmp_path: Path) -> None:
    from xstore.fuse.casefold_cache import RECORDS_KEPT

    recorder = Recorder()
    cache = make_cache(table, recorder)
    root = table.root.obj
    for i in range(RECORDS_KEPT + 1):
        cache.handed(root, table.root, b"N%d" % i, b"n%d" % i)
    assert recorder.epochs == 1  # the first record past the bound started them again


def test_attributes_of_the_other_nodes_are_invalidated(table: ObjectTable, tmp_path: Path) -> None:
    """A write through `foo`: the kernel updates the node it wrote through; `FOO`'s and `Foo`'s
    attributes are stale, and a node the kernel has forgotten is not mentioned."""
    recorder = Recorder()
    cache = make_cache(table, recorder)
    root = table.root.obj
    touch(tmp_path / "foo")
    canonical = known(table, root, b"foo", b"foo")
    upper = known(table, root, b"foo", b"FOO")
    title = known(table, root, b"foo", b"Foo")
    forgotten = table.node_at(root, b"foo", b"fOO")[0]  # never counted: the kernel does not hold it
    cache.changed(canonical.obj, canonical)
    assert sorted(recorder.invalidated) == sorted([upper.inode, title.inode])
    assert forgotten.inode not in recorder.invalidated
    recorder.invalidated.clear()
    cache.changed(canonical.obj)  # no request node: every node the kernel holds
    assert sorted(recorder.invalidated) == sorted([canonical.inode, upper.inode, title.inode])


def test_retired_nodes_are_invalidated_too(table: ObjectTable, tmp_path: Path) -> None:
    """After `mv FOO bar` (stored `foo`), the old canonical node is retired but still the kernel's (a
    process may have the file open through it): it must hear of later changes."""
    recorder = Recorder()
    cache = make_cache(table, recorder)
    root = table.root.obj
    touch(tmp_path / "foo")
    old = known(table, root, b"foo", b"foo")
    moved = known(table, root, b"foo", b"FOO")
    os.rename(tmp_path / "foo", tmp_path / "bar")
    table.moved(old.obj.ident, root, b"foo", b"FOO", root, b"bar")
    assert table.is_canonical(moved)
    assert not table.is_canonical(old)
    cache.changed(moved.obj, moved)
    assert recorder.invalidated == [old.inode]


def test_a_lone_node_costs_no_notification(table: ObjectTable, tmp_path: Path) -> None:
    recorder = Recorder()
    cache = make_cache(table, recorder)
    touch(tmp_path / "f")
    node = known(table, table.root.obj, b"f", b"f")
    cache.changed(node.obj, node)
    assert recorder.invalidated == []


def test_without_a_mount_nothing_is_cached_or_sent(table: ObjectTable, tmp_path: Path) -> None:
    cache = make_cache(table, NullNotifier())
    assert (cache.entry_timeout, cache.attr_timeout) == (0.0, 0.0)
    touch(tmp_path / "foo")
    cache.handed(table.root.obj, table.root, b"FOO", b"foo")
    cache.name_changed(table.root.obj, table.root, b"FOO", b"foo")
    assert cache.epochs == 0


def test_without_the_epoch_notification_names_are_not_cached(table: ObjectTable) -> None:
    """A kernel before 6.16: attributes can still be invalidated, dentries could not be; so the kernel
    gets no entry lifetime at all, and nothing needs the epoch."""
    recorder = Recorder(epoch=False)
    cache = make_cache(table, recorder)
    assert (cache.entry_timeout, cache.attr_timeout) == (0.0, 10.0)
    cache.name_changed(table.root.obj, table.root, b"FOO", b"foo")
    assert recorder.epochs == 0


def test_timeout_zero_turns_caching_off(table: ObjectTable, tmp_path: Path) -> None:
    recorder = Recorder()
    cache = make_cache(table, recorder, timeout=0.0)
    assert (cache.entry_timeout, cache.attr_timeout) == (0.0, 0.0)
    touch(tmp_path / "foo")
    a = known(table, table.root.obj, b"foo", b"foo")
    known(table, table.root.obj, b"foo", b"FOO")
    cache.changed(a.obj, a)
    cache.name_changed(table.root.obj, table.root, b"FOO", b"foo")
    assert (recorder.epochs, recorder.invalidated) == (0, [])
