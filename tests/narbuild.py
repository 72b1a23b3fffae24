"""Building NAR bytes by hand in tests, including archives no encoder would produce.

`nar(...)` frames a sequence of tokens: `bytes` become NAR strings, `int`s become raw u64s (a file's size),
and `Raw(b"...")` goes in unframed (contents and deliberately broken padding).
"""

from __future__ import annotations

from dataclasses import dataclass

from xstore.wire import U64, encode_bytes


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
            out.append(U64.pack(token))
        else:
            out.append(encode_bytes(token))
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
