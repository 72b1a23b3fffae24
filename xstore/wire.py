"""Nix's wire framing: the building blocks of NARs and export streams.

Integers are unsigned 64-bit little endian. A string is its length as such an integer, its bytes, and
zero bytes up to the next multiple of 8. Nothing here does I/O; readers that need to wait for bytes live
in the parsers (`nar/parser.py`, `import_export.py`).

Nix: serialise.hh / serialise.cc (`writeString`, `writePadding`, `readString`, `readPadding`).
"""

from __future__ import annotations

import struct

U64 = struct.Struct("<Q")
ZEROS = bytes(8)

# Bounds of current Nix's NAR parser (archive.cc `parse`): format-defined, independent of the host's
# NAME_MAX/PATH_MAX.
NAR_MAX_TAG = 32
NAR_MAX_NAME = 255
NAR_MAX_TARGET = 4095
NAR_MAX_DEPTH = 64


def encode_u64(n: int) -> bytes:
    return U64.pack(n)


def encode_bytes(data: bytes) -> bytes:
    """Frame `data` as a Nix string: length, bytes, zero padding."""
    return U64.pack(len(data)) + data + ZEROS[: -len(data) & 7]


def encode_strings(*items: bytes) -> bytes:
    """Several framed strings back to back (one allocation instead of many)."""
    return b"".join([U64.pack(len(s)) + s + ZEROS[: -len(s) & 7] for s in items])
