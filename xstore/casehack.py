"""Nix's case hack: restore naming, dump un-hacking, fold models, and a filesystem probe.

On a filesystem that folds case, two entries of one directory whose names differ only in case cannot
both exist. Nix's answer (archive.cc, `CaseHackNames::diskName` and `unhackName`): on restore, the first
spelling in NAR order keeps its name and every later spelling with the same fold key becomes
`name~nix~case~hack~N`, N counting per key from 1; on dump, everything from the first suffix on is cut off
and the entries are sorted again, so the archive comes back byte for byte.

Nix folds like `strcasecmp` in the C locale: ASCII letters only (`Fold.ASCII`). macOS volumes (APFS,
HFS+) also fold Unicode case and treat NFC and NFD spellings as one name; `Fold.APFS` models that, so
names Nix cannot restore on a Mac at all (NixOS/nix#847, #2475) get the suffix too. A dump strips the
suffix whatever fold produced it, so either tree dumps back to the original archive, with Nix as well.

Whether to hack is decided by `probe()`, which asks the destination filesystem rather than assuming
from the operating system (NixOS/nix#1446).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import unicodedata
from collections.abc import Iterable

from xstore.errors import CaseHackError, DumpError
from xstore.nar.rules import CASE_HACK_SUFFIX, name_problem, show

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "CASE_HACK_SUFFIX",
    "CaseHackMode",
    "CaseHackNames",
    "Fold",
    "FsCaseBehaviour",
    "NameScanner",
    "fold_key",
    "probe",
    "probe_read_only",
    "resolve_restore_mode",
    "unhack_entries",
    "unhack_name",
]


class CaseHackMode(enum.Enum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class Fold(enum.Enum):
    """How a filesystem decides that two names are the same name."""

    ASCII = "ascii"  # strcasecmp in the C locale: Nix's fold
    APFS = "apfs"  # Unicode case folding and canonical normalisation, as APFS and HFS+ do


def fold_key(name: bytes, fold: Fold) -> bytes:
    """The key under which `fold` considers names equal.

    For `APFS`, names that are not UTF-8 fall back to the ASCII fold (macOS cannot store them at all;
    `NameScanner` reports them separately).
    """
    if fold is Fold.ASCII:
        return name.lower()  # bytes.lower() touches ASCII letters only, like strcasecmp in "C"
    if name.isascii():
        return name.lower()
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return name.lower()
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", text).casefold()).encode()


class CaseHackNames:
    """Names restored into one directory so far, and the name each later entry gets on disk.

    Nix: archive.cc `CaseHackNames::diskName`. The first spelling of each key is remembered, since
    Nix's collision message names it. Unlike Nix, the names the hack gives out are remembered too: an
    archive holding `A`, `a` and `a~NIX~CASE~HACK~1` (the parser's suffix check is case-sensitive, as
    Nix's) would put `a~nix~case~hack~1` and `a~NIX~CASE~HACK~1` side by side, which a folding
    filesystem cannot hold; Nix fails on it at create time with "File exists", xstore refuses it before
    creating anything, with the message Nix gives for the mirror-image case.
    """

    __slots__ = ("_fold", "_hacked", "_seen")

    def __init__(self, fold: Fold = Fold.ASCII) -> None:
        self._fold = fold
        self._seen: dict[bytes, list[bytes | int]] = {}  # key -> [first spelling, count]
        self._hacked: dict[bytes, bytes] = {}  # key -> the hacked name given out with it

    def disk_name(self, name: bytes) -> bytes:
        """The name to create for NAR entry `name`. Raises `CaseHackError` when the hacked name would
        land on an entry already there, or `name` on a hacked one (possible when a NAR spells the suffix
        in another case)."""
        fold = self._fold
        key = fold_key(name, fold)
        taken = self._hacked.get(key)
        if taken is not None:
            raise CaseHackError(
                f"NAR contains file name '{show(name)}' that collides with case-hacked file name "
                f"'{show(taken)}'",
                name=name,
                existing=taken,
            )
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = [name, 0]
            return name
        count = int(seen[1]) + 1
        seen[1] = count
        hacked = name + CASE_HACK_SUFFIX + str(count).encode()
        hacked_key = fold_key(hacked, fold)
        clash = self._seen.get(hacked_key)
        if clash is not None:
            first = clash[0]
            assert isinstance(first, bytes)
            raise CaseHackError(
                f"NAR contains file name '{show(name)}' that collides with case-hacked file name "
                f"'{show(first)}'",
                name=name,
                existing=first,
            )
        self._hacked[hacked_key] = hacked
        return hacked


def unhack_name(name: bytes) -> bytes:
    """`name` with everything from the first case-hack suffix on removed (Nix: `unhackName`)."""
    pos = name.find(CASE_HACK_SUFFIX)
    return name if pos < 0 else name[:pos]


def unhack_entries(names: Iterable[bytes], *, hack: bool, where: bytes = b"") -> list[tuple[bytes, bytes]]:
    """Pair each on-disk name of a directory with its name in the archive, in archive order.

    Returns `(archive_name, disk_name)` sorted by archive name. With `hack` off a name carrying the
    suffix is refused (it would make an archive no parser accepts); with it on, two disk names that
    un-hack to the same name are refused. Nix: archive.cc `unhackedEntries`.
    """
    if not hack:
        pairs = []
        for name in names:
            if CASE_HACK_SUFFIX in name:
                raise DumpError(
                    f"cannot serialise '{_show_in(where, name)}': the name carries the case-hack suffix "
                    f"'{CASE_HACK_SUFFIX.decode()}', which the NAR format reserves (use --case-hack on)",
                    path=where + b"/" + name,
                )
            pairs.append((name, name))
        pairs.sort()
        return pairs
    unhacked: dict[bytes, bytes] = {}
    for name in names:
        nar_name = unhack_name(name)
        problem = name_problem(nar_name) if nar_name is not name else None
        if problem is not None:
            raise DumpError(
                f"cannot serialise '{_show_in(where, name)}': without its case-hack suffix the name is not "
                f"valid in a NAR ({problem})",
                path=where + b"/" + name,
            )
        other = unhacked.setdefault(nar_name, name)
        if other is not name:
            first, second = sorted((other, name))
            raise CaseHackError(
                f"file name collision between '{_show_in(where, first)}' and '{_show_in(where, second)}'",
                path=where,
            )
    return sorted(unhacked.items())


def _show_in(where: bytes, name: bytes) -> str:
    return show(where + b"/" + name if where else name, 4096)


# -- the probe ----------------------------------------------------------------------------------------

_UNICODE_UPPER: Final = "\u00c0".encode()  # LATIN CAPITAL LETTER A WITH GRAVE (NFC)
_UNICODE_LOWER: Final = "\u00e0".encode()
_NFC: Final = "\u00e9".encode()  # e with acute, composed
_NFD: Final = "e\u0301".encode()  # the same, decomposed


class FsCaseBehaviour:
    """What a directory's filesystem does with names that differ only in case or normalisation.

    An immutable value; `method` ("write" or "read-only": how it was found out) is not part of its
    identity. A plain class rather than a dataclass: `dataclasses` imports `inspect`, a tenth of the
    start-up of `xstore nar dump`, which reaches this module.
    """

    __slots__ = ("case_insensitive", "method", "normalization_insensitive", "unicode_case_insensitive")
    case_insensitive: bool
    unicode_case_insensitive: bool
    normalization_insensitive: bool
    method: str

    def __init__(
        self,
        case_insensitive: bool,
        unicode_case_insensitive: bool = False,
        normalization_insensitive: bool = False,
        method: str = "write",
    ) -> None:
        set_ = object.__setattr__
        set_(self, "case_insensitive", case_insensitive)
        set_(self, "unicode_case_insensitive", unicode_case_insensitive)
        set_(self, "normalization_insensitive", normalization_insensitive)
        set_(self, "method", method)

    def _key(self) -> tuple[bool, bool, bool]:
        return (self.case_insensitive, self.unicode_case_insensitive, self.normalization_insensitive)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, FsCaseBehaviour) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"FsCaseBehaviour is immutable; cannot set {name!r}")

    def __repr__(self) -> str:
        return (
            f"FsCaseBehaviour(case_insensitive={self.case_insensitive!r}, "
            f"unicode_case_insensitive={self.unicode_case_insensitive!r}, "
            f"normalization_insensitive={self.normalization_insensitive!r}, method={self.method!r})"
        )

    @property
    def folds_names(self) -> bool:
        """True when two different names can be one file here, so restores need the case hack."""
        return self.case_insensitive or self.unicode_case_insensitive or self.normalization_insensitive

    @property
    def fold(self) -> Fold:
        """The fold that predicts this filesystem: APFS-like if it folds beyond ASCII."""
        if self.unicode_case_insensitive or self.normalization_insensitive:
            return Fold.APFS
        return Fold.ASCII


def _exists(name: bytes, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno in (errno.EILSEQ, errno.EINVAL, errno.ENAMETOOLONG):
            return False
        raise
    return True


def probe(directory: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> FsCaseBehaviour:
    """How the filesystem holding `directory` treats case and normalisation.

    Creates a uniquely named scratch directory inside `directory`, a few files in it, and removes it
    all again, whatever happens. Where `directory` cannot be written (read-only filesystem, no
    permission) it falls back to looking up case variants of the names already there, which detects
    ASCII case folding when some name has a letter (and otherwise reports case-sensitive).
    """
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            return _probe_by_writing(dir_fd)
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
        return probe_read_only(dir_fd)
    finally:
        os.close(dir_fd)


def _probe_by_writing(dir_fd: int) -> FsCaseBehaviour:
    scratch = b".xstore-probe-" + os.urandom(8).hex().encode()
    os.mkdir(scratch, 0o700, dir_fd=dir_fd)
    created: list[bytes] = []
    try:
        fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:

            def touch(name: bytes) -> bool:
                try:
                    os.close(
                        os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=fd)
                    )
                except OSError as e:
                    if e.errno in (errno.EILSEQ, errno.EINVAL):
                        return False  # the filesystem refuses this spelling: treat as no folding
                    raise
                created.append(name)
                return True

            case_insensitive = touch(b"A") and _exists(b"a", fd)
            unicode = touch(_UNICODE_UPPER) and _exists(_UNICODE_LOWER, fd)
            normalization = touch(_NFC) and _exists(_NFD, fd)
        finally:
            for name in created:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
            os.close(fd)
    finally:
        os.rmdir(scratch, dir_fd=dir_fd)
    return FsCaseBehaviour(case_insensitive, unicode, normalization, "write")


def probe_read_only(dir_fd: int) -> FsCaseBehaviour:
    """Whether the directory open at `dir_fd` folds ASCII case, found without writing: look up the
    case-swapped spelling of an existing name that the listing does not hold. If it resolves, the
    filesystem folds case (the inode need not match: a FUSE layer may number spellings apart).
    Reports case-sensitive when no name has a letter."""
    with os.scandir(dir_fd) as it:
        names = [os.fsencode(entry.name) for entry in it]
    for name in names:
        swapped = name.swapcase()
        if swapped == name or swapped in names:
            continue
        try:
            os.stat(swapped, dir_fd=dir_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return FsCaseBehaviour(False, method="read-only")
        return FsCaseBehaviour(True, method="read-only")
    return FsCaseBehaviour(False, method="read-only")


def resolve_restore_mode(
    mode: CaseHackMode, fold: Fold | None, behaviour: FsCaseBehaviour | None
) -> tuple[bool, Fold]:
    """Whether to hack and with which fold, from the user's choices and (for auto) a probe result."""
    if mode is CaseHackMode.AUTO:
        if behaviour is None:
            raise ValueError("case-hack auto needs a probe result")
        hack = behaviour.folds_names
    else:
        hack = mode is CaseHackMode.ON
    if fold is None:
        fold = behaviour.fold if behaviour is not None else Fold.ASCII
    return hack, fold


# -- the pre-flight scan --------------------------------------------------------------------------------


class NameScanner:
    """Collects, directory by directory, the names that would collide under each fold, and the names
    macOS cannot store at all (not UTF-8). Feed it with `add_directory`; read `findings()`."""

    __slots__ = ("collisions", "directories", "names", "not_utf8")

    def __init__(self) -> None:
        self.collisions: dict[Fold, list[tuple[tuple[bytes, ...], list[bytes]]]] = {
            Fold.ASCII: [],
            Fold.APFS: [],
        }
        self.not_utf8: list[tuple[bytes, ...]] = []
        self.directories = 0
        self.names = 0

    def add_directory(self, path: tuple[bytes, ...], names: Iterable[bytes]) -> None:
        groups: dict[Fold, dict[bytes, list[bytes]]] = {Fold.ASCII: {}, Fold.APFS: {}}
        self.directories += 1
        for name in names:
            self.names += 1
            if not name.isascii():
                try:
                    name.decode("utf-8")
                except UnicodeDecodeError:
                    self.not_utf8.append((*path, name))
            for fold, by_key in groups.items():
                by_key.setdefault(fold_key(name, fold), []).append(name)
        for fold, by_key in groups.items():
            for members in by_key.values():
                if len(members) > 1:
                    self.collisions[fold].append((path, sorted(members)))

    @property
    def clean(self) -> bool:
        return not (self.collisions[Fold.ASCII] or self.collisions[Fold.APFS] or self.not_utf8)

    def groups(self, fold: Fold) -> list[tuple[tuple[bytes, ...], list[bytes]]]:
        """The colliding groups under `fold`, sorted by directory (whatever order they were found in)."""
        return sorted(self.collisions[fold])

    def report(self) -> dict[str, Any]:
        """The findings as JSON-ready data (names decoded for display, undecodable bytes escaped)."""
        return {
            "directories": self.directories,
            "names": self.names,
            "clean": self.clean,
            "collisions": {
                fold.value: [
                    {"directory": _display(where), "names": [_text(n) for n in group]}
                    for where, group in self.groups(fold)
                ]
                for fold in Fold
            },
            "notUtf8": [_display(p) for p in sorted(self.not_utf8)],
        }


def _text(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _display(parts: tuple[bytes, ...]) -> str:
    return "/" + _text(b"/".join(parts))
