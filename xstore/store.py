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
import json
import os
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from xstore.casehack import CaseHackMode, Fold, probe, probe_read_only
from xstore.errors import HashMismatchError, InputError, InvalidPathError, StoreError
from xstore.fsops import remove_tree
from xstore.hashing import HashAlgorithm, HashFormat, HashSink, parse_hash
from xstore.notices import notice
from xstore.storeapi import PathInfo, Read, Sink, Store, batched
from xstore.storepath import HASH_PART_LEN, STORE_DIR, StorePath, parse_store_path

SCHEMA_VERSION: Final = 10
SETTINGS_VERSION: Final = 1

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

TEMP_PREFIX: Final = ".xstore-tmp-"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """xstore's own settings for one store, outside Nix's schema."""

    case_hack: bool
    fold: Fold

    def to_json(self) -> dict[str, Any]:
        return {"version": SETTINGS_VERSION, "caseHack": self.case_hack, "caseFold": self.fold.value}


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


def _lock_file(path: Path | bytes, shared: bool, blocking: bool = True) -> int | None:
    """Open (creating, mode 0600) and flock `path`. None if `blocking` is off and it is taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class PathLock:
    """Nix's lock on a store path being added: `<real path>.lock`, exclusive.

    A lock file with contents is stale (its owner deleted it after use and wrote "d" into it, so a
    process still waiting on that inode knows to retry): take it again from the start. On release,
    the file is unlinked first and only then marked "d", so no stale file is ever left linked
    (Nix 2.8 spins forever on one). Nix: pathlocks.cc `PathLocks::lockPaths`, `deleteLockFile`.
    """

    def __init__(self, lock_path: bytes) -> None:
        self.lock_path = lock_path
        while True:
            fd = _lock_file(lock_path, shared=False)
            assert fd is not None
            if os.fstat(fd).st_size == 0:
                self._fd = fd
                return
            os.close(fd)  # stale: deleted by its last owner; a new file will be made

    def release(self, delete: bool = True) -> None:
        if self._fd < 0:
            return
        if delete:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
            with contextlib.suppress(OSError):
                os.write(self._fd, b"d")
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> PathLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


P = ParamSpec("P")
R = TypeVar("R")


def _db_errors(method: Callable[Concatenate[LocalStore, P], R]) -> Callable[Concatenate[LocalStore, P], R]:
    """One database user at a time (the connection is shared by the threads of a copy), and SQLite
    failures (a corrupt or locked-up database) reported as `StoreError`, not as bugs."""

    def wrapper(self: LocalStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with self._db_lock:
                return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise StoreError(f"the store database '{self.db_dir / 'db.sqlite'}' cannot be used: {e}") from e

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class LocalStore(Store):
    """An open local store. Use as a context manager, or call `close()`.

    Holds the big lock shared and one SQLite connection, which threads take turns to use.
    """

    def __init__(self, root: Path | str, *, _create: bool = False) -> None:
        self.root = Path(root).absolute()
        self.url = str(self.root)
        self.real_store_dir = self.root / "nix" / "store"
        self.state_dir = self.root / "nix" / "var" / "nix"
        self.db_dir = self.state_dir / "db"
        self.xstore_dir = self.root / "nix" / "var" / "xstore"
        self._big_lock = -1
        self._probed: StoreSettings | None = None
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.RLock()
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
    def open(cls, root: Path | str) -> LocalStore:
        """Open an existing store (made by xstore or by Nix). Raises `StoreError` if there is none."""
        return cls(root)

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
        fd = _lock_file(big_lock, shared=True, blocking=False)
        if fd is None:
            notice(f"waiting for the big lock of the store at '{self.root}', which another process holds")
            fd = _lock_file(big_lock, shared=True)
        assert fd is not None
        self._big_lock = fd
        schema_file = self.db_dir / "schema"
        version = 0
        if schema_file.exists():
            text = schema_file.read_text(errors="replace")
            if not text.strip().isdigit():
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
        self._db = self._connect()
        if version == 0:
            self._create_schema(schema_file)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.db_dir / "db.sqlite", isolation_level=None, timeout=3600.0, check_same_thread=False
        )
        db.execute("pragma foreign_keys = 1")
        db.execute("pragma synchronous = normal")
        if db.execute("pragma main.journal_mode").fetchone()[0] != "wal":
            db.execute("pragma main.journal_mode = wal")
        db.execute("pragma wal_autocheckpoint = 40000")
        return db

    def _create_schema(self, schema_file: Path) -> None:
        # Upgrade the big lock to exclusive while the schema is made, as Nix does.
        fcntl.flock(self._big_lock, fcntl.LOCK_EX)
        try:
            if not schema_file.exists():
                self.db.executescript(_SCHEMA)
                tmp = schema_file.with_name(f".schema.{secrets.token_hex(4)}")
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
        settings = StoreSettings(hack, fold if fold is not None else behaviour.fold)
        self.xstore_dir.mkdir(parents=True, exist_ok=True)
        path = self.xstore_dir / "settings.json"
        tmp = path.with_name(f".settings.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(settings.to_json(), indent=2) + "\n")
        os.replace(tmp, path)

    def _read_settings(self) -> StoreSettings | None:
        path = self.xstore_dir / "settings.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read '{path}': {e}") from e
        try:
            return StoreSettings(bool(data["caseHack"]), Fold(data["caseFold"]))
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

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._big_lock >= 0:
            os.close(self._big_lock)
            self._big_lock = -1

    def __enter__(self) -> LocalStore:
        return self

    def describe(self) -> str:
        return f"the store at '{self.root}'"

    # -- paths ---------------------------------------------------------------------------------------

    def real_path(self, path: StorePath) -> bytes:
        return os.fsencode(self.real_store_dir / path.base)

    @_db_errors
    def query_path_info(self, path: StorePath) -> PathInfo | None:
        """The path's registration, or None if it is not valid. A row that cannot be read (a corrupt
        hash, a bad reference) raises `StoreError` naming the path."""
        row = self.db.execute(
            "select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca "
            "from ValidPaths where path = ?",
            (path.path,),
        ).fetchone()
        if row is None:
            return None
        rid, hash_text, reg_time, deriver, nar_size, ultimate, sigs, ca = row
        try:
            refs = sorted(
                parse_store_path(r)
                for (r,) in self.db.execute(
                    "select path from Refs join ValidPaths on reference = id where referrer = ?", (rid,)
                )
            )
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

    def is_valid(self, path: StorePath) -> bool:
        return bool(self.query_valid_paths([path]))

    @_db_errors
    def all_paths(self) -> list[StorePath]:
        return sorted(parse_store_path(p) for (p,) in self.db.execute("select path from ValidPaths"))

    def nar_from_path(self, path: StorePath, sink: Sink) -> int:
        """The path's NAR, dumped with the store's case-hack setting (original names), hashed on the way:
        `HashMismatchError` when it no longer matches the registration."""
        from xstore.nar.dump import dump_path

        info = self.require(path)
        hasher = HashSink(HashAlgorithm.SHA256)

        def write(block: bytes) -> None:
            hasher.update(block)
            sink(block)

        size = dump_path(self.real_path(path), write, case_hack=self.settings.case_hack)
        if hasher.digest() != info.nar_hash or size != info.nar_size:
            raise HashMismatchError(
                f"path '{path}' was modified: registered NAR hash {info.nar_hash_sri()} "
                f"({info.nar_size} bytes), now {hasher.format(HashFormat.SRI)} ({size} bytes)",
                path=path.path,
            )
        return size

    def add_to_store(self, info: PathInfo, read: Read, *, check_sigs: bool = True) -> bool:
        from xstore.store_add import add_nar

        return add_nar(self, info, read)

    def add_temp_root(self, path: StorePath) -> None:
        """Keep `path` from garbage collection (Nix's or xstore's) until this process exits: Nix's
        per-process temporary roots file (`xstore.temproots`)."""
        from xstore.temproots import add_temp_root

        add_temp_root(self.state_dir, path)

    @_db_errors
    def query_derivation_outputs(self, drv: StorePath) -> list[StorePath]:
        """The output paths recorded for the derivation `drv` (Nix's DerivationOutputs), valid or not."""
        rows = self.db.execute(
            "select o.path from DerivationOutputs o join ValidPaths v on o.drv = v.id where v.path = ?",
            (drv.path,),
        )
        return sorted(parse_store_path(p) for (p,) in rows)

    @_db_errors
    def register(self, info: PathInfo) -> None:
        """Add `info` to the database in one transaction. Every reference must be valid already
        (or be the path itself); raises `InvalidPathError` otherwise, with nothing registered."""
        db = self.db
        db.execute("begin immediate")
        try:
            db.execute(
                "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) "
                "values (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.path.path,
                    "sha256:" + info.nar_hash.hex(),
                    info.registration_time or int(time.time()),
                    info.deriver.path if info.deriver else None,
                    info.nar_size or None,
                    1 if info.ultimate else None,
                    " ".join(sorted(info.sigs)) or None,
                    info.ca,
                ),
            )
            (rid,) = db.execute("select id from ValidPaths where path = ?", (info.path.path,)).fetchone()
            for ref in info.references:
                row = db.execute("select id from ValidPaths where path = ?", (ref.path,)).fetchone()
                if row is None:
                    raise InvalidPathError(
                        f"cannot register '{info.path}': its reference '{ref}' is not valid", path=ref.path
                    )
                db.execute("insert or replace into Refs (referrer, reference) values (?, ?)", (rid, row[0]))
            db.execute("commit")
        except BaseException:
            db.execute("rollback")
            raise

    def lock(self, path: StorePath) -> PathLock:
        return PathLock(self.real_path(path) + b".lock")

    # -- temporary space inside the store -------------------------------------------------------------

    @contextlib.contextmanager
    def temp_dir(self) -> Iterator[bytes]:
        """A fresh private directory inside the real store directory (same filesystem, so a rename
        moves a finished path into place), removed on exit. It is guarded by a lock in
        `nix/var/xstore/locks`, so `clean_temp` can tell a live one from one a killed process left."""
        token = secrets.token_hex(8)
        locks = self.xstore_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock_file(locks / token, shared=False)
        path = os.fsencode(self.real_store_dir / (TEMP_PREFIX + token))
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

    def clean_temp(self) -> list[str]:
        """Remove what killed xstore processes left in the store: temporary directories whose lock is
        free. Returns their names."""
        removed = []
        locks = self.xstore_dir / "locks"
        with os.scandir(self.real_store_dir) as it:
            names = [e.name for e in it if e.name.startswith(TEMP_PREFIX)]
        for name in names:
            token = name[len(TEMP_PREFIX) :]
            locks.mkdir(parents=True, exist_ok=True)
            fd = _lock_file(locks / token, shared=False, blocking=False)
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

    def remove_invalid_leftover(self, path: StorePath) -> None:
        """Delete whatever occupies `path`'s real location while it is not valid (a killed import
        left it after the rename), as Nix does before adding a path. Call with the path lock held."""
        real = self.real_path(path)
        try:
            os.lstat(real)
        except FileNotFoundError:
            return
        if self.is_valid(path):
            raise StoreError(f"'{path}' is valid; refusing to remove it")
        remove_tree(real)


def store_path_of(store_dir_entry: str) -> StorePath | None:
    """The store path for a name in the real store directory, or None for other entries."""
    try:
        return parse_store_path(f"{STORE_DIR}/{store_dir_entry}")
    except ValueError:
        return None
