"""The NAR's tokens, framed once: what the parser compares against and the dumper and encoder write.

A NAR is a sequence of Nix strings (`wire.py`); apart from names, targets, sizes and contents, every
string is one of a few fixed tokens. Each constant here is one token, or a run of tokens that always
appear together, already framed, so writing a node costs one `bytes.join` and recognising a tag costs
one comparison of raw bytes. Nix: archive.cc (`dumpPath`, `parse`).
"""

from __future__ import annotations

from xstore.nar.rules import NAR_MAGIC
from xstore.wire import encode_strings

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Final

# Single tokens, for the parser's comparisons.
OPEN: Final = encode_strings(b"(")
CLOSE: Final = encode_strings(b")")
TYPE: Final = encode_strings(b"type")
CONTENTS: Final = encode_strings(b"contents")
TARGET: Final = encode_strings(b"target")
ENTRY: Final = encode_strings(b"entry")
NAME: Final = encode_strings(b"name")
NODE: Final = encode_strings(b"node")

# Runs of tokens, for writers.
MAGIC: Final = encode_strings(NAR_MAGIC)
OPEN_TYPE: Final = OPEN + TYPE  # "(" "type": every node starts so
HEADER: Final = MAGIC + OPEN_TYPE  # the archive's first bytes, up to the root's type
REGULAR: Final = encode_strings(b"regular")
EXECUTABLE: Final = encode_strings(b"executable", b"")
REGULAR_CONTENTS: Final = REGULAR + CONTENTS  # followed by the size
REGULAR_EXEC_CONTENTS: Final = REGULAR + EXECUTABLE + CONTENTS
SYMLINK_TARGET: Final = encode_strings(b"symlink") + TARGET  # followed by the target
DIRECTORY: Final = encode_strings(b"directory")
CLOSE_CLOSE: Final = CLOSE + CLOSE  # end of a node, then end of the entry holding it
ENTRY_NAME: Final = ENTRY + OPEN + NAME  # followed by the name
NODE_OPEN_TYPE: Final = NODE + OPEN_TYPE  # after the name: the entry's node begins
