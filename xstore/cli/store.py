"""Store commands: `xstore store init`, `import`, `export`, `copy`, `path-info`, `verify`, `repair`."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated

import typer

from xstore.cli import actions
from xstore.cli.actions import open_any, open_local, store_paths
from xstore.cli.common import (
    CaseHackOpt,
    FoldOpt,
    Progress,
    cli_errors,
    err,
)

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
    with cli_errors(), open_local(store, "store init", (case_hack, case_fold)) as s:
        settings = s.settings
        if json_:
            sys.stdout.write(json.dumps({"root": str(s.root), **settings.to_json()}) + "\n")
        else:
            hack = "on" if settings.case_hack else "off"
            sys.stdout.write(f"store at {s.root}: case hack {hack}, {settings.fold.value} fold\n")


@app.command("trust")
def trust(
    keys: Annotated[
        list[str] | None,
        typer.Argument(
            help="Public keys (NAME:BASE64, from `key convert-secret-to-public`).", show_default=False
        ),
    ] = None,
    store: StoreOpt = None,
    remove: Annotated[
        bool, typer.Option("--remove", help="Stop trusting the keys given (by key or by name).")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the trusted keys as JSON.")] = False,
) -> None:
    """Trust public keys for a local store, or list them: paths copied in from binary caches and remote
    stores must be signed by one of them (or be content-addressed), as Nix's `trusted-public-keys`.
    Recorded in the store's settings; `copy --trusted-public-keys` adds keys for one command.

    Example: xstore store trust "cache.example.org-1:$(cat public.key | cut -d: -f2)"
    """
    with cli_errors(), open_local(store, "store trust") as s:
        current = list(s.settings.trusted_public_keys)
        if remove:
            gone = set(keys or [])
            current = [k for k in current if k not in gone and k.partition(":")[0] not in gone]
            s.set_trusted_public_keys(current)
        elif keys:
            s.set_trusted_public_keys([*current, *keys])
        listed = list(s.settings.trusted_public_keys)
        if json_:
            sys.stdout.write(json.dumps({"root": str(s.root), "trustedPublicKeys": listed}) + "\n")
        else:
            sys.stdout.write("".join(k + "\n" for k in listed))


def import_(
    store: StoreOpt = None,
    input_: Annotated[
        str | None,
        typer.Option(
            "-i",
            "--input",
            help="Read the stream from this file, not stdin (xz, zstd, bzip2 or gzip compressed is fine).",
        ),
    ] = None,
    case_hack: CaseHackStoreOpt = CaseHackOpt.auto,
    case_fold: FoldStoreOpt = FoldOpt.auto,
) -> None:
    """Import a `nix-store --export` stream into a local store (created if missing), printing each path.

    NARs stream to disk in constant memory, with the store's case hack. Each path's references must be
    valid or come earlier in the stream. A bad stream leaves nothing of the path being imported.

    Example: ssh linux-box nix-store --export $(nix-store -qR ./result) | xstore import
    """
    actions.import_paths(store, input_, case_hack, case_fold)


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
    actions.export_paths(paths, store, recursive, output)


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
        bool,
        typer.Option(
            "--no-check-sigs", help="Accept paths from caches and remote stores without signatures."
        ),
    ] = False,
    trusted_public_keys: Annotated[
        str | None,
        typer.Option(
            "--trusted-public-keys",
            metavar="KEYS",
            help="Public keys (space-separated NAME:BASE64) to trust for this copy, beside the store's own "
            "(`store trust`).",
        ),
    ] = None,
) -> None:
    """Copy PATHS from one store to another, streaming each NAR (constant memory); the paths the
    destination has already are skipped. Prints each path copied. --from and --to default to the
    default local store. Any two stores: local stores, binary caches (file://, http(s)://, s3://),
    with cache parameters in the URL as Nix has them (compression=xz|zstd|bzip2|br|none,
    secret-key=FILE, write-nar-listing=1; for S3 region=, endpoint=, scheme=, profile=).

    Paths coming from a binary cache or a remote store into a local store must be signed by a trusted
    key or be content-addressed (Nix's require-sigs); paths from another local store need no signature.

    Example: xstore copy --from /mnt/linux-root --to ~/nix-root -r /nix/store/...-hello-2.12
    Example: xstore copy --to 'file:///srv/cache?compression=zstd&secret-key=secret.key' -r ./result
    """
    actions.copy(paths, from_, to, recursive, case_hack, case_fold, no_check_sigs, trusted_public_keys)


def path_info(
    paths: PathsArg,
    store: StoreOpt = None,
    recursive: RecursiveOpt = False,
    size: Annotated[bool, typer.Option("-s", "--size", help="Show each path's NAR size.")] = False,
    closure_size: Annotated[
        bool,
        typer.Option(
            "-S", "--closure-size", help="Show each path's closure size (the sum of its NAR sizes)."
        ),
    ] = False,
    human: Annotated[
        bool, typer.Option("-h", "--human-readable", help="With -s and -S, sizes such as '5.7 MiB'.")
    ] = False,
    sigs: Annotated[bool, typer.Option("--sigs", help="Show signatures (and 'ultimate', 'ca:...').")] = False,
    json_: Annotated[
        bool,
        typer.Option(
            "--json", help="JSON as current `nix path-info --json` prints it: an object keyed by path."
        ),
    ] = False,
    json_array: Annotated[
        bool,
        typer.Option(
            "--json-array",
            help="JSON as Nix 2.x printed it before the object form (Nix 2.8, as in Debian): a list "
            "sorted by path, absent fields left out.",
        ),
    ] = False,
) -> None:
    """Show store paths (dependencies first), with their NAR size (-s), closure size (-S) and signatures
    (--sigs) in aligned columns, as `nix path-info` does; or their whole registration as JSON.

    Example: xstore path-info -rsSh ./result
    """
    from xstore.query import deps_first, path_info_json_array, path_info_lines
    from xstore.storeapi import closure_sizes, path_info_json

    with cli_errors(), open_any(store) as s:
        wanted = store_paths(s, paths, recursive)
        infos = {p: s.require(p) for p in wanted}
        sizes = closure_sizes(s, wanted) if closure_size else None
        if json_array:
            sys.stdout.write(
                json.dumps(path_info_json_array(infos.values(), closure_sizes=sizes), separators=(",", ":"))
                + "\n"
            )
        elif json_:
            sys.stdout.write(
                json.dumps(
                    path_info_json(infos.values(), closure_sizes=sizes), sort_keys=True, separators=(",", ":")
                )
                + "\n"
            )
        else:
            ordered = [infos[p] for p in deps_first(s, wanted)]
            for line in path_info_lines(s, ordered, size=size, closure_size=sizes, human=human, sigs=sigs):
                sys.stdout.write(line + "\n")


FromOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--from",
        metavar="SOURCE",
        help="Where to fetch damaged paths again: a store URL or an export file; repeatable, tried in order.",
    ),
]


def verify(
    store: StoreOpt = None,
    check_contents: Annotated[
        bool, typer.Option("--check-contents", help="Also re-hash every path and compare with the database.")
    ] = False,
    repair: Annotated[
        bool, typer.Option("--repair", help="Fetch missing or modified paths again (see --from).")
    ] = False,
    from_: FromOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Check a local store: every registered path exists and, with --check-contents, still has its
    registered hash. Reports problems and exits 1 if there are any; changes nothing unless --repair is
    given, which fetches each damaged path again from the --from sources and puts it in place.

    Example: xstore verify --check-contents --repair --from https://cache.nixos.org
    """
    from xstore.errors import RepairError, UsageError
    from xstore.repair import open_source, repair_path
    from xstore.storepath import parse_store_path
    from xstore.verify import verify as verify_store

    with cli_errors(), open_local(store, "verify", writes=repair) as s:
        if from_ and not repair:
            raise UsageError("--from goes with --repair")
        with Progress("verifying", unit="paths") as progress, contextlib.ExitStack() as stack:
            problems = verify_store(s, check_contents=check_contents, progress=progress)
            left = problems
            if repair and problems:
                sources = [stack.enter_context(open_source(text)) for text in from_ or []]
                left = []
                for problem in problems:
                    if problem.kind == "corrupt-row":  # a row, not contents: nothing to fetch
                        left.append(problem)
                        progress.echo(problem.detail, err=True)
                        continue
                    try:
                        done = repair_path(s, parse_store_path(problem.path), sources, force=True)
                    except RepairError as e:
                        progress.echo(f"{problem.detail}; {e}", err=True)
                        left.append(problem)
                    else:
                        shown = f"repaired '{problem.path}' ({problem.kind}) from {done.source}"
                        progress.echo(shown, err=True)
            if json_:
                report = [{"path": p.path, "problem": p.kind, "detail": p.detail} for p in left]
                repaired = [p.path for p in problems if p not in left]
                result: dict[str, object] = {"ok": not left, "problems": report}
                if repair:
                    result["repaired"] = repaired
                sys.stdout.write(json.dumps(result) + "\n")
            elif not repair:
                for p in problems:
                    progress.echo(p.detail, err=True)
        if left:
            raise typer.Exit(1)


def repair(
    paths: PathsArg,
    from_: FromOpt = None,
    store: StoreOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Fetch and replace even paths that are intact.")
    ] = False,
) -> None:
    """Fetch PATHS again from the --from sources (store URLs or export files, tried in order) and put
    them in place of what is in the local store, as atomically as the filesystem allows; each one is
    checked against its registered hash before and after. Intact paths are left alone.

    Example: xstore repair /nix/store/...-glibc-2.37 --from ssh://builder --from ./backup.closure
    """
    from xstore.repair import open_source, repair_path
    from xstore.stores import resolve_paths

    with cli_errors(), open_local(store, "repair", writes=True) as s, contextlib.ExitStack() as stack:
        wanted = resolve_paths(s, paths)
        sources = [stack.enter_context(open_source(text)) for text in from_ or []]
        for path in wanted:
            done = repair_path(s, path, sources, force=force)
            if done.source is None:
                err(f"'{path}' is intact")
            else:
                err(f"repaired '{path}' from {done.source}")
