"""What the commands scripts call most do, without typer: `nar dump`, `nar restore`, `nar ls`, `nar cat`,
`hash path`, `hash file`, `import`, `export`, `copy` and `serve ssh` (which Nix starts once per
connection), and the store arguments every store command shares.

Each function is the whole body of its command. The typer commands in `nar.py`, `hash.py`, `store.py`
and `serve.py` declare the options and help and call these; the fast path (`fast.py`) parses the plain
forms of the same command lines itself and calls them directly, so that a run of `xstore nar dump` does
not pay for typer and click.
Options arrive already parsed: strings, bools, floats, and the `CaseHackOpt` and `FoldOpt` choices.
"""

from __future__ import annotations

import os
import sys

from xstore.cli.common import (
    CaseHackOpt,
    FoldOpt,
    Progress,
    atomic_output,
    cli_errors,
    descriptor_of,
    err,
    file_size,
    open_input,
    require_stdout,
    stdout_binary,
)

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import BinaryIO

    from xstore.hashing import HashAlgorithm, HashFormat
    from xstore.store import LocalStore
    from xstore.storeapi import Store
    from xstore.storepath import StorePath


def nar_dump(path: str, output: str | None, case_hack: CaseHackOpt, exclude: Sequence[str] | None) -> None:
    from xstore.nar.dump import dump_path

    with cli_errors(), Progress("dumping") as progress, atomic_output(output) as sink:
        dump_path(
            path,
            sink,
            case_hack=case_hack is not CaseHackOpt.off,
            exclude=exclude or (),
            progress=progress,
        )


def nar_restore(
    dest: str, input_: str | None, case_hack: CaseHackOpt, case_fold: FoldOpt, json_: bool
) -> None:
    from xstore import sniff
    from xstore.casehack import CaseHackMode, Fold
    from xstore.errors import UsageError
    from xstore.nar.restore import restore_path

    with cli_errors():
        if json_:
            require_stdout()  # a closed standard output stops the restore before it starts
        with open_input(input_, raw=True) as f:
            if f.isatty():
                raise UsageError("no archive on stdin: pipe one in or use -i FILE")
            kind, method, read = sniff.open_input(f.read)
            sniff.expect(kind, sniff.Kind.NAR, input_ or "the input")
            plain = method.value == "none"
            with Progress("restoring", file_size(f) if plain else None) as progress:
                result = restore_path(
                    dest,
                    read,
                    case_hack=CaseHackMode(case_hack.value),
                    fold=None if case_fold is FoldOpt.auto else Fold(case_fold.value),
                    progress=progress,
                    source_fd=descriptor_of(f) if plain else None,
                )
        if json_:
            import json

            summary: dict[str, object] = {
                "destination": os.path.abspath(dest),
                "narSize": result.nar_size,
                "caseHack": result.case_hack,
                "fold": result.fold.value,
                "renamed": result.renamed,
            }
            if result.probed is not None:
                summary["filesystem"] = {
                    "caseInsensitive": result.probed.case_insensitive,
                    "unicodeCaseInsensitive": result.probed.unicode_case_insensitive,
                    "normalizationInsensitive": result.probed.normalization_insensitive,
                }
            sys.stdout.write(json.dumps(summary) + "\n")
        elif result.renamed:
            err(f"restored {dest}: case hack renamed {result.renamed} name(s) ({result.fold.value} fold)")


def nar_ls(nar: str, path: str, recursive: bool, long: bool, directory: bool, json_: bool) -> None:
    from xstore.errors import UsageError
    from xstore.nar.listing import NarFile, dump_json, listing_json, listing_lines

    with cli_errors():
        if json_ and directory:
            raise UsageError("'--directory' is useless with '--json'")
        with open(nar, "rb") as f:
            index = NarFile(f, nar).index
        node = index.lookup(path)
        out = sys.stdout.buffer
        if json_:
            out.write(dump_json(listing_json(node, recursive=recursive)).encode() + b"\n")
        else:
            for line in listing_lines(index, path, recursive=recursive, long=long, directory=directory):
                out.write(line + b"\n")
        out.flush()


def _seekable(f: BinaryIO) -> BinaryIO:
    """`f`, or for a pipe a temporary file holding all it gives: `nar cat` reads a file's contents from
    their place once the whole archive has been checked (`nix nar cat` reads a pipe whole too)."""
    if f.seekable():
        return f
    import shutil
    import tempfile

    spool = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
    shutil.copyfileobj(f, spool, 1 << 20)
    spool.seek(0)
    return spool


def nar_cat(nar: str, path: str) -> None:
    from xstore.errors import XstoreError
    from xstore.nar.listing import NarFile, RegularNode

    with cli_errors(), open(nar, "rb") as given, _seekable(given) as f:
        archive = NarFile(f, nar)
        node = archive.index.lookup(path)
        if not isinstance(node, RegularNode):
            raise XstoreError(f"path '{path}' is not a regular file in the NAR")
        out = stdout_binary() if node.size else sys.stdout.buffer
        for block in archive.contents(node):
            out.write(block)
        out.flush()


def _hash_choices(type_: str, format_: str) -> tuple[HashAlgorithm, HashFormat]:
    """The --type and --format options, parsed; a bad value is command-line misuse (exit 2)."""
    from xstore.errors import InvalidHashError, UsageError
    from xstore.hashing import HashAlgorithm, HashFormat

    try:
        return HashAlgorithm.parse(type_), HashFormat.parse(format_)
    except InvalidHashError as e:
        raise UsageError(str(e)) from None


def hash_path(paths: Sequence[str], type_: str, format_: str, case_hack: CaseHackOpt) -> None:
    from xstore.hashing import HashSink
    from xstore.nar.dump import dump_path

    with cli_errors():
        algorithm, fmt = _hash_choices(type_, format_)
        for p in paths:
            sink = HashSink(algorithm)
            with Progress(f"hashing {p}") as progress:
                dump_path(p, sink.update, case_hack=case_hack is not CaseHackOpt.off, progress=progress)
            sys.stdout.write(sink.format(fmt) + "\n")


def hash_file(paths: Sequence[str], type_: str, format_: str) -> None:
    from xstore.hashing import HashSink

    with cli_errors():
        algorithm, fmt = _hash_choices(type_, format_)
        for p in paths:
            sink = HashSink(algorithm)
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    sink.update(block)
            sys.stdout.write(sink.format(fmt) + "\n")


# -- store commands ------------------------------------------------------------------------------------


def open_any(url: str | None) -> Store:
    """A store of any kind, for commands that only read from it."""
    from xstore.stores import open_store

    return open_store(url, read_only=True)


def open_local(
    url: str | None, what: str, create: tuple[CaseHackOpt, FoldOpt] | None = None, *, writes: bool = False
) -> LocalStore:
    """A local store for the commands that work only on one (`import`, `verify`, `store init`); with
    `create` (the case-hack options for a new store), created when missing. `writes` (gc, optimise,
    repair): a read-only bind-mounted store directory is made writable for this process, as `create`
    does."""
    from xstore.casehack import CaseHackMode, Fold
    from xstore.errors import UnsupportedError
    from xstore.store import LocalStore
    from xstore.stores import open_store
    from xstore.storeurl import parse_store_url

    parsed = parse_store_url(url)
    if parsed.scheme != "local":
        raise UnsupportedError(
            f"'{what}' works on a local store, and '{parsed.base()}' is not one"
            + ("; import locally, then 'xstore copy --to' it" if what == "import" else "")
        )
    if create is None:
        if writes:
            from xstore.stores import ensure_writable, local_root

            ensure_writable(local_root(parsed) / "nix" / "store")
        store = open_store(parsed, read_only=not writes)
    else:
        case_hack, fold = create
        store = open_store(
            parsed,
            create=True,
            case_hack=CaseHackMode(case_hack.value),
            fold=None if fold is FoldOpt.auto else Fold(fold.value),
        )
    assert isinstance(store, LocalStore)
    return store


def store_paths(store: Store, args: Sequence[str], recursive: bool) -> list[StorePath]:
    from xstore.stores import resolve_paths

    wanted = resolve_paths(store, list(args))
    if recursive:
        return sorted(store.query_closure(wanted))
    return sorted(set(wanted))


def import_paths(store: str | None, input_: str | None, case_hack: CaseHackOpt, case_fold: FoldOpt) -> None:
    from xstore import sniff
    from xstore.errors import StreamClosedError, UsageError
    from xstore.import_export import ImportResult, import_stream

    with cli_errors(), open_local(store, "import", (case_hack, case_fold)) as s:
        s.clean_temp()
        with open_input(input_) as f:
            if f.isatty():
                raise UsageError("no export stream on stdin: pipe one in or use -i FILE")
            # read1: what a pipe has now, so each path is imported as soon as its record is complete.
            kind, method, read = sniff.open_input(getattr(f, "read1", f.read))
            sniff.expect(kind, sniff.Kind.EXPORT, input_ or "the input")
            total = file_size(f) if method.value == "none" else None
            require_stdout()  # a closed standard output stops the import before it starts
            with Progress("importing", total) as progress:

                def show(result: ImportResult) -> None:
                    progress.item(result.path.path)
                    try:
                        progress.echo(result.path.path)
                    except OSError as e:
                        raise StreamClosedError(
                            f"standard output went away after '{result.path}' was imported; the rest of "
                            "the stream was not imported"
                        ) from e

                import_stream(s, read, on_path=show, progress=progress)


def export_paths(paths: Sequence[str], store: str | None, recursive: bool, output: str | None) -> None:
    from xstore.import_export import export_paths as export_stream

    with cli_errors(), open_any(store) as s:
        wanted = store_paths(s, paths, recursive)
        with Progress("exporting") as progress, atomic_output(output) as sink:
            export_stream(s, wanted, sink, progress=progress)


def copy(
    paths: Sequence[str],
    from_: str | None,
    to: str | None,
    recursive: bool,
    case_hack: CaseHackOpt,
    case_fold: FoldOpt,
    no_check_sigs: bool,
    trusted_public_keys: str | None,
) -> None:
    from xstore.casehack import CaseHackMode, Fold
    from xstore.copy import CopyResult, copy_paths, plan_copy
    from xstore.errors import UsageError
    from xstore.stores import open_store
    from xstore.storeurl import parse_store_url

    with cli_errors():
        if parse_store_url(from_) == parse_store_url(to):
            raise UsageError("--from and --to name the same store")
        # The destination first: making a read-only store writable must happen before any thread starts.
        with open_store(
            to,
            create=True,
            case_hack=CaseHackMode(case_hack.value),
            fold=None if case_fold is FoldOpt.auto else Fold(case_fold.value),
        ) as dst:
            clean = getattr(dst, "clean_temp", None)
            if clean is not None:
                clean()
            trust_keys = getattr(dst, "trust_keys", None)
            if trusted_public_keys and trust_keys is not None:
                trust_keys([trusted_public_keys])
            with open_store(from_, read_only=True) as src:
                plan = plan_copy(src, dst, store_paths(src, paths, False), recursive=recursive)
                with Progress("copying", plan.bytes_to_copy) as progress:
                    done = 0

                    def show(result: CopyResult) -> None:
                        if result.copied:
                            progress.item(result.path.path)
                            progress.echo(result.path.path)

                    def moved(n: int) -> None:
                        nonlocal done
                        done += n
                        progress.update(done)

                    copy_paths(
                        src,
                        dst,
                        [],
                        plan=plan,
                        on_path=show,
                        on_bytes=moved,
                        check_sigs=False if no_check_sigs else None,
                    )


def serve_ssh(store: str | None, write: bool, serve: bool, timeout: float, idle_timeout: float) -> None:
    """`xstore serve ssh`: the `nix-store --serve` protocol on stdin and stdout (`serve` is the flag Nix
    appends, accepted and ignored)."""
    from xstore.remote.channel import Channel
    from xstore.serve.ssh import serve_ssh as serve_on
    from xstore.stores import open_store

    del serve
    with cli_errors():
        if sys.stdin.isatty() or sys.stdout.isatty():
            from xstore.errors import UsageError

            raise UsageError(
                "'xstore serve ssh' speaks a binary protocol on stdin and stdout; run it from ssh or Nix "
                "(remote-program), not from a terminal"
            )
        blocking = (os.get_blocking(0), os.get_blocking(1))
        try:
            with open_store(store, create=write) as s:
                channel = Channel(0, 1, peer="the client", timeout=timeout)
                serve_on(s, channel, write=write, idle_timeout=idle_timeout)
        finally:
            os.set_blocking(0, blocking[0])
            os.set_blocking(1, blocking[1])
