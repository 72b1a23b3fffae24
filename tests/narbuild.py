"""Building NAR bytes by hand in tests, including archives no encoder would produce.

`nar(...)` frames a sequence of tokens: `bytes` become NAR strings, `int`s become raw u64s (a file's size),
and `Raw(b"...")` goes in unframed (contents and deliberately broken padding). `tree_nar(node)` writes the
archive of a Hypothesis tree (`tests/strategies.py`).

This writer shares no code with xstore (not even its framing in `xstore/wire.py`): the property tests
build their archives here, so a framing mistake that xstore's encoder and parser shared could not pass
unnoticed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _string(data: bytes) -> bytes:
    return _u64(len(data)) + data + b"\0" * ((8 - len(data) % 8) % 8)


@dataclass(frozen=True)
class Raw:
    data: bytes


Token = bytes | int | Raw


def nar(*tokens: Token) -> bytes:
    out = []
    for token in tokens:
        if isinstance(token, Raw):
            out.append(token.data)
        elif isinstance(token, int):
            out.append(_u64(token))
        else:
            out.append(_string(token))
    return b"".join(out)


def regular(contents: bytes, *, executable: bool = False) -> tuple[Token, ...]:
    exe: tuple[Token, ...] = (b"executable", b"") if executable else ()
    return (b"(", b"type", b"regular", *exe, b"contents", *_contents(contents), b")")


def _contents(data: bytes) -> tuple[Token, ...]:
    return (len(data), Raw(data + bytes(-len(data) & 7)))


def symlink(target: bytes) -> tuple[Token, ...]:
    return (b"(", b"type", b"symlink", b"target", target, b")")


def directory(*entries: tuple[bytes, tuple[Token, ...]]) -> tuple[Token, ...]:
    body: list[Token] = []
    for name, node in entries:
        body += [b"entry", b"(", b"name", name, b"node", *node, b")"]
    return (b"(", b"type", b"directory", *body, b")")


def archive(node: tuple[Token, ...]) -> bytes:
    return nar(b"nix-archive-1", *node)


def _node(node: Any) -> tuple[Token, ...]:
    """The tokens of a node of a Hypothesis tree: ("file", contents, executable), ("symlink", target)
    or ("dir", {name: node}); entries go in byte order of their names, as the format wants."""
    kind = node[0]
    if kind == "file":
        return regular(node[1], executable=node[2])
    if kind == "symlink":
        return symlink(node[1])
    return directory(*((name, _node(child)) for name, child in sorted(node[1].items())))


def tree_nar(node: Any) -> bytes:
    """The NAR of a Hypothesis tree (a root node, or a dict of entries for a root directory)."""
    return archive(_node(("dir", node) if isinstance(node, dict) else node))
