"""The casefold layer's kernel cache: what the kernel may keep of the layer, and what to tell it when a
change through one spelling makes something it keeps under another spelling untrue.

The kernel caches dentries (a parent inode and a name, leading to an inode) for `entry_timeout` seconds
and attributes per inode for `attr_timeout` seconds; the layer sets both above 0 when it can keep them
honest, and answers every change that the kernel cannot see for itself:

- Dentries. The kernel updates the dentry a request names (a removed name, a renamed one, a new one) but
  knows nothing of the others that lead to the same stored name: `FOO` and `foo` are two dentries, and
  so are `dir/x` and `DIR/x` (the directory reached through two spellings is two inodes, see
  `casefold.py`). So the layer records every dentry it hands out other than "the canonical node of the
  directory + the stored spelling" (lookups of other spellings, anything under a directory reached
  through one), as the pair (directory, fold key). A removal or rename of a name then makes other
  dentries stale when it came through another spelling or another node of the directory, or when its
  key is recorded; the layer then increments the connection's epoch (`notify.Notifier.increment_epoch`),
  after which the kernel looks every dentry up again at its next use, and forgets the records. Negative
  dentries need nothing: the layer answers a missing name with ENOENT, which the kernel never caches.
  Creating a name never makes a dentry stale (there was none for its key), and in the common case (one
  spelling per name, as an import or a build uses) nothing is recorded and the epoch never moves. The
  records are bounded (`RECORDS_KEPT`): past that the epoch is incremented and they start again.
- Attributes. A change to an object (its contents, size, mode, times, links, extended attributes) or to
  a directory's entries changes the attributes of every node of it; the kernel updates those of the node
  the request came through, and the layer marks those of the others stale
  (`notify.Notifier.invalidate_attributes`, which is safe from a handler). When the kernel next checks
  them it also drops the cached pages of a file whose mtime or size moved.

Without a kernel to tell (`notify.NullNotifier`), or with `timeout` 0, the kernel caches nothing, as
before. On a kernel without the epoch notification (before Linux 6.16) attributes are cached and
dentries are not. Changes made to the backing directory directly, not through the layer, show after the
timeout. The module knows no pyfuse3; it is not thread-safe (see `casefold.py`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from xstore.casehack import Fold, fold_key
from xstore.fuse.notify import Notifier

if TYPE_CHECKING:
    from xstore.fuse.casefold_objects import (  # type: ignore[attr-defined, unused-ignore]  # Linux only
        BackingObject,
        Ident,
        Node,
        ObjectTable,
    )

log = logging.getLogger("xstore.fuse")

__all__ = ["DEFAULT_TIMEOUT", "RECORDS_KEPT", "KernelCache"]

DEFAULT_TIMEOUT: Final = 10.0  # seconds the kernel may keep dentries and attributes
RECORDS_KEPT: Final = 4096  # (directory, key) pairs with dentries of other spellings, at most


class KernelCache:
    """The kernel's caches of one casefold mount, kept honest through `notifier` (see the module
    docstring). `timeout` is the most the kernel may keep anything; 0 turns caching off."""

    def __init__(self, table: ObjectTable, model: Fold, notifier: Notifier, timeout: float) -> None:
        self._table = table
        self._model = model
        self.notifier = notifier
        self.attr_timeout = timeout if notifier.mounted else 0.0
        self.entry_timeout = self.attr_timeout if notifier.epoch else 0.0
        self._others: set[tuple[Ident, bytes]] = set()  # (directory, key): dentries of other spellings
        self.epochs = 0  # epoch increments sent (for tests and the log)

    # -- dentries ------------------------------------------------------------------------------------

    def _key(self, stored: bytes) -> bytes:
        return fold_key(stored, self._model)

    def handed(self, directory: BackingObject, parent: Node, spelling: bytes, stored: bytes) -> None:
        """The kernel now has a dentry `spelling` under `parent` (a node of `directory`) for the entry
        stored as `stored`."""
        if not self.entry_timeout or (spelling == stored and self._table.is_canonical(parent)):
            return
        if len(self._others) >= RECORDS_KEPT:
            self.increment_epoch()
        self._others.add((directory.ident, self._key(stored)))

    def name_changed(self, directory: BackingObject, parent: Node, spelling: bytes, stored: bytes) -> None:
        """The entry stored as `stored` in `directory` was removed, renamed or replaced by a request
        that named it `spelling` under `parent`: make every other dentry for it stale."""
        if not self.entry_timeout:
            return
        if (
            spelling != stored
            or not self._table.is_canonical(parent)
            or (self._others and (directory.ident, self._key(stored)) in self._others)
        ):
            self.increment_epoch()

    def increment_epoch(self) -> None:
        self.notifier.increment_epoch()
        self._others.clear()
        self.epochs += 1

    # -- attributes ----------------------------------------------------------------------------------

    def changed(self, obj: BackingObject, *but: Node | None) -> None:
        """The attributes of `obj` changed through a request on the nodes `but` (which the kernel
        updates itself): mark those of its other nodes stale."""
        if not self.attr_timeout:
            return
        for node in obj.nodes.values():
            if node.lookups > 0 and node not in but:
                self.notifier.invalidate_attributes(node.inode)
        for node in obj.retired or ():
            if node.lookups > 0 and node not in but:
                self.notifier.invalidate_attributes(node.inode)
