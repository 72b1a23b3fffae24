"""Store commands: `xstore store init`, `import`, `export`, `copy`, `path-info`, `verify`."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from xstore.cli.common import (
    CaseHackOpt,
    FoldOpt,
    Progress,
    atomic_output,
    cli_errors,
    file_size,
    open_input,
)

if TYPE_CHECKING:
    from xstore.store import LocalStore
    from xstore.storeapi import Store
    from xstore.storepath import StorePath

app = typer.Typer(help="Create and inspect stores.", no_args_is_help=True)

STORE_URL_HELP = (
    "a directory (a local store's root, holding nix/store and nix/var/nix/db), local?root=DIR, file://DIR, "
    "http(s)://HOST/PATH, s3://BUCKET, ssh://HOST, ssh-ng://HOST, unix:///SOCKET or daemon"
)
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URL",
        help=f"The store: {STORE_URL_HELP}. Default: $XSTORE_STORE, else a per-user data directory.",
        show_default=False,
    ),
]
PathsArg = Annotated[
    list[str],
    typer.Argument(
        help="Store paths: /nix/store/<hash>-<name>, a base name <hash>-<name>, or a link into the store "
        "such as ./result.",
        show_default=False,
    ),
]
RecursiveOpt = Annotated[
    bool, typer.Option("-r", "--recursive", help="Include everything the paths depend on.")
]
CaseHackStoreOpt = Annotated[
    CaseHackOpt,
    typer.Option(
        help="For a new store: rename case-colliding names with ~nix~case~hack~N. 'auto' probes the store's "
        "filesystem. Recorded in the store and used by every later command."
    ),
]
FoldStoreOpt = Annotated[
    FoldOpt, typer.Option(help="For a new store: 'ascii' as Nix; 'apfs' also Unicode case and NFC/NFD.")
]


def _open(url: str | None) -> Store:
    from xstore.stores import open_store

    return open_store(url)


def _open_local(url: str | None, what: str, create: tuple[CaseHackOpt, FoldOpt] | None = None) -> LocalStore:
    """A local store for the commands that work only on one (`import`, `verify`, `store init`); with
    `create` (the case-hack options for a new store), created when missing."""
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
        store = open_store(parsed)
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


def _paths(store: Store, args: list[str], recursive: bool) -> list[StorePath]:
    from xstore.stores import resolve_paths

    wanted = resolve_paths(store, args)
    if recursive:
        return sorted(store.query_closure(wanted))
    return sorted(set(wanted))


@app.command("init")
def init(
    store: StoreOpt = None,
    case_hack: CaseHackStoreOpt = CaseHackOpt.auto,
    case_fold: FoldStoreOpt = FoldOpt.auto,
    json_: Annotated[bool, typer.Option("--json", help="Print the store's settings as JSON.")] = False,
) -> None:
    """Create a store (Nix's layout and schema), or show the settings of an existing one.

    Example: xstore store init --store ~/nix-root --case-hack on
    """
    with cli_errors(), _open_local(store, "store init", (case_hack, case_fold)) as s:
        settings = s.settings
        if json_:
            sys.stdout.write(json.dumps({"root": str(s.root), **settings.to_json()}) + "\n")
        else:
            hack = "on" if settings.case_hack else "off"
            sys.stdout.write(f"store at {s.root}: case hack {hack}, {settings.fold.value} fold\n")


def import_(
    store: StoreOpt = None,
    input_: Annotated[
        str | None,
        typer.Option("-i", "--input", help="Read the stream from this file, not stdin (xz, zstd, bzip2 or "
                     "gzip compressed is fine)."),
    ] = None,
    case_hack: CaseHackStoreOpt = CaseHackOpt.auto,
    case_fold: FoldStoreOpt = FoldOpt.auto,
) -> None:
    """Import a `nix-store --export` stream into a local store (created if missing), printing each path.

    NARs stream to disk in constant memory, with the store's case hack. Each path's references must be
    valid or come earlier in the stream. A bad stream leaves nothing of the path being imported.

    Example: ssh linux-box nix-store --export $(nix-store -qR ./result) | xstore import
    """
    from xstore import sniff
    from xstore.errors import UsageError
    from xstore.import_export import ImportResult, import_stream

    with cli_errors(), _open_local(store, "import", (case_hack, case_fold)) as s:
        s.clean_temp()
        with open_input(input_) as f:
            if f.isatty():
                raise UsageError("no export stream on stdin: pipe one in or use -i FILE")
            kind, method, read = sniff.open_input(f.read)
            sniff.expect(kind, sniff.Kind.EXPORT, input_ or "the input")
            total = file_size(f) if method.value == "none" else None
            with Progress("importing", total) as progress:

                def show(result: ImportResult) -> None:
                    progress.item(result.path.path)
                    progress.echo(result.path.path)

                import_stream(s, read, on_path=show, progress=progress)


def export(
    paths: PathsArg,
    store: StoreOpt = None,
    recursive: RecursiveOpt = False,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write a `nix-store --export` stream of PATHS (dependencies first), byte-identical to Nix's, with
    the original file names (case-hack suffixes stripped). Each path is re-hashed on the way and refused
    if it no longer matches its registered hash.

    Example: xstore export -r /nix/store/...-hello-2.12 -o hello.closure
    """
    from xstore.import_export import export_paths

    with cli_errors(), _open(store) as s:
        wanted = _paths(s, paths, recursive)
        with Progress("exporting") as progress, atomic_output(output) as sink:
            export_paths(s, wanted, sink, progress=progress)


def copy(
    paths: PathsArg,
    from_: Annotated[
        str | None, typer.Option("--from", metavar="URL", help=f"Source store: {STORE_URL_HELP}.")
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="URL", help="Destination store (a local one is created if missing)."),
    ] = None,
    recursive: RecursiveOpt = False,
    case_hack: CaseHackStoreOpt = CaseHackOpt.auto,
    case_fold: FoldStoreOpt = FoldOpt.auto,
    no_check_sigs: Annotated[
        bool, typer.Option("--no-check-sigs", help="Ask the destination not to require signatures.")
    ] = False,
) -> None:
    """Copy PATHS from one store to another, streaming each NAR (constant memory); the paths the
    destination has already are skipped. Prints each path copied. --from and --to default to the
    default local store.

    Example: xstore copy --from /mnt/linux-root --to ~/nix-root -r /nix/store/...-hello-2.12
    """
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
            with open_store(from_) as src:
                plan = plan_copy(src, dst, _paths(src, paths, False), recursive=recursive)
                with Progress("copying", plan.bytes_to_copy) as progress:
                    done = 0

                    def show(result: CopyResult) -> None:
                        nonlocal done
                        if result.copied:
                            done += result.nar_size
                            progress.item(result.path.path, done)
                            progress.echo(result.path.path)

                    copy_paths(src, dst, [], plan=plan, on_path=show, check_sigs=not no_check_sigs)


def path_info(
    paths: PathsArg,
    store: StoreOpt = None,
    recursive: RecursiveOpt = False,
    closure_size: Annotated[
        bool, typer.Option("-S", "--closure-size", help="Add each path's closure size.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="JSON as `nix path-info --json` prints it.")] = False,
) -> None:
    """Show registration data of store paths: NAR hash and size, references, deriver, signatures.

    Example: xstore path-info -r --json /nix/store/...-hello-2.12
    """
    from xstore.storeapi import closure_sizes, path_info_json

    with cli_errors(), _open(store) as s:
        wanted = _paths(s, paths, recursive)
        infos = [s.require(p) for p in wanted]
        sizes = closure_sizes(s, wanted) if closure_size else None
        if json_:
            sys.stdout.write(
                json.dumps(path_info_json(infos, closure_sizes=sizes), sort_keys=True, separators=(",", ":"))
                + "\n"
            )
        else:
            for info in infos:
                extra = f"\t{sizes[info.path]}" if sizes is not None else ""
                sys.stdout.write(f"{info.path}\t{info.nar_hash_sri()}\t{info.nar_size}{extra}\n")


def verify(
    store: StoreOpt = None,
    check_contents: Annotated[
        bool, typer.Option("--check-contents", help="Also re-hash every path and compare with the database.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Check a local store: every registered path exists and, with --check-contents, still has its
    registered hash. Reports problems and exits 1 if there are any; never changes the store.

    Example: xstore verify --check-contents
    """
    from xstore.verify import verify as verify_store

    with cli_errors(), _open_local(store, "verify") as s:
        with Progress("verifying", unit="paths") as progress:
            problems = verify_store(s, check_contents=check_contents, progress=progress)
            if json_:
                report = [{"path": p.path.path, "problem": p.kind, "detail": p.detail} for p in problems]
                sys.stdout.write(json.dumps({"ok": not problems, "problems": report}) + "\n")
            else:
                for p in problems:
                    progress.echo(p.detail, err=True)
        if problems:
            raise typer.Exit(1)


def register(root_app: typer.Typer) -> None:
    """Add the top-level store commands (import, export, copy, path-info, verify) to the main app."""
    root_app.command("import")(import_)
    root_app.command("export")(export)
    root_app.command("copy")(copy)
    root_app.command("path-info")(path_info)
    root_app.command("verify")(verify)
