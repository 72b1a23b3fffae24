"""NAR -> filesystem tree: the tree writer and the blocking restore driver.

`TreeWriter` consumes parser events and creates the tree; it is shared by the blocking driver here, the
trio driver and the store import. Its safety rules:

- Everything is created relative to a directory file descriptor, by a single name component that the
  parser has already checked, with `O_EXCL`/`O_NOFOLLOW`: nothing outside the destination is ever
  created, followed or overwritten, and a symlink in the archive is created, never written through.
- The tree is built inside a fresh private directory next to the destination (`.NAME.xstore-<random>`) and
  moved into place only when the archive was complete and valid. A refused or interrupted restore
  removes that directory; the destination never exists half-written.
- Modes are exactly 0644/0755 for files and 0755 for directories, whatever the umask.
- A large file is preallocated in steps as its data arrives, never all at once from the size the
  archive claims: a hostile archive declaring 2^64-1 bytes cannot fill the disk up front.

Names go through the case hack (`casehack.CaseHackNames`) when it is on. Nix: archive.cc `RestoreSink`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable

from xstore.casehack import CaseHackMode, CaseHackNames, Fold, FsCaseBehaviour, probe, resolve_restore_mode
from xstore.errors import (
    CaseHackError,
    DestinationExistsError,
    RestoreError,
    TrailingDataError,
    TruncatedError,
    XstoreError,
)
from xstore.fsops import CANONICAL_MTIME_NS, copy_range, hold, remove_dead_staging, remove_tree, staging_name
from xstore.nar.drive import iter_events
from xstore.nar.events import (
    ArchiveEnd,
    DirectoryEnd,
    DirectoryStart,
    Event,
    FileChunk,
    FileEnd,
    RegularFile,
    Symlink,
    WholeFile,
)
from xstore.nar.parser import NarParser
from xstore.nar.rules import show
from xstore.records import Record

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Final

CHUNK: Final = 1 << 20
PREALLOCATE_STEP: Final = 64 << 20  # reserve disk space this far ahead of the data written
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT_NAME: Final = b"root"

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]

# posix_fallocate does not exist on macOS: there, files grow as they are written.
_fallocate: Callable[[int, int, int], None] | None = getattr(os, "posix_fallocate", None)


class RestoreResult(Record):
    """What a restore did: the archive's size, whether the case hack was applied and with which fold,
    how many names it renamed, and the probe result when `auto` asked the filesystem."""

    __slots__ = ("nar_size", "case_hack", "fold", "renamed", "probed")  # noqa: RUF023 (the fields' order)

    def __init__(
        self, nar_size: int, case_hack: bool, fold: Fold, renamed: int, probed: FsCaseBehaviour | None
    ) -> None:
        self.nar_size: Final = nar_size
        self.case_hack: Final = case_hack
        self.fold: Final = fold
        self.renamed: Final = renamed
        self.probed: Final = probed


class _Dir:
    __slots__ = ("fd", "names", "shown")

    def __init__(self, fd: int, names: CaseHackNames | None, shown: bytes) -> None:
        self.fd = fd
        self.names = names
        self.shown = shown


class TreeWriter:
    """Creates the tree described by a stream of NAR events at `dest`, atomically.

    Call `handle(event)` for each event in order, then `commit()` once the archive has ended, or
    `abort()` on any failure (safe to call more than once, and after `commit`). With `staging` off, the
    tree is built in place at `dest`, whose directory the caller keeps private (the store's scratch
    directory); `abort` then removes it. With `canonical`, every node is left as a store keeps it
    (`fsops.canonicalise`: read-only, mtime 1) as soon as it is complete, by its open descriptor,
    except the root when it is a directory: moving a directory to another parent needs write
    permission on it, so the caller moves it first and then canonicalises that one entry. Raises
    `DestinationExistsError` at construction if `dest` exists, `RestoreError` for filesystem
    failures, `CaseHackError` for names the case hack cannot separate. `parent_fd` (staging off): an
    open descriptor of `dest`'s directory, which the caller keeps (the writer works on a duplicate),
    `dest` then being a fresh absolute name there, not looked up. `root_is_directory` says, once the
    root's event has passed, whether the root is a directory.
    """

    def __init__(
        self,
        dest: PathArg,
        *,
        case_hack: CaseHackMode = CaseHackMode.AUTO,
        fold: Fold | None = None,
        staging: bool = True,
        canonical: bool = False,
        parent_fd: int = -1,
        modes_kept: bool | None = None,
    ) -> None:
        if parent_fd >= 0:
            # The caller's private directory, open already, and a fresh name in it (a store's scratch
            # directory): neither looked up again.
            assert not staging
            self.dest = os.fsencode(dest)
            parent, self._name = os.path.split(self.dest)
            self._parent_fd = os.dup(parent_fd)
        else:
            self.dest = os.path.abspath(os.fsencode(dest))
            parent, self._name = os.path.split(self.dest)
            if not self._name:
                raise RestoreError(f"cannot restore to '{os.fsdecode(self.dest)}'")
            if os.path.lexists(self.dest):
                raise DestinationExistsError(
                    f"'{os.fsdecode(self.dest)}' already exists; xstore never overwrites"
                )
            try:
                self._parent_fd = os.open(parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
            except OSError as e:
                raise RestoreError(f"cannot open '{os.fsdecode(parent)}': {e.strerror}") from e
        self._stack: list[_Dir] = []
        self._file_fd = -1
        self._renamed = 0
        self._preallocate = _fallocate is not None
        self._staged = staging
        self._canonical = canonical
        self._times = (time.time_ns(), CANONICAL_MTIME_NS)  # atime now, as a file just made has
        self._committed = False
        self._linked = False  # staged: the root has been linked or renamed to `dest`
        self.root_is_directory = False
        if not staging:
            # The caller's directory is private already (the store's scratch directory): the tree is
            # built in place, and `abort` removes it.
            self._staging = b""
            self._staging_fd = -1
            self._root_fd, self._root_name = self._parent_fd, self._name
            self._init_modes(modes_kept)
            self._set_mode(case_hack, fold, parent)
            return
        with contextlib.suppress(OSError):
            remove_dead_staging(self._parent_fd)  # what killed restores left here
        self._staging = staging_name(self._name)
        try:
            os.mkdir(self._staging, 0o700, dir_fd=self._parent_fd)
        except OSError as e:
            os.close(self._parent_fd)
            raise RestoreError(
                f"cannot create a staging directory in '{os.fsdecode(parent)}': {e.strerror}"
            ) from e
        try:
            self._staging_fd = os.open(self._staging, _DIR_FLAGS, dir_fd=self._parent_fd)
            hold(self._staging_fd)  # alive while this restore runs: later ones leave it alone
        except OSError as e:
            with contextlib.suppress(OSError):
                os.rmdir(self._staging, dir_fd=self._parent_fd)
            os.close(self._parent_fd)
            raise RestoreError(
                f"cannot create a staging directory in '{os.fsdecode(parent)}': {e.strerror}"
            ) from e
        self._root_fd, self._root_name = self._staging_fd, _ROOT_NAME
        self._init_modes(modes_kept)
        try:
            self._set_mode(case_hack, fold, self._staging_path())
        except BaseException:
            self.abort()
            raise

    def _init_modes(self, modes_kept: bool | None) -> None:
        """How modes are set. A file or directory is created with its mode; `_fix_modes`: set it again
        after, as the umask or a default ACL may have taken bits (see `creation_keeps_modes`, which
        `modes_kept` answers for the caller when it knows already). `_final_modes` (canonical, and
        modes kept): a file is created with the mode a store keeps it in (0444 or 0555, open for
        writing all the same), which saves the `fchmod` when it is complete: one system call per file,
        and on a FUSE layer one request of the eight a file costs there. Without `modes_kept`, a
        canonical writer does not ask (the question costs more than the calls it saves on a small
        path) and sets every mode itself."""
        if modes_kept is None:
            modes_kept = False if self._canonical else creation_keeps_modes(self._root_fd)
        self._fix_modes = not self._canonical and not modes_kept
        self._final_modes = self._canonical and modes_kept

    def _set_mode(self, case_hack: CaseHackMode, fold: Fold | None, where: bytes) -> None:
        self.probed = probe(where) if case_hack is CaseHackMode.AUTO else None
        if case_hack is CaseHackMode.AUTO and fold is None and self.probed is not None:
            fold = self.probed.fold
        self.case_hack, self.fold = resolve_restore_mode(case_hack, fold, self.probed)

    def _staging_path(self) -> bytes:
        return os.path.join(os.path.dirname(self.dest), self._staging)

    # -- events ---------------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        kind = type(event)
        if kind is WholeFile:
            assert isinstance(event, WholeFile)
            self._whole_file(event)
        elif kind is FileChunk:
            assert isinstance(event, FileChunk)
            self._write(event.data)
        elif kind is RegularFile:
            assert isinstance(event, RegularFile)
            mode = 0o755 if event.executable else 0o644
            self._file_fd = self._new_file(event.path, mode)
            self._file_mode = mode
            self._file_size = event.size
            self._written = 0
            self._allocated = 0
        elif kind is FileEnd:
            fd, self._file_fd = self._file_fd, -1
            self._close_file(fd, self._file_mode)
        elif kind is DirectoryStart:
            assert isinstance(event, DirectoryStart)
            name, where = self._place(event.path)
            try:
                os.mkdir(name, 0o755, dir_fd=where.fd)
            except OSError as e:
                raise self._create_error(e, where, name) from e
            fd = os.open(name, _DIR_FLAGS, dir_fd=where.fd)
            if not event.path:
                self.root_is_directory = True
            shown = where.shown + b"/" + name if self._stack else b""
            self._stack.append(_Dir(fd, CaseHackNames(self.fold) if self.case_hack else None, shown))
            # (A store's umask may not even leave it writable, unless its modes are known kept.)
            if self._fix_modes or (self._canonical and not self._final_modes):
                os.fchmod(fd, 0o755)  # after the push, so that abort() closes fd if this fails
        elif kind is DirectoryEnd:
            fd = self._stack.pop().fd
            try:
                if self._canonical and self._stack:
                    os.fchmod(fd, 0o555)
                    os.utime(fd, ns=self._times)
            finally:
                os.close(fd)
        elif kind is Symlink:
            assert isinstance(event, Symlink)
            name, where = self._place(event.path)
            try:
                os.symlink(event.target, name, dir_fd=where.fd)
            except OSError as e:
                raise self._create_error(e, where, name) from e
            if self._canonical:
                os.utime(name, ns=self._times, dir_fd=where.fd, follow_symlinks=False)
        elif kind is ArchiveEnd:
            pass
        else:
            raise TypeError(f"not a NAR event: {event!r}")

    def _new_file(self, path: tuple[bytes, ...], mode: int) -> int:
        """Create the regular file at `path` with `mode` (exactly: see `_fix_modes`), open for writing."""
        name, where = self._place(path)
        try:
            fd = os.open(name, _NEW_FILE_FLAGS, mode & 0o555 if self._final_modes else mode, dir_fd=where.fd)
        except OSError as e:
            raise self._create_error(e, where, name) from e
        if self._fix_modes:
            try:
                os.fchmod(fd, mode)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def _whole_file(self, event: WholeFile) -> None:
        """A small file in one step: what `RegularFile`, `FileChunk` and `FileEnd` do in three."""
        mode = 0o755 if event.executable else 0o644
        fd = self._new_file(event.path, mode)
        try:
            _write_all(fd, event.data)
        except BaseException:
            os.close(fd)
            raise
        self._close_file(fd, mode)

    def _close_file(self, fd: int, mode: int) -> None:
        """Close a finished file, made as a store keeps it first when `canonical`."""
        try:
            if self._canonical:
                if not self._final_modes:
                    os.fchmod(fd, mode & 0o555)
                os.utime(fd, ns=self._times)
        finally:
            os.close(fd)

    def _place(self, path: tuple[bytes, ...]) -> tuple[bytes, _Dir]:
        """The on-disk name for the node at `path` and the directory it goes in."""
        if not path:
            return self._root_name, _Dir(self._root_fd, None, b"")
        where = self._stack[-1]
        name = path[-1]
        if where.names is not None:
            try:
                disk = where.names.disk_name(name)
            except CaseHackError as e:
                raise CaseHackError(f"{e} (in /{show(b'/'.join(path[:-1]), 4096)})", **e.context) from None
            if disk is not name:
                self._renamed += 1
            return disk, where
        return name, where

    def _create_error(self, e: OSError, where: _Dir, name: bytes) -> RestoreError:
        """The error for a node that could not be created as `name` in `where`."""
        if isinstance(e, FileExistsError):
            shown = os.fsdecode(where.shown + b"/" + name) if name != self._root_name or self._stack else "/"
            hint = (
                "the destination filesystem folds case or normalisation; use --case-hack on"
                + (" --case-fold apfs" if self.case_hack else "")
                if self.fold is Fold.ASCII or not self.case_hack
                else "unexpected name collision"
            )
            return RestoreError(f"cannot create '{shown}': it already exists ({hint})", errno=e.errno)
        shown = os.fsdecode(where.shown + b"/" + name)
        return RestoreError(f"cannot create '{shown}': {e.strerror}", errno=e.errno)

    def _write(self, data: bytes) -> None:
        fd = self._file_fd
        end = self._written + len(data)
        if end > self._allocated and self._preallocate and _fallocate is not None and self._file_size > CHUNK:
            target = min(self._file_size, end + PREALLOCATE_STEP)
            try:
                _fallocate(fd, self._allocated, target - self._allocated)
                self._allocated = target
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise RestoreError(
                        f"cannot allocate space for a file: {e.strerror}", errno=e.errno
                    ) from e
                self._preallocate = False
        _write_all(fd, data)
        self._written = end

    def copy_from(self, src_fd: int, count: int) -> int:
        """Move the next `count` bytes of the current file's contents from `src_fd` into it, in the
        kernel where possible (`fsops.copy_range`); returns how many arrived (fewer: the source ended).
        No space is reserved ahead: these bytes are written only as they arrive."""
        try:
            copied = copy_range(src_fd, self._file_fd, count)
        except OSError as e:
            raise RestoreError(f"cannot write a file: {e.strerror}", errno=e.errno) from e
        self._written += copied
        return copied

    # -- the end ----------------------------------------------------------------------------------------

    def commit(self) -> None:
        """Move the finished tree to `dest`. Raises `DestinationExistsError` if `dest` appeared."""
        if self._stack or self._file_fd >= 0:
            raise RestoreError("the archive is not complete")
        if not self._staged:
            self._close_descriptors()  # built in place: the caller moves it, then calls `moved()`
            return
        try:
            if os.path.lexists(self.dest):
                raise DestinationExistsError(
                    f"'{os.fsdecode(self.dest)}' appeared during the restore; xstore never overwrites"
                )
            st = os.stat(_ROOT_NAME, dir_fd=self._staging_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                # A directory cannot be linked. rename() fails on a non-empty directory or a
                # non-directory, but would replace an empty directory created since the check above:
                # that narrow race is the one place an (empty) directory could be replaced.
                self._rename_root()
            else:
                # link() never replaces an existing name, which makes this step atomic and safe.
                try:
                    os.link(
                        _ROOT_NAME,
                        self._name,
                        src_dir_fd=self._staging_fd,
                        dst_dir_fd=self._parent_fd,
                        follow_symlinks=False,
                    )
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                        raise
                    # No hard links here (exFAT, some SMB shares): check again, then rename.
                    if os.path.lexists(self.dest):
                        raise FileExistsError(errno.EEXIST, "exists") from e
                    self._rename_root()
            self._linked = True
        except FileExistsError as e:
            raise DestinationExistsError(
                f"'{os.fsdecode(self.dest)}' already exists; xstore never overwrites"
            ) from e
        except OSError as e:
            if isinstance(e, XstoreError):
                raise
            raise RestoreError(
                f"cannot move the restored tree to '{os.fsdecode(self.dest)}': {e.strerror}"
            ) from e
        finally:
            self.abort()

    def _rename_root(self) -> None:
        os.rename(_ROOT_NAME, self._name, src_dir_fd=self._staging_fd, dst_dir_fd=self._parent_fd)

    def moved(self) -> None:
        """Without staging: the caller has moved the finished tree away from `dest`; `abort` then has
        nothing to remove."""
        self._committed = True

    def _close_descriptors(self) -> None:
        if self._file_fd >= 0:
            os.close(self._file_fd)
            self._file_fd = -1
        while self._stack:
            os.close(self._stack.pop().fd)

    def abort(self) -> None:
        """Remove the staging directory (without staging: the tree at `dest`, unless `moved`) and close
        every descriptor. Idempotent."""
        self._close_descriptors()
        if self._staging_fd >= 0:
            if self._linked:  # a file's second name (a renamed directory is gone already)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_ROOT_NAME, dir_fd=self._staging_fd)
            os.close(self._staging_fd)
            self._staging_fd = -1
        if self._parent_fd >= 0:
            parent_fd, self._parent_fd = self._parent_fd, -1
            try:
                if self._staged:
                    _remove_entry(parent_fd, self._staging)
                elif not self._committed:
                    remove_tree(self.dest)  # in the caller's private directory; may hold read-only ones
            finally:
                os.close(parent_fd)

    def result(self, nar_size: int) -> RestoreResult:
        return RestoreResult(nar_size, self.case_hack, self.fold, self._renamed, self.probed)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """All of `data` to the file open at `fd`; a failure (a full disk) as `RestoreError`."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as e:
        raise RestoreError(f"cannot write a file: {e.strerror}", errno=e.errno) from e


def creation_keeps_modes(dir_fd: int) -> bool:
    """Whether a file or directory created in the directory `dir_fd` with mode 0644 or 0755 gets exactly
    that mode: the process's umask takes none of those bits (022 and 002 take none), and the directory
    has no default ACL (which would mask the mode in the umask's place) and no set-group-ID bit (which
    directories made in it would inherit). When unsure (no /proc, an error), no:
    each file's mode is then set after its creation, one `fchmod` per file (8,000 for /usr/include).
    Asked once per restore, and once by a store for its scratch directory: the umask is process-wide,
    and the directories made there inherit the ACL of the directory they are made in."""
    try:
        with open("/proc/self/status", "rb") as status:
            text = status.read()
        start = text.index(b"\nUmask:") + len(b"\nUmask:")
        umask = int(text[start : text.index(b"\n", start)].strip(), 8)
    except (OSError, ValueError):
        return False
    if umask & 0o755:
        return False
    try:
        if os.fstat(dir_fd).st_mode & stat.S_ISGID:
            return False  # directories made in it would inherit the bit: their mode is set after
    except OSError:
        return False
    try:
        os.getxattr(dir_fd, "system.posix_acl_default")
    except OSError as e:
        return e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return False  # a default ACL


def _remove_entry(dir_fd: int, name: bytes) -> None:
    """Remove `name` (a tree, a file or a symlink) from the directory open at `dir_fd`; missing is fine."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        try:
            os.rmdir(name, dir_fd=dir_fd)  # empty, as a finished restore's staging directory is
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            import shutil  # not at start-up: it imports bz2 and lzma

            shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def restore_path(
    dest: PathArg,
    read: Callable[[int], bytes],
    *,
    case_hack: CaseHackMode = CaseHackMode.AUTO,
    fold: Fold | None = None,
    allow_trailing: bool = False,
    progress: Callable[[int], None] | None = None,
    source_fd: int | None = None,
) -> RestoreResult:
    """Restore the NAR read from `read(n)` to `dest`, which must not exist.

    With `case_hack` auto, the destination filesystem is probed; `fold` defaults to what the probe
    found (ASCII otherwise). Unless `allow_trailing`, input after the archive's end is refused
    (`TrailingDataError`). `source_fd` is the descriptor `read` reads from, when `read` takes from it
    only what it returns (no read-ahead of its own): the contents of large files then move from it to
    their files in the kernel. On any error or cancellation (KeyboardInterrupt included) nothing is
    left at `dest` or beside it.
    """
    writer = TreeWriter(dest, case_hack=case_hack, fold=fold)
    parser = NarParser(whole_files=True)

    def bypass(count: int) -> None:
        if source_fd is None:
            return
        copied = writer.copy_from(source_fd, count)
        if copied < count:
            raise TruncatedError(
                "unexpected end of file while reading a file's contents",
                offset=parser.offset - count + copied,
                path=parser.path,
            )

    try:
        handle = writer.handle
        last = 0
        for event in iter_events(read, parser, bypass=bypass if source_fd is not None else None):
            handle(event)
            if progress is not None and parser.offset - last >= CHUNK:
                last = parser.offset
                progress(last)
        if not allow_trailing and (parser.unused_data or read(1)):
            raise TrailingDataError(f"unexpected data after the end of the archive (at byte {parser.offset})")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return writer.result(parser.offset)
