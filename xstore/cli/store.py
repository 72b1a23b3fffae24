"""Store commands: `xstore store init`, `import`, `export`, `copy`, `path-info`, `verify`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from xstore.cli.common import CaseHackOpt, FoldOpt, Progress, atomic_output, cli_errors, err, open_input

if TYPE_CHECKING:
    from xstore.store import Store
    from xstore.storepath import StorePath

app = typer.Typer(help="Create and inspect stores.", no_args_is_help=True)

StoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="Store root (holding nix/store and nix/var/nix/db). Default: $XSTORE_STORE, else a per-user "
        "data directory.",
        show_default=False,
    ),
]
PathsArg = Annotated[list[str], typer.Argument(help="Store paths (/nix/store/...), or their real locations.")]
RecursiveOpt = Annotated[
    bool, typer.Option("-r", "--recursive", help="Include everything the paths depend on.")
]


def _root(store: Path | None) -> Path:
    from xstore.store import default_store_root

    return store if store is not None else default_store_root()


def _resolve(store: Store, args: list[str]) -> list[StorePath]:
    from xstore.storepath import parse_store_path

    out = []
    real = str(store.real_store_dir) + "/"
    for arg in args:
        absolute = os.path.abspath(arg)
        logical = "/nix/store/" + absolute[len(real) :].split("/")[0] if absolute.startswith(real) else arg
        out.append(parse_store_path(logical))
    return out


def _create(store: Path | None, case_hack: CaseHackOpt, case_fold: FoldOpt) -> Store:
    """Open the store for writing, creating it if missing. If its store directory is a read-only bind
    mount, the process first moves into a private mount namespace where it is writable."""
    from xstore.casehack import CaseHackMode, Fold
    from xstore.cli.ro import ensure_writable
    from xstore.store import Store

    root = _root(store)
    ensure_writable(root / "nix" / "store")
    return Store.create(
        root,
        case_hack=CaseHackMode(case_hack.value),
        fold=None if case_fold is FoldOpt.auto else Fold(case_fold.value),
    )


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
    with cli_errors(), _create(store, case_hack, case_fold) as s:
        settings = s.settings
        if json_:
            sys.stdout.write(json.dumps({"root": str(s.root), **settings.to_json()}) + "\n")
        else:
            hack = "on" if settings.case_hack else "off"
            sys.stdout.write(f"store at {s.root}: case hack {hack}, {settings.fold.value} fold\n")


def import_(
    store: StoreOpt = None,
    input_: Annotated[
        str | None, typer.Option("-i", "--input", help="Read the stream from this file, not stdin.")
    ] = None,
    case_hack: CaseHackStoreOpt = CaseHackOpt.auto,
    case_fold: FoldStoreOpt = FoldOpt.auto,
) -> None:
    """Import a `nix-store --export` stream into the store (created if missing), printing each path.

    NARs stream to disk in constant memory, with the store's case hack. Each path's references must be
    valid or come earlier in the stream. A bad stream leaves nothing of the path being imported.

    Example: ssh linux-box nix-store --export $(nix-store -qR ./result) | xstore import
    """
    from xstore.import_export import ImportResult, import_stream

    with cli_errors(), _create(store, case_hack, case_fold) as s:
        s.clean_temp()
        with open_input(input_) as f:
            if f.isatty():
                from xstore.errors import UsageError

                raise UsageError("no export stream on stdin: pipe one in or use -i FILE")
            progress = Progress("importing")

            def show(result: ImportResult) -> None:
                sys.stdout.write(f"{result.path}\n")
                sys.stdout.flush()

            import_stream(s, f.read, on_path=show, progress=progress)
            progress.close()


def _open(store: Path | None) -> Store:
    from xstore.store import Store

    return Store.open(_root(store))


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
        wanted = _resolve(s, paths)
        if recursive:
            wanted = sorted(s.closure(wanted))
        progress = Progress("exporting")
        with atomic_output(output) as sink:
            export_paths(s, wanted, sink, progress=progress)
        progress.close()


def copy(
    paths: PathsArg,
    from_: Annotated[Path, typer.Option("--from", help="Source store root.")],
    to: Annotated[Path, typer.Option("--to", help="Destination store root (created if missing).")],
    recursive: RecursiveOpt = False,
    case_hack: CaseHackStoreOpt = CaseHackOpt.auto,
    case_fold: FoldStoreOpt = FoldOpt.auto,
) -> None:
    """Copy PATHS from one store to another: an export piped into an import, in one process and
    constant memory. Prints each path.

    Example: xstore copy --from /mnt/linux-root --to ~/nix-root -r /nix/store/...-hello-2.12
    """
    from xstore.import_export import ImportResult, copy_paths

    with cli_errors():
        with _open(from_) as source:
            wanted = _resolve(source, paths)
            if recursive:
                wanted = sorted(source.closure(wanted))
        with _create(to, case_hack, case_fold) as dest:
            dest.clean_temp()

            def show(result: ImportResult) -> None:
                sys.stdout.write(f"{result.path}\n")

            copy_paths(from_, dest, wanted, on_path=show)


def path_info(
    paths: PathsArg,
    store: StoreOpt = None,
    recursive: RecursiveOpt = False,
    closure_size: Annotated[
        bool, typer.Option("-S", "--closure-size", help="Add each path's closure size.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="JSON as `nix path-info --json` prints it.")] = False,
) -> None:
    """Show registration data of store paths: NAR hash and size, references, deriver.

    Example: xstore path-info -r --json /nix/store/...-hello-2.12
    """
    from xstore.store import path_info_json

    with cli_errors(), _open(store) as s:
        wanted = _resolve(s, paths)
        if recursive:
            wanted = sorted(s.closure(wanted))
        infos = [s.require(p) for p in sorted(set(wanted))]
        sizes = None
        if closure_size:
            sizes = {i.path: sum(s.require(q).nar_size for q in s.closure([i.path])) for i in infos}
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
    """Check the store: every registered path exists and, with --check-contents, still has its
    registered hash. Reports problems and exits 1 if there are any; never changes the store.

    Example: xstore verify --check-contents
    """
    from xstore.store import verify as verify_store

    with cli_errors(), _open(store) as s:
        problems = verify_store(s, check_contents=check_contents, progress=Progress("verifying"))
        if json_:
            report = [{"path": p.path.path, "problem": p.kind, "detail": p.detail} for p in problems]
            sys.stdout.write(json.dumps({"ok": not problems, "problems": report}) + "\n")
        else:
            for p in problems:
                err(p.detail)
        if problems:
            raise typer.Exit(1)


def register(root_app: typer.Typer) -> None:
    """Add the top-level store commands (import, export, copy, path-info, verify) to the main app."""
    root_app.command("import")(import_)
    root_app.command("export")(export)
    root_app.command("copy")(copy)
    root_app.command("path-info")(path_info)
    root_app.command("verify")(verify)
