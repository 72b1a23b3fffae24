"""`xstore mount` (nar, store, casefold) and `xstore umount`: FUSE filesystems, Linux with the `fuse` extra.

Each command checks what the user gave it (the archive, the store, the mount point) before anything is
mounted, so those errors are one line and leave no mount behind; then it mounts and returns once the
filesystem answers, leaving it served by a background process, or serves in the foreground.
"""

from __future__ import annotations

import enum
import os
import stat
import sys
from typing import Annotated

import typer

from xstore.cli.common import cli_errors

app = typer.Typer(
    help=(
        "Show a NAR, a store, or a directory with case-insensitive names as a FUSE filesystem (needs "
        "FUSE: Linux with /dev/fuse and pyfuse3, pip install 'xstore[fuse]'). The command returns once "
        "the filesystem is mounted and serving, like sshfs; unmount it with 'xstore umount MOUNTPOINT'."
    ),
    no_args_is_help=True,
)

MountpointArg = Annotated[str, typer.Argument(help="An existing directory to mount on.")]
ForegroundOpt = Annotated[
    bool,
    typer.Option(
        "-f",
        "--foreground",
        help="Serve in this process until unmounted, Ctrl-C or SIGTERM (which unmount cleanly).",
    ),
]


NonemptyOpt = Annotated[
    bool,
    typer.Option("--nonempty", help="Mount over a directory that is not empty (hiding what it holds)."),
]


class ModelOpt(enum.StrEnum):
    apfs = "apfs"
    ascii = "ascii"


@app.command("nar")
def mount_nar(
    nar: Annotated[str, typer.Argument(help="The NAR file to show.")],
    mountpoint: MountpointArg,
    foreground: ForegroundOpt = False,
    nonempty: NonemptyOpt = False,
) -> None:
    """Show the contents of a NAR read-only, without unpacking it: one pass indexes (and validates) the
    archive, then files are read from it in place. An invalid archive is refused before anything is
    mounted. `nix-store --dump MOUNTPOINT` gives the archive back byte for byte.

    Example: xstore mount nar hello.nar /mnt/hello
    """
    with cli_errors():
        from xstore.fuse.lifecycle import check_fuse, check_mountpoint, mount_filesystem

        check_fuse()
        check_mountpoint(mountpoint, nonempty=nonempty)
        from xstore.errors import XstoreError
        from xstore.fuse.narfs import NarOperations, check_mountable
        from xstore.nar.listing import index_file

        path = os.path.abspath(nar)
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise XstoreError(f"'{path}' is not a regular file: files are read from the archive in place")
            index = index_file(f)
            check_mountable(index)
            fd = f.fileno()
            mount_filesystem(
                lambda: NarOperations(fd, index),
                mountpoint,
                fsname=f"xstore-nar:{path}",
                read_only=True,
                foreground=foreground,
                nonempty=nonempty,
            )


@app.command("store")
def mount_store(
    root: Annotated[
        str, typer.Argument(help="The store root (holding nix/store and nix/var/nix/db), from xstore or Nix.")
    ],
    mountpoint: MountpointArg,
    foreground: ForegroundOpt = False,
    nonempty: NonemptyOpt = False,
) -> None:
    """Show a store read-only: one directory per valid path, with the names its NAR has (case-hack
    suffixes removed when the store uses the hack), so a Linux closure kept on a Mac reads as it was
    made. Paths added to the store while it is mounted appear. `nix-store --dump MOUNTPOINT/<path>`
    equals the NAR the store registered for that path.

    Example: xstore mount store ~/nix-root /mnt/store
    """
    with cli_errors():
        from xstore.fuse.lifecycle import check_fuse, check_mountpoint, mount_filesystem

        check_fuse()
        check_mountpoint(mountpoint, nonempty=nonempty)
        from xstore.fuse.storefs import StoreOperations
        from xstore.store import LocalStore

        path = os.path.abspath(root)
        with LocalStore.open(path) as s:  # refuse a missing or unreadable store before mounting
            _ = s.settings
        mount_filesystem(
            lambda: StoreOperations(path),
            mountpoint,
            fsname=f"xstore-store:{path}",
            read_only=True,
            foreground=foreground,
            nonempty=nonempty,
        )


@app.command("casefold")
def mount_casefold(
    backing: Annotated[str, typer.Argument(help="The directory whose files the filesystem shows.")],
    mountpoint: MountpointArg,
    model: Annotated[
        ModelOpt,
        typer.Option(
            help="Which names count as the same: 'apfs' (Unicode case and NFC/NFD, as macOS) or 'ascii' "
            "(ASCII letters only, as Nix's case hack assumes)."
        ),
    ] = ModelOpt.apfs,
    cache_timeout: Annotated[
        float,
        typer.Option(
            min=0.0,
            metavar="SECONDS",
            help="Seconds the kernel may keep names and attributes. Changes made through the layer show "
            "at once under every spelling whatever this is; changes made to BACKING directly show after "
            "it. 0: the kernel keeps nothing (every stat and path component asks the layer).",
        ),
    ] = 10.0,  # xstore.fuse.casefold_cache.DEFAULT_TIMEOUT (not imported here: start-up time)
    foreground: ForegroundOpt = False,
    nonempty: NonemptyOpt = False,
) -> None:
    """Show BACKING through a case-insensitive, case-preserving layer, read-write, as a macOS volume
    behaves: names that fold alike are the same file. Lets Linux test what the case hack must do.

    Example: xstore mount casefold /tmp/backing /mnt/folded --model apfs
    """
    with cli_errors():
        from xstore.errors import FuseMountError
        from xstore.fuse.lifecycle import PLATFORM, check_fuse, check_mountpoint, mount_filesystem

        check_fuse()
        check_mountpoint(mountpoint, nonempty=nonempty)
        if not PLATFORM.startswith("linux"):
            raise FuseMountError("the casefold layer runs on Linux only (macOS volumes fold case already)")
        from xstore.casehack import Fold
        from xstore.fuse.casefold import CasefoldOperations  # type: ignore[attr-defined, unused-ignore]  # Linux only

        path = os.path.abspath(backing)
        if not os.path.isdir(path):
            raise FuseMountError(f"'{path}' is not a directory")
        fold = Fold(model.value)
        mount_filesystem(
            lambda: CasefoldOperations(os.fsencode(path), fold, timeout=cache_timeout),
            mountpoint,
            fsname=f"xstore-casefold:{path}",
            read_only=False,
            foreground=foreground,
            nonempty=nonempty,
        )


def umount(mountpoint: Annotated[str, typer.Argument(help="Where the filesystem is mounted.")]) -> None:
    """Unmount a FUSE filesystem that 'xstore mount' made. One whose process has died (the mount answers
    "Transport endpoint is not connected") is unmounted too, and the message says so.

    Example: xstore umount /mnt/hello
    """
    with cli_errors():
        from xstore.fuse.lifecycle import unmount

        sys.stdout.write(unmount(mountpoint) + "\n")
