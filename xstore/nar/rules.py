"""What a NAR may contain: the rules for entry names and symlink targets, and how archive bytes are shown.

The parser, the encoder and the case hack all decide with these functions, so an archive one of them
accepts is an archive the others accept. The rules are current Nix's (archive.cc `parse`, >= 2.25 with
the 2.35 limits): names are not empty, `.` or `..`, hold no `/` or NUL, and have at most 255 bytes;
symlink targets are not empty, hold no NUL, and have at most 4095 bytes. Like Lix, xstore also refuses
a name that contains the case-hack suffix: a tree holding it could not be dumped back to the same
archive. Nothing here does I/O.
"""

from __future__ import annotations

from xstore.wire import NAR_MAX_NAME, NAR_MAX_TARGET

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Final

NAR_MAGIC: Final = b"nix-archive-1"
CASE_HACK_SUFFIX: Final = b"~nix~case~hack~"


def show(data: bytes, limit: int = 64) -> str:
    """Bytes from an archive as they appear in a message: cut when long, control characters escaped
    (`\\x1b`: a name must not be able to drive the terminal), everything else as it is. Bytes that are
    not UTF-8 stay the bytes they were (as surrogate escapes, which the CLI writes back raw), so a
    message shows a name as Nix shows it, not as Python's `b'\\xff'`."""
    text = data[:limit].decode("utf-8", "surrogateescape")
    text = "".join(c if c.isprintable() or "\udc80" <= c <= "\udcff" else f"\\x{ord(c):02x}" for c in text)
    return text + "..." if len(data) > limit else text


def name_problem(name: bytes) -> str | None:
    """Why `name` may not be a NAR entry name, or None if it may."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        return f"NAR contains invalid file name '{show(name)}'"
    if len(name) > NAR_MAX_NAME:
        return f"file name of {len(name)} bytes is too long (at most {NAR_MAX_NAME} allowed)"
    if CASE_HACK_SUFFIX in name:
        return (
            f"NAR contains file name '{show(name)}' with the case-hack suffix '{CASE_HACK_SUFFIX.decode()}'"
        )
    return None


def target_problem(target: bytes) -> str | None:
    """Why `target` may not be a symlink target in a NAR, or None if it may."""
    if not target or b"\0" in target:
        return "NAR contains invalid symlink target"
    if len(target) > NAR_MAX_TARGET:
        return f"symlink target of {len(target)} bytes is too long (at most {NAR_MAX_TARGET} allowed)"
    return None
