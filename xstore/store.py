"""The local store: Nix's chroot layout, Nix's SQLite schema, Nix's locks.

A store rooted at ROOT keeps its objects in `ROOT/nix/store` under their logical names
(`/nix/store/<hash>-<name>` in the database, in NARs and in every hash) and its metadata in
`ROOT/nix/var/nix/db/db.sqlite`, schema version 10, exactly as Nix's `LocalStore` does, so that
`nix-store --store ROOT` and xstore can work on the same store, even at the same time:

- the database connection is set up as Nix sets up its own (WAL, foreign keys, `synchronous=normal`, a
  long busy timeout), and every path is registered in one transaction with its references;
- `db/big-lock` is held shared while a store is open (exclusive only while the schema is created), and
  a path being added is locked with `<path>.lock` the way Nix's `PathLocks` does it, including the
  protocol for stale lock files (unlink, then write "d");
- contents are canonicalised as Nix does: files 0444 or 0555, directories 0555, mtime 1.

xstore's own per-store settings (whether the case hack is on, and with which fold) live outside Nix's
schema, in `ROOT/nix/var/xstore/settings.json`: decided once when the store is created, honoured by
every later import, export and verify (what NixOS/nix#9318 asks of Nix).

`LocalStore` implements the store interface (`storeapi.Store`); paths come in through one transaction
(`store_add.py`) whatever brought them.

Nix: local-store.cc (`openDB`, `registerValidPaths`, `queryPathInfo`), pathlocks.cc, schema.sql.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from xstore.casehack import CaseHackMode, Fold, probe, probe_read_only
from xstore.errors import HashMismatchError, InputError, InvalidPathError, InvalidStorePathError, StoreError
from xstore.fsops import remove_tree
from xstore.hashing import HashAlgorithm, HashFormat, HashSink, encode_nix32, parse_hash
from xstore.notices import notice
from xstore.pathlocks import HAVE_BYTE_LOCKS, ByteLockFile, PathLock, flock_fd, lock_file
from xstore.records import FrozenRecord, setfield
from xstore.storeapi import PathInfo, Read, Sink, Store, batched
from xstore.storepath import HASH_PART_LEN, STORE_DIR, StorePath, parse_store_path
from xstore.temproots import RootsFile, roots_file

SCHEMA_VERSION: Final = 10
SETTINGS_VERSION: Final = 1

_BYTE_LOCK_MASK: Final = (1 << 62) - 1  # offsets of path locks (`pathlocks.ByteLock`)

# Nix's schema 10 (schema.sql): the same tables, columns, constraints, indexes and trigger.
_SCHEMA: Final = """
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"""

_INSERT_PATH: Final = (
    "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) "
    "values (?, ?, ?, ?, ?, ?, ?, ?)"
)
# Registrations deferred while a copy runs (`LocalStore.registering_together`) are committed once this
# many paths wait (each holds a lock's descriptors), once the first has waited this long, and before a
# NAR this large (its unpacking takes a while).
DEFER_PATHS: Final = 32
DEFER_SECONDS: Final = 0.02
DEFER_NAR_SIZE: Final = 1 << 20

TEMP_NAME: Final = "xstore-tmp"  # temporary directories: `<random hash part>-xstore-tmp`
TEMP_PREFIX: Final = ".xstore-tmp-"  # their name before (`.xstore-tmp-<token>`), still cleaned up


def temp_token(name: str) -> str | None:
    """The token of an xstore temporary directory's name (either form), or None for other names."""
    if name.startswith(TEMP_PREFIX):
        return name[len(TEMP_PREFIX) :] or None
    if len(name) == HASH_PART_LEN + 1 + len(TEMP_NAME) and name.endswith("-" + TEMP_NAME):
        return name[:HASH_PART_LEN]
    return None


class StoreSettings(FrozenRecord):
    """xstore's own settings for one store, outside Nix's schema."""

    __slots__ = ("case_hack", "fold", "trusted_public_keys")
    case_hack: bool
    fold: Fold
    # Public keys (`name:base64`) whose signatures make a path from a cache or a remote store
    # acceptable here (Nix's `trusted-public-keys`, per store).
    trusted_public_keys: tuple[str, ...]

    def __init__(self, case_hack: bool, fold: Fold, trusted_public_keys: tuple[str, ...] = ()) -> None:
        setfield(self, "case_hack", case_hack)
        setfield(self, "fold", fold)
        setfield(self, "trusted_public_keys", trusted_public_keys)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": SETTINGS_VERSION,
            "caseHack": self.case_hack,
            "caseFold": self.fold.value,
        }
        if self.trusted_public_keys:  # written only once set: older readers see the file they knew
            out["trustedPublicKeys"] = list(self.trusted_public_keys)
        return out


def default_store_root() -> Path:
    """`$XSTORE_STORE`, else a per-user data directory (the embedded default store)."""
    env = os.environ.get("XSTORE_STORE")
    if env:
        return Path(env)
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "xstore" / "store"


TYPE_CHECKING = False  # not `from typing import`: the store commands run without loading typing
if TYPE_CHECKING:
    from typing import Any, Concatenate, Final, ParamSpec, TypeVar

    P = ParamSpec("P")
    R = TypeVar("R")


def _is_busy(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or (
        "database is locked" in str(e)
    )


def _patiently(what: str, attempt: Callable[[], R]) -> R:
    """Run `attempt` until the database is not busy: SQLite's own wait is kept short (it cannot be
    interrupted), and between attempts this sleeps in Python, where Ctrl-C and SIGTERM get through. A
    wait longer than half a second is announced once."""
    started = time.monotonic()
    announced = False
    while True:
        try:
            return attempt()
        except sqlite3.Error as e:
            if not _is_busy(e):
                raise
        if not announced and time.monotonic() - started > 0.5:
            notice(f"waiting for {what}, which another process holds")
            announced = True
        time.sleep(0.05)


# A path's registration and its references, one row per reference (one row with a NULL reference for
# a path without any), in one statement: a read is a transaction of its own, with its own locks.
_INFO_BY_PATH: Final = (
    "select v.path, v.id, v.hash, v.registrationTime, v.deriver, v.narSize, v.ultimate, v.sigs, v.ca, "
    "r.path from ValidPaths v left join Refs on Refs.referrer = v.id "
    "left join ValidPaths r on r.id = Refs.reference where v.path = ?"
)
# The same for every path in the closure of the paths given (in place of `{marks}`), a path's rows
# together.
_CLOSURE: Final = (
    "with recursive closure(id) as (select id from ValidPaths where path in ({marks}) "
    "union select Refs.reference from Refs join closure on Refs.referrer = closure.id) "
    "select v.path, v.id, v.hash, v.registrationTime, v.deriver, v.narSize, v.ultimate, v.sigs, v.ca, "
    "r.path from closure join ValidPaths v on v.id = closure.id "
    "left join Refs on Refs.referrer = v.id left join ValidPaths r on r.id = Refs.reference order by v.id"
)
# The same for the path with a hash part: the first path from "DIR/HASH-" up to "DIR/HASH." (the
# character after "-").
_INFO_BY_HASH_PART: Final = (
    "select v.path, v.id, v.hash, v.registrationTime, v.deriver, v.narSize, v.ultimate, v.sigs, v.ca, "
    "r.path from ValidPaths v left join Refs on Refs.referrer = v.id "
    "left join ValidPaths r on r.id = Refs.reference "
    "where v.path = (select path from ValidPaths where path >= ? and path < ? order by path limit 1)"
)


def _db_errors(method: Callable[Concatenate[LocalStore, P], R]) -> Callable[Concatenate[LocalStore, P], R]:
    """One database user at a time (the connection is shared by the threads of a copy), waits for a
    database another process holds (interruptible, announced), and SQLite failures (a corrupt
    database, a full disk) reported as `StoreError`, not as bugs."""

    def wrapper(self: LocalStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        def attempt() -> R:
            with self._db_lock:
                return method(self, *args, **kwargs)

        try:
            try:
                return attempt()  # the usual case, without the waiting loop's cost
            except sqlite3.Error as e:
                if not _is_busy(e):
                    raise
            return _patiently(f"the database of the store at '{self.root}'", attempt)
        except sqlite3.Error as e:
            raise StoreError(f"the store database '{self.db_dir / 'db.sqlite'}' cannot be used: {e}") from e

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _path_row(info: PathInfo) -> tuple[object, ...]:
    """The ValidPaths row of `info`, in `_INSERT_PATH`'s order."""
    return (
        info.path.path,
        "sha256:" + info.nar_hash.hex(),
        info.registration_time or int(time.time()),
        info.deriver.path if info.deriver else None,
        info.nar_size or None,
        1 if info.ultimate else None,
        " ".join(sorted(info.sigs)) or None,
        info.ca,
    )


class _Deferred:
    """Registrations waiting for their commit (`LocalStore.registering_together`): each path's
    metadata and the lock held on it, in the order added."""

    __slots__ = ("entries", "on_commit", "since", "thread")

    def __init__(self, on_commit: Callable[[set[StorePath]], None] | None) -> None:
        self.thread = threading.get_ident()  # only this thread's adds wait
        self.entries: list[tuple[PathInfo, PathLock]] = []
        self.since = 0.0  # when the first of the entries was added
        self.on_commit = on_commit


class LocalStore(Store):
    """An open local store. Use as a context manager, or call `close()`.

    Holds the big lock shared and one SQLite connection, which threads take turns to use.
    """

    trusted_as_source = True

    def __init__(self, root: Path | str, *, read_only: bool = False, _create: bool = False) -> None:
        self.root = Path(root).absolute()
        self.url = str(self.root)
        self.real_store_dir = self.root / "nix" / "store"
        self._real_prefix = os.fsencode(self.real_store_dir) + b"/"
        self.state_dir = self.root / "nix" / "var" / "nix"
        self.db_dir = self.state_dir / "db"
        self.xstore_dir = self.root / "nix" / "var" / "xstore"
        self._settings_file = str(self.xstore_dir / "settings.json")
        self._byte_locks = ByteLockFile(str(self.xstore_dir / "path-locks"))
        self._big_lock = -1
        self._probed: StoreSettings | None = None
        self._settings_read: tuple[tuple[int, ...], StoreSettings] | None = None
        self._trusted: tuple[tuple[str, ...], dict[str, Any]] | None = None
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.RLock()
        self.read_only = read_only
        self.extra_trusted_keys: list[str] = []
        self._temp_roots: RootsFile | None = None
        self._scratch: contextlib.ExitStack | None = None
        self._scratch_dir = b""
        self._scratch_fd = -1
        self._scratch_count = itertools.count()
        self.scratch_keeps_modes = False  # see `scratch_entry`
        self._locks: str | None = None  # the locks directory, once made
        self._deferred: _Deferred | None = None  # see `registering_together`
        if not (self.db_dir / "db.sqlite").exists() and not _create:
            raise StoreError(
                f"no store at '{self.root}' (no nix/var/nix/db/db.sqlite); "
                "create one with 'xstore store init'"
            )
        try:
            self._open()
        except sqlite3.Error as e:
            self.close()
            raise StoreError(f"the store database '{self.db_dir / 'db.sqlite'}' cannot be used: {e}") from e
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path | str, *, read_only: bool = False) -> LocalStore:
        """Open an existing store (made by xstore or by Nix). Raises `StoreError` if there is none.

        `read_only` opens the database read-only and writes nothing at all (for queries, exports and
        verify: they work on a full disk and for users who may only read the store); adding to such a
        store raises `StoreError`."""
        return cls(root, read_only=read_only)

    @classmethod
    def create(
        cls, root: Path | str, *, case_hack: CaseHackMode = CaseHackMode.AUTO, fold: Fold | None = None
    ) -> LocalStore:
        """Create a store at `root` (or open it if it exists, keeping its settings).

        The case-hack setting is decided now: `auto` probes `ROOT/nix/store`; `fold` defaults to what
        the probe found. An existing store keeps the settings it has; asking for different ones is an
        error.
        """
        root = Path(root).absolute()
        for d in (
            root / "nix" / "store",
            root / "nix" / "var" / "nix" / "db",
            root / "nix" / "var" / "xstore",
        ):
            d.mkdir(parents=True, exist_ok=True)
        store = cls(root, _create=True)
        try:
            store._init_settings(case_hack, fold)
        except BaseException:
            store.close()
            raise
        return store

    def _open(self) -> None:
        self.db_dir.mkdir(parents=True, exist_ok=True)
        big_lock = self.db_dir / "big-lock"
        what = f"the big lock of the store at '{self.root}'"
        if self.read_only:
            self._big_lock = _read_only_lock(big_lock, what)
        else:
            fd = lock_file(big_lock, shared=True, what=what)
            assert fd is not None
            self._big_lock = fd
        schema_file = self.db_dir / "schema"
        version = 0
        if schema_file.exists():
            text = schema_file.read_text(errors="replace")
            number = text.strip()
            if not (number.isascii() and number.isdigit() and len(number) <= 9):  # what int() takes in full
                raise StoreError(f"'{schema_file}' should hold the schema version, but holds {text[:20]!r}")
            version = int(text)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store at '{self.root}' has schema version {version}; xstore supports {SCHEMA_VERSION}"
            )
        if version not in (0, SCHEMA_VERSION):
            raise StoreError(
                f"the store at '{self.root}' has the old schema version {version}; "
                "upgrade it with a current Nix"
            )
        if version == 0 and self.read_only:
            raise StoreError(f"the store at '{self.root}' has no schema yet and is opened read-only")
        self._db = _patiently(f"the database of the store at '{self.root}'", self._connect)
        if version == 0:
            self._create_schema(schema_file)

    def _connect(self) -> sqlite3.Connection:
        # A short busy timeout: SQLite's wait cannot be interrupted; `_patiently` waits in Python.
        if self.read_only:
            return self._connect_read_only()
        db = sqlite3.connect(
            self.db_dir / "db.sqlite", isolation_level=None, timeout=0.1, check_same_thread=False
        )
        try:
            db.execute("pragma foreign_keys = 1")
            db.execute("pragma synchronous = normal")
            if db.execute("pragma main.journal_mode").fetchone()[0] != "wal":
                db.execute("pragma main.journal_mode = wal")
            db.execute("pragma wal_autocheckpoint = 40000")
        except BaseException:
            db.close()
            raise
        return db

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection for reading. Like Nix's, it opens the database for writing when it can: a WAL
        database's last connection then cleans up its -wal and -shm files, so reading leaves the store as
        it was. Where that fails (a full disk, a read-only filesystem, a reader without write access) it
        opens read-only; and when even the -shm file cannot be made and no write-ahead log is pending,
        as immutable, which needs no files beside the database."""
        path = self.db_dir / "db.sqlite"

        def connect(uri: str) -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=0.1, check_same_thread=False)

        for target in (path.as_uri(), path.as_uri() + "?mode=ro"):
            try:
                db = connect(target)
                db.execute("select count(*) from ValidPaths").fetchone()
                return db
            except sqlite3.Error as e:
                if _is_busy(e):
                    raise
        wal = path.with_name("db.sqlite-wal")
        if wal.exists() and wal.stat().st_size:
            raise StoreError(f"the database of the store at '{self.root}' cannot be opened, even read-only")
        return connect(path.as_uri() + "?mode=ro&immutable=1")

    def _create_schema(self, schema_file: Path) -> None:
        # Upgrade the big lock to exclusive while the schema is made, as Nix does.
        flock_fd(self._big_lock, False, True, f"the big lock of the store at '{self.root}'")
        try:
            if not schema_file.exists():
                self.db.executescript(_SCHEMA)
                tmp = schema_file.with_name(f".schema.{os.urandom(4).hex()}")
                tmp.write_text(str(SCHEMA_VERSION))  # no newline, as Nix writes it
                os.replace(tmp, schema_file)
        finally:
            fcntl.flock(self._big_lock, fcntl.LOCK_SH)

    def _init_settings(self, case_hack: CaseHackMode, fold: Fold | None) -> None:
        existing = self._read_settings()
        if existing is not None:
            wanted_hack = None if case_hack is CaseHackMode.AUTO else case_hack is CaseHackMode.ON
            if (wanted_hack is not None and wanted_hack != existing.case_hack) or (
                fold is not None and fold is not existing.fold
            ):
                raise StoreError(
                    f"the store at '{self.root}' already exists with case hack "
                    f"{'on' if existing.case_hack else 'off'} ({existing.fold.value} fold)"
                )
            return
        behaviour = probe(self.real_store_dir)
        hack = behaviour.folds_names if case_hack is CaseHackMode.AUTO else case_hack is CaseHackMode.ON
        self._write_settings(StoreSettings(hack, fold if fold is not None else behaviour.fold))

    def _write_settings(self, settings: StoreSettings) -> None:
        self.xstore_dir.mkdir(parents=True, exist_ok=True)
        path = self.xstore_dir / "settings.json"
        tmp = path.with_name(f".settings.{os.urandom(4).hex()}")
        tmp.write_text(json.dumps(settings.to_json(), indent=2) + "\n")
        os.replace(tmp, path)

    def _read_settings(self) -> StoreSettings | None:
        """The recorded settings, read again only when the file has changed (it is always replaced
        whole, so a new inode or time tells): a copy asks for them for every path it adds."""
        path = self._settings_file
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read '{path}': {e}") from e
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._settings_read is not None and self._settings_read[0] == identity:
            return self._settings_read[1]
        settings = self._parse_settings(Path(path))
        if settings is not None:
            self._settings_read = (identity, settings)
        return settings

    def _parse_settings(self, path: Path) -> StoreSettings | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read '{path}': {e}") from e
        except RecursionError:
            raise StoreError(f"cannot read '{path}': JSON nested too deeply") from None
        try:
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            keys = data.get("trustedPublicKeys", [])
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise TypeError("trustedPublicKeys must be a list of strings")
            return StoreSettings(bool(data["caseHack"]), Fold(data["caseFold"]), tuple(keys))
        except (KeyError, ValueError, TypeError) as e:
            raise StoreError(f"'{path}' is not a valid xstore settings file") from e

    @property
    def settings(self) -> StoreSettings:
        """The store's case-hack settings. A store xstore did not create (made by Nix) has none
        recorded: the hack is taken to be on exactly when its filesystem folds case (as Nix on macOS
        has it), found by looking up case variants of names already there, which changes nothing."""
        found = self._read_settings()
        if found is not None:
            return found
        if self._probed is None:  # the filesystem does not change under an open store: probe once
            fd = os.open(self.real_store_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                behaviour = probe_read_only(fd)
            finally:
                os.close(fd)
            self._probed = StoreSettings(behaviour.case_insensitive, Fold.ASCII)
        return self._probed

    def set_trusted_public_keys(self, keys: Iterable[str]) -> StoreSettings:
        """Record `keys` (public keys, `name:base64`, each checked) as the store's trusted keys, replacing
        the list it had; returns the new settings. A store without recorded settings (made by Nix) gets
        them, with the case hack as it is found now. Raises `SigningKeyError` for a malformed key."""
        from xstore.signing import parse_public_key

        texts = tuple(dict.fromkeys(parse_public_key(k).to_text() for k in keys))
        settings = self.settings
        with self._settings_lock():
            updated = StoreSettings(settings.case_hack, settings.fold, texts)
            self._write_settings(updated)
        return updated

    @contextlib.contextmanager
    def _settings_lock(self) -> Iterator[None]:
        self.xstore_dir.mkdir(parents=True, exist_ok=True)
        fd = lock_file(self.xstore_dir / "settings.lock", what=f"the settings of the store at '{self.root}'")
        try:
            yield
        finally:
            assert fd is not None
            os.close(fd)

    def trusted_keys(self, settings: StoreSettings | None = None) -> dict[str, Any]:
        """The public keys this open store trusts, by name: the store's setting (from `settings` when
        the caller has just read them) plus the keys given to this store object with `trust_keys` (as
        `--trusted-public-keys` does for one command)."""
        from xstore.signing import parse_public_keys

        if settings is None:
            settings = self.settings
        texts = (*settings.trusted_public_keys, *self.extra_trusted_keys)
        if self._trusted is None or self._trusted[0] != texts:
            self._trusted = (texts, parse_public_keys(texts))
        return dict(self._trusted[1])

    def trust_keys(self, keys: Iterable[str]) -> None:
        """Trust `keys` (texts of public keys, several per text allowed) for as long as this store object
        is open, beside the store's setting. Raises `SigningKeyError` for a malformed key."""
        from xstore.signing import parse_public_keys

        texts = list(keys)
        parse_public_keys(texts)
        self.extra_trusted_keys.extend(texts)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    def close(self) -> None:
        try:
            self.commit_registrations()  # closed inside `registering_together`: what is done counts
        finally:
            self._deferred = None
            self._close()

    def _close(self) -> None:
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch.close()  # removes the scratch directory (before the temporary roots it relies on)
        if self._temp_roots is not None:
            self._temp_roots.release()
            self._temp_roots = None
        if self._db is not None:
            self._db.close()
            self._db = None
        self._byte_locks.close()
        if self._big_lock >= 0:
            os.close(self._big_lock)
            self._big_lock = -1

    def __enter__(self) -> LocalStore:
        return self

    def describe(self) -> str:
        return f"the store at '{self.root}'"

    # -- paths ---------------------------------------------------------------------------------------

    def real_path(self, path: StorePath) -> bytes:
        return self._real_prefix + os.fsencode(path.base)

    @_db_errors
    def query_path_info(self, path: StorePath) -> PathInfo | None:
        """The path's registration, or None if it is not valid. A row that cannot be read (a corrupt
        hash, a bad reference) raises `StoreError` naming the path."""
        rows = self.db.execute(_INFO_BY_PATH, (path.path,)).fetchall()
        return self._info_from_rows(path, rows) if rows else None

    @_db_errors
    def query_info_by_hash_part(self, hash_part: str) -> PathInfo | None:
        # One statement where the default makes three: a server answers each request with this.
        if len(hash_part) != HASH_PART_LEN:
            return None
        prefix = f"{STORE_DIR}/{hash_part}"
        rows = self.db.execute(_INFO_BY_HASH_PART, (prefix + "-", prefix + ".")).fetchall()
        if not rows:
            return None
        try:
            path = parse_store_path(rows[0][0])
        except InvalidStorePathError as e:
            raise StoreError(
                f"the database of the store at '{self.root}' has a corrupt path {rows[0][0]!r}: {e}"
            ) from e
        return self._info_from_rows(path, rows)

    def _info_from_rows(
        self, path: StorePath, rows: list[Any], parsed: dict[str, StorePath] | None = None
    ) -> PathInfo:
        """`path`'s info from the rows of `_INFO_BY_PATH`, `_INFO_BY_HASH_PART` or `_CLOSURE`: its
        registration, repeated once per reference (the last column; NULL without references).
        `parsed` keeps the references parsed so far, for a caller reading many infos that share them."""
        _path, _rid, hash_text, reg_time, deriver, nar_size, ultimate, sigs, ca, _ref = rows[0]
        if parsed is None:
            parsed = {}
        try:
            refs = []
            for row in rows:
                text = row[9]
                if text is not None:
                    ref = parsed.get(text)
                    if ref is None:
                        ref = parsed[text] = parse_store_path(text)
                    refs.append(ref)
            refs.sort()
            return PathInfo(
                path=path,
                nar_hash=parse_hash(str(hash_text), HashAlgorithm.SHA256).digest,
                nar_size=int(nar_size or 0),
                references=tuple(refs),
                deriver=parse_store_path(deriver) if deriver else None,
                registration_time=int(reg_time or 0),
                ultimate=bool(ultimate),
                sigs=tuple(sorted(str(sigs).split())) if sigs else (),
                ca=ca or None,
            )
        except (InputError, TypeError, ValueError) as e:
            raise StoreError(
                f"the database of the store at '{self.root}' has a corrupt row for '{path}': {e}",
                path=path.path,
            ) from e

    @_db_errors
    def query_closure(self, paths: Iterable[StorePath]) -> dict[StorePath, PathInfo]:
        # One statement for the whole closure (SQLite walks the references), where the default
        # asks for each path in turn.
        infos: dict[StorePath, PathInfo] = {}
        parsed: dict[str, StorePath] = {}
        for batch in batched(paths):
            by_text = {p.path: p for p in batch}
            marks = ",".join("?" * len(by_text))
            rows = self.db.execute(_CLOSURE.format(marks=marks), list(by_text)).fetchall()
            start = 0
            for end in range(1, len(rows) + 1):
                if end < len(rows) and rows[end][1] == rows[start][1]:
                    continue  # the same path, another reference
                text = rows[start][0]
                path = by_text.get(text) or parsed.get(text)
                if path is None:
                    try:
                        path = parsed[text] = parse_store_path(text)
                    except InvalidStorePathError as e:
                        raise StoreError(
                            f"the database of the store at '{self.root}' has a corrupt path {text!r}: {e}"
                        ) from e
                if path not in infos:
                    infos[path] = self._info_from_rows(path, rows[start:end], parsed)
                start = end
            for p in batch:
                if p not in infos:
                    raise InvalidPathError(f"path '{p}' is not valid in {self.describe()}", path=p.path)
        return infos

    @_db_errors
    def query_valid_paths(self, paths: Iterable[StorePath]) -> set[StorePath]:
        found: set[StorePath] = set()
        for batch in batched(paths):
            by_text = {p.path: p for p in batch}
            marks = ",".join("?" * len(by_text))
            rows = self.db.execute(f"select path from ValidPaths where path in ({marks})", list(by_text))  # noqa: S608 (placeholders only)
            found.update(by_text[p] for (p,) in rows)
        return found

    @_db_errors
    def query_path_from_hash_part(self, hash_part: str) -> StorePath | None:
        if len(hash_part) != HASH_PART_LEN:
            return None
        prefix = f"{STORE_DIR}/{hash_part}"
        row = self.db.execute(
            "select path from ValidPaths where path >= ? order by path limit 1", (prefix,)
        ).fetchone()
        if row is None or not str(row[0]).startswith(prefix + "-"):
            return None
        return parse_store_path(row[0])

    def nar_ready(self, path: StorePath) -> bool:
        """Whether the path's NAR can be read without waiting on the network: always, from a local
        store (`copy` defers registrations into another local store only from such sources)."""
        return True

    @_db_errors
    def is_valid(self, path: StorePath) -> bool:
        return self.db.execute("select 1 from ValidPaths where path = ?", (path.path,)).fetchone() is not None

    @_db_errors
    def all_paths(self) -> list[StorePath]:
        """Every valid path, sorted; rows whose path is not a valid store path are left out (see
        `invalid_rows`), so one bad row never hides the rest."""
        return sorted(p for p in map(store_path_of_row, self._all_rows()) if p is not None)

    @_db_errors
    def invalid_rows(self) -> list[str]:
        """The `path` column of rows that do not hold a valid store path (a corrupt database)."""
        return sorted(text for text in self._all_rows() if store_path_of_row(text) is None)

    def _all_rows(self) -> list[str]:
        return [str(p) for (p,) in self.db.execute("select path from ValidPaths")]

    def nar_from_path(
        self, path: StorePath, sink: Sink, *, known: PathInfo | None = None, check: bool = True
    ) -> int:
        """The path's NAR, dumped with the store's case-hack setting (original names), hashed on the way:
        `HashMismatchError` when it no longer matches the registration (`known`, else read now).
        With `check=False` only the path's validity is checked (as `nix-store --serve` sends a NAR),
        and the sink may be a `CopySink`: large files then go to it as descriptors."""
        from xstore.nar.dump import dump_path

        if not check:
            if (known is None or known.path != path) and not self.query_valid_paths((path,)):
                raise InvalidPathError(f"path '{path}' is not valid in {self.describe()}", path=path.path)
            return dump_path(self.real_path(path), sink, case_hack=self.settings.case_hack)
        info = known if known is not None and known.path == path else self.require(path)
        hasher = HashSink(HashAlgorithm.SHA256)

        def write(block: bytes) -> None:
            hasher.update(block)
            sink(block)

        size = dump_path(self.real_path(path), write, case_hack=self.settings.case_hack)
        # A NULL narSize (Nix's schema allows it) is unknown, not zero: only the hash can be checked.
        if hasher.digest() != info.nar_hash or (info.nar_size and size != info.nar_size):
            raise HashMismatchError(
                f"path '{path}' was modified: registered NAR hash {info.nar_hash_sri()} "
                f"({info.nar_size} bytes), now {hasher.format(HashFormat.SRI)} ({size} bytes)",
                path=path.path,
            )
        return size

    def add_to_store(
        self,
        info: PathInfo,
        read: Read,
        *,
        check_sigs: bool = True,
        on_registered: Callable[[], None] | None = None,
    ) -> bool:
        """See `Store.add_to_store`. With `check_sigs`, a path that is neither content-addressed (and
        checking out) nor signed by a trusted key (`trusted_keys`) is refused before its NAR is read
        (`SignatureError`), as Nix's `require-sigs`. `on_registered()` is called once the path is
        registered, before its lock is released (see `PathAdder.commit`); what it raises is raised, and
        the path stays registered."""
        from xstore.store_add import add_nar

        return add_nar(self, info, read, check_sigs=check_sigs, on_registered=on_registered)

    @_db_errors
    def register(self, info: PathInfo) -> None:
        """Add `info` to the database in one transaction. Every reference must be valid already
        (or be the path itself); raises `InvalidPathError` otherwise, with nothing registered."""
        if self.read_only:
            raise StoreError(f"the store at '{self.root}' is open read-only")
        if not info.references:
            self.db.execute(_INSERT_PATH, _path_row(info))  # one statement is a transaction of its own
            return
        self._insert_all([info])

    def _insert_all(self, infos: list[PathInfo]) -> None:
        """Register `infos` (dependencies before dependents) in one transaction: all or none."""
        db = self.db
        db.execute("begin immediate")
        try:
            ids: dict[str, int | None] = {}
            for info in infos:
                ids[info.path.path] = db.execute(_INSERT_PATH, _path_row(info)).lastrowid
            wanted = {ref.path for info in infos for ref in info.references} - ids.keys()
            for batch in batched(wanted):
                marks = ",".join("?" * len(batch))
                query = f"select path, id from ValidPaths where path in ({marks})"  # noqa: S608 (placeholders only)
                ids.update(db.execute(query, batch).fetchall())
            refs: list[tuple[int | None, int | None]] = []
            for info in infos:
                rid = ids[info.path.path]
                for ref in info.references:
                    if ref.path not in ids:
                        raise InvalidPathError(
                            f"cannot register '{info.path}': its reference '{ref}' is not valid",
                            path=ref.path,
                        )
                    refs.append((rid, ids[ref.path]))
            if refs:
                db.executemany("insert or replace into Refs (referrer, reference) values (?, ?)", refs)
            db.execute("commit")
        except BaseException:
            if db.in_transaction:
                db.execute("rollback")
            raise

    # -- registrations deferred while a copy runs -------------------------------------------------------

    @contextlib.contextmanager
    def registering_together(
        self, on_commit: Callable[[set[StorePath]], None] | None = None
    ) -> Iterator[None]:
        """Inside, a path that `add_to_store` has moved into place (this thread's adds) is registered
        later, together with the ones after it, in one short transaction (`commit_registrations`): a
        SQLite commit per path costs more than the registration itself. Until then the path keeps its
        lock and its temporary root, so nobody else adds, removes or collects it meanwhile, and the
        reference checks of this thread's later paths count it as valid. Nothing waits while holding
        such locks: a path lock that is not free at once commits first. `on_commit(paths)` is told
        which paths each commit registered.

        The caller commits before anything that may take long (`commit_registrations_if_due`, and before
        a read that may wait); the end of the block commits, also when it ends with an error, so the
        paths added before a failing one are registered. Nested, or while another thread's block runs,
        it changes nothing."""
        mine: _Deferred | None = _Deferred(on_commit)
        with self._db_lock:
            if self._deferred is not None:
                mine = None
            else:
                self._deferred = mine
        if mine is None:
            yield
            return
        try:
            yield
        finally:
            try:
                self.commit_registrations()
            finally:
                with self._db_lock:
                    if self._deferred is mine:
                        self._deferred = None

    def _deferring(self) -> _Deferred | None:
        """The deferred registrations, when they are this thread's."""
        deferred = self._deferred
        return deferred if deferred is not None and deferred.thread == threading.get_ident() else None

    def lock_for_add(self, path: StorePath) -> PathLock:
        """`lock(path)`, held for `register_or_defer`. With registrations deferred, a lock that is not
        free at once (another process's, or a byte this process holds for a deferred path) commits
        them first, so that this process never waits for a lock while holding others."""
        deferred = self._deferring()
        if deferred is not None and deferred.entries:
            lock = self.lock(path, blocking=False)
            if lock.acquired:
                return lock
            self.commit_registrations()
        return self.lock(path)

    def register_or_defer(self, info: PathInfo, lock: PathLock) -> bool:
        """Register `info` (its tree in place, `lock` held): now, returning False (the caller releases
        the lock), or inside `registering_together` at the next commit, returning True (the lock is the
        store's to release then). A deferred path whose lock the caller released by the commit (it was
        interrupted before it saw True, and removed the tree) is left out."""
        deferred = self._deferring()
        if deferred is None:
            self.register(info)
            return False
        if self.read_only:
            raise StoreError(f"the store at '{self.root}' is open read-only")
        if not deferred.entries:
            deferred.since = time.monotonic()
        deferred.entries.append((info, lock))
        return True

    def registered_or_deferred(self, paths: Iterable[StorePath]) -> set[StorePath]:
        """`query_valid_paths(paths)`, counting the paths whose registration this thread deferred."""
        paths = list(paths)
        deferred = self._deferring()
        found = self.query_valid_paths(paths)
        if deferred is not None and deferred.entries:
            waiting = {info.path for info, _ in deferred.entries}
            found.update(p for p in paths if p in waiting)
        return found

    def commit_registrations_if_due(self, nar_size: int) -> None:
        """Commit this thread's deferred registrations before a path whose NAR has `nar_size` bytes
        (0: unknown), when there are `DEFER_PATHS` of them, the first has waited `DEFER_SECONDS`, or
        the NAR is large or of unknown size."""
        deferred = self._deferring()
        if (
            deferred is not None
            and deferred.entries
            and (
                len(deferred.entries) >= DEFER_PATHS
                or not 0 < nar_size <= DEFER_NAR_SIZE
                or time.monotonic() - deferred.since > DEFER_SECONDS
            )
        ):
            self.commit_registrations()

    def commit_registrations(self) -> None:
        """Register this thread's deferred paths, in one transaction, and release their locks.

        When that transaction fails, they are registered one at a time, in order, up to the first that
        fails, which raises: the paths before it stay, as without the deferral, and the trees of the
        rest are removed. After an interrupt, the database is asked which it holds (the interrupt may
        have come just after a commit)."""
        deferred = self._deferring()
        if deferred is None or not deferred.entries:
            return
        entries: list[tuple[PathInfo, PathLock]] = []
        registered: list[StorePath] = []
        failed = True
        try:
            entries, deferred.entries = deferred.entries, []
            # A path whose lock is no longer held was given up by its adder (an interrupt came before
            # the adder knew the path was taken): its tree is not this process's to register.
            infos = [info for info, lock in entries if lock.acquired]
            try:
                self._register_all(infos)
                registered = [info.path for info in infos]
            except (StoreError, InvalidPathError):
                for info in infos:  # raises at the first that fails
                    self.register(info)
                    registered.append(info.path)
            failed = False
        except Exception:
            self.remove_unregistered([info.path for info, lock in entries if lock.acquired], registered)
            raise
        except BaseException:  # an interrupt, maybe just after a commit: only the database can tell
            self.remove_unregistered([info.path for info, lock in entries if lock.acquired])
            raise
        finally:
            for _, lock in entries:
                lock.release()
            if registered and deferred.on_commit is not None:
                if failed:  # told, without hiding the error
                    with contextlib.suppress(Exception):
                        deferred.on_commit(set(registered))
                else:
                    deferred.on_commit(set(registered))

    @_db_errors
    def _register_all(self, infos: list[PathInfo]) -> None:
        if len(infos) == 1:
            self.register(infos[0])  # one statement when the path has no references
        elif infos:
            self._insert_all(infos)

    def remove_unregistered(
        self, paths: list[StorePath], registered: Iterable[StorePath] | None = None
    ) -> None:
        """Remove the trees of `paths` (their locks held) that the database does not hold. When it
        cannot tell: those not in `registered` (the ones this process knows it registered), or, with
        None (after an interrupt), none (a tree left unregistered is removed by the next add or
        collection; a registered one must stay)."""
        try:
            valid = self.query_valid_paths(paths)
        except StoreError:
            if registered is None:
                return
            valid = set(registered)
        for path in paths:
            if path not in valid:
                remove_tree(self.real_path(path))

    @_db_errors
    def add_signatures(self, path: StorePath, sigs: Iterable[str]) -> bool:
        """Add `sigs` to `path`'s registration (Nix: `LocalStore::addSignatures`). Returns whether any
        was new. Raises `InvalidPathError` for a path that is not valid."""
        db = self.db
        db.execute("begin immediate")
        try:
            row = db.execute("select sigs from ValidPaths where path = ?", (path.path,)).fetchone()
            if row is None:
                raise InvalidPathError(f"path '{path}' is not valid in {self.describe()}", path=path.path)
            have = set(str(row[0]).split()) if row[0] else set()
            merged = have | set(sigs)
            if merged != have:
                db.execute(
                    "update ValidPaths set sigs = ? where path = ?", (" ".join(sorted(merged)), path.path)
                )
            db.execute("commit")
        except BaseException:
            if db.in_transaction:
                db.execute("rollback")
            raise
        return merged != have

    def sign(self, paths: Iterable[StorePath], key: Any) -> int:
        """Sign each of `paths` with `key` (a `signing.SecretKey`) and record the signatures (Nix:
        `nix store sign`). Returns how many signatures were new."""
        from xstore.signing import sign_path

        added = 0
        for path in paths:
            info = self.require(path)
            signed = sign_path(info.replace(sigs=()), key)
            added += self.add_signatures(path, signed.sigs)
        return added

    def _locks_dir(self) -> str:
        """`nix/var/xstore/locks`, made once per store object."""
        if self._locks is None:
            locks = self.xstore_dir / "locks"
            locks.mkdir(parents=True, exist_ok=True)
            self._locks = str(locks)
        return self._locks

    def lock(self, path: StorePath, *, blocking: bool = True) -> PathLock:
        """Lock `path` for adding it: xstore's own lock and, where safe, Nix's `<path>.lock`
        (`pathlocks.py` says why both). Without `blocking`, the lock's `acquired` says whether it was
        free."""
        locks = self._locks_dir()

        def lock_is_a_valid_path() -> bool:  # asked only when the lock file exists already
            try:
                lock_path = StorePath(path.hash_part, path.name + ".lock")
            except InvalidStorePathError:
                return False  # the name would be too long for a store path
            return self.is_valid(lock_path)

        own: str | tuple[ByteLockFile, int] = f"{locks}/path-{path.hash_part}"
        if HAVE_BYTE_LOCKS:
            # The hash part read as a base-36 number (nix32's letters are digits of base 36): one byte
            # per hash part, anywhere in 62 bits.
            own = (self._byte_locks, int(path.hash_part, 36) & _BYTE_LOCK_MASK)
        return PathLock(
            own,
            self.real_path(path) + b".lock",
            path.path,
            lock_is_a_valid_path,
            blocking=blocking,
        )

    def try_lock(self, path: StorePath) -> PathLock | None:
        """`lock(path)` if nobody holds it now, else None (the garbage collector skips such paths)."""
        lock = self.lock(path, blocking=False)
        return lock if lock.acquired else None

    # -- temporary roots (Nix's protocol: temproots.py) ------------------------------------------------

    def add_temp_root(self, path: StorePath) -> None:
        """Keep `path` from being garbage-collected (by xstore or by Nix) until this store is closed:
        recorded in `nix/var/nix/temproots/<pid>`, or told to a collector that is running now."""
        if self._temp_roots is None:
            self._temp_roots = roots_file(self.state_dir)
        self._temp_roots.add(path)

    # -- temporary space inside the store -------------------------------------------------------------

    @contextlib.contextmanager
    def temp_dir(self) -> Iterator[bytes]:
        """A fresh private directory inside the real store directory (same filesystem, so a rename
        moves a finished path into place), removed on exit. It is guarded by a lock in
        `nix/var/xstore/locks`, so `clean_temp` can tell a live one from one a killed process left.

        Its name is a made-up store path (`<random hash>-xstore-tmp`) held as a temporary root: a
        garbage collector, xstore's or Nix's (which deletes whatever else it finds in the store
        directory), leaves it alone while this process lives."""
        token = encode_nix32(os.urandom(20))
        self.add_temp_root(StorePath(token, TEMP_NAME))
        locks = self.xstore_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        lock_fd = lock_file(locks / token)
        path = os.fsencode(self.real_store_dir / f"{token}-{TEMP_NAME}")
        try:
            os.mkdir(path, 0o700)
            try:
                yield path
            finally:
                remove_tree(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(locks / token)
            assert lock_fd is not None
            os.close(lock_fd)

    @property
    def scratch_dir(self) -> bytes | None:
        """This store object's scratch directory while it has one (see `scratch_entry`)."""
        return self._scratch_dir if self._scratch is not None else None

    def scratch_entry(self) -> tuple[int, bytes]:
        """A fresh name in this store object's scratch directory, with the directory's descriptor: one
        private temporary directory inside the real store directory (`temp_dir`), made and opened the
        first time a path is added and kept until `close()`, so that adding many paths costs no
        directory of its own per path. The descriptor stays this store object's; the name does not
        exist yet, and whoever makes it there removes it again unless it is moved into place. Once it is
        made, `scratch_keeps_modes` tells whether what is created there gets exactly the mode asked for
        (`restore.creation_keeps_modes`, asked once: the umask is the process's)."""
        with self._db_lock:
            if self._scratch is None:
                with contextlib.ExitStack() as stack:
                    self._scratch_dir = stack.enter_context(self.temp_dir())
                    self._scratch_fd = os.open(self._scratch_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    stack.callback(self._close_scratch_fd)
                    from xstore.nar.restore import creation_keeps_modes

                    self.scratch_keeps_modes = creation_keeps_modes(self._scratch_fd)
                    self._scratch = stack.pop_all()
            return self._scratch_fd, self._scratch_dir + b"/%d" % next(self._scratch_count)

    def _close_scratch_fd(self) -> None:
        fd, self._scratch_fd = self._scratch_fd, -1
        os.close(fd)

    def clean_temp(self) -> list[str]:
        """Remove what killed xstore processes left in the store: temporary directories whose lock is
        free. Returns their names."""
        removed = []
        locks = self.xstore_dir / "locks"
        with os.scandir(self.real_store_dir) as it:
            names = [(e.name, token) for e in it if (token := temp_token(e.name)) is not None]
        for name, token in names:
            locks.mkdir(parents=True, exist_ok=True)
            fd = lock_file(locks / token, blocking=False)
            if fd is None:
                continue  # alive
            try:
                remove_tree(os.fsencode(self.real_store_dir / name))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(locks / token)
                removed.append(name)
            finally:
                os.close(fd)
        return removed

    @_db_errors
    def paths_with_hash_part(self, hash_part: str) -> list[StorePath]:
        """Every valid path whose hash part is `hash_part` (on a case-sensitive filesystem there may be
        several, differing in name)."""
        prefix = f"{STORE_DIR}/{hash_part}-"
        rows = self.db.execute(
            "select path from ValidPaths where path >= ? and path < ?", (prefix, prefix[:-1] + ".")
        )
        return [parse_store_path(p) for (p,) in rows]

    def _listed_exactly(self, name: str) -> bool:
        """Whether the store directory lists `name` itself, not merely answers to it (a filesystem that
        folds case finds `Hello` when asked for `hello`)."""
        with os.scandir(self.real_store_dir) as it:
            return any(entry.name == name for entry in it)

    def remove_invalid_leftover(self, path: StorePath) -> None:
        """Delete whatever occupies `path`'s real location while it is not valid (a killed import left
        it after the rename), as Nix does before adding a path. Call with the path lock held.

        Nothing that belongs to a valid path is ever removed, whatever the filesystem folds: the entry
        must be listed under exactly this name (on a case-folding filesystem a valid `<h>-Hello` answers
        to `<h>-hello`), and must not be the same file as a valid path with the same hash part. Raises
        `StoreError` when the place is taken by something else; then nothing is changed.
        """
        real = self.real_path(path)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return
        if self.is_valid(path):
            raise StoreError(f"'{path}' is valid; refusing to remove it")
        if not self._listed_exactly(path.base):
            raise StoreError(
                f"cannot add '{path}': the filesystem of the store at '{self.root}' folds case or "
                "normalisation, and another entry of the store directory already answers to this name "
                "(two store paths whose names differ only so cannot both live in this store)",
                path=path.path,
            )
        for other in self.paths_with_hash_part(path.hash_part):
            try:
                if other != path and os.path.samestat(st, os.lstat(self.real_path(other))):
                    raise StoreError(
                        f"cannot add '{path}': its place in the store is the valid path '{other}'",
                        path=path.path,
                    )
            except FileNotFoundError:
                continue
        remove_tree(real)

    # -- referrers and derivation outputs (queries, garbage collection) -------------------------------

    @_db_errors
    def query_referrers(self, path: StorePath) -> set[StorePath]:
        """The valid paths that refer to `path` (itself included when it refers to itself).
        Nix: `LocalStore::queryReferrers`."""
        rows = self.db.execute(
            "select path from Refs join ValidPaths on referrer = id "
            "where reference = (select id from ValidPaths where path = ?)",
            (path.path,),
        )
        return {parse_store_path(p) for (p,) in rows}

    @_db_errors
    def query_derivation_outputs(self, drv: StorePath) -> dict[str, StorePath]:
        """The outputs a valid derivation `drv` declares (output name -> path), from the
        `DerivationOutputs` table; empty when the derivation is not valid or was registered without
        them. Nix: `queryStaticPartialDerivationOutputMap`."""
        rows = self.db.execute(
            "select d.id, d.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where v.path = ?",
            (drv.path,),
        )
        return {str(name): parse_store_path(p) for name, p in rows}

    @_db_errors
    def query_valid_derivers(self, path: StorePath) -> set[StorePath]:
        """The valid derivations that declare `path` as an output. Nix: `queryValidDerivers`."""
        rows = self.db.execute(
            "select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?",
            (path.path,),
        )
        return {parse_store_path(p) for (p,) in rows}

    @_db_errors
    def reference_graph(self) -> tuple[dict[str, list[str]], dict[str, str], dict[str, list[str]]]:
        """The whole graph at once, for the garbage collector: every valid path's references (path
        texts), the derivers recorded for valid paths, and each valid derivation's declared outputs that
        are valid.

        The reads share one read transaction, so they see one snapshot of the database: a path another
        process registers meanwhile (Nix importing beside a collection) is in all of them or in none."""
        db = self.db
        db.execute("begin")
        try:
            refs: dict[str, list[str]] = {p: [] for (p,) in db.execute("select path from ValidPaths")}
            rows = db.execute(
                "select a.path, b.path from Refs join ValidPaths a on referrer = a.id "
                "join ValidPaths b on reference = b.id"
            )
            for referrer, reference in rows:
                refs[referrer].append(reference)
            derivers = dict(db.execute("select path, deriver from ValidPaths where deriver is not null"))
            outputs: dict[str, list[str]] = {}
            rows = db.execute(
                "select v.path, d.path from DerivationOutputs d join ValidPaths v on d.drv = v.id"
            )
            for drv, out in rows:
                if out in refs:
                    outputs.setdefault(drv, []).append(out)
        finally:
            if db.in_transaction:
                db.execute("commit")
        return refs, derivers, outputs

    @_db_errors
    def unregister(self, path: StorePath) -> StorePath | None:
        """Make `path` invalid in one transaction, unless another valid path refers to it: then nothing
        changes and that referrer is returned. Returns None when done (or when it was not valid). The
        caller deletes the contents after, so a crash in between leaves an invalid path (garbage), never
        a valid one without its contents. Nix: `invalidatePathChecked`."""
        db = self.db
        db.execute("begin immediate")
        try:
            row = db.execute("select id from ValidPaths where path = ?", (path.path,)).fetchone()
            referrer = None
            if row is not None:
                referrer = db.execute(
                    "select path from Refs join ValidPaths on referrer = id "
                    "where reference = ? and referrer != ? limit 1",
                    (row[0], row[0]),
                ).fetchone()
                if referrer is None:
                    db.execute("delete from ValidPaths where id = ?", (row[0],))
            db.execute("commit")
        except BaseException:
            if db.in_transaction:
                db.execute("rollback")
            raise
        return parse_store_path(referrer[0]) if referrer is not None else None


def _read_only_lock(path: Path, what: str) -> int:
    """The big lock, shared, for a reader that may not (or need not) write: opened read-only when it
    exists (flock needs no write access), skipped (-1) when it cannot be opened at all."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return -1
    try:
        flock_fd(fd, True, True, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def store_path_of_row(text: str) -> StorePath | None:
    """The store path a ValidPaths row names, or None when the row is corrupt."""
    try:
        return parse_store_path(text)
    except ValueError:
        return None


def store_path_of(store_dir_entry: str) -> StorePath | None:
    """The store path for a name in the real store directory, or None for other entries."""
    try:
        return parse_store_path(f"{STORE_DIR}/{store_dir_entry}")
    except ValueError:
        return None
