"""The text a binary cache or a key file hands over, mutated: every parser either accepts it or raises
an `XstoreError` (one line for the user), never another exception.

Each example starts from a valid text (a narinfo Nix wrote, `nix-cache-info`, a `.ls` listing, keys, a
content address) and applies a few random edits: bytes flipped, cut, repeated, dropped, a field's value
replaced, or control characters, quotes and brackets put in. The same kind of mutation of whole caches,
archives and protocol sessions (outside the suite, about 1,500 commands) found a NUL in a narinfo's URL
(a ValueError when the file was opened), a listing nested deeper than the JSON reader goes, and a listing
naming an entry with a lone surrogate; those have their own tests (test_narinfo, test_cache, test_store).
This one catches the general slip, such as a size converted with `int()` before it is checked (tried: it
fails within the examples it runs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xstore.contentaddress import parse_content_address
from xstore.errors import XstoreError
from xstore.narinfo import format_cache_info, parse_cache_info, parse_narinfo
from xstore.scan import listing_directories
from xstore.signing import generate_secret_key, parse_public_key, parse_secret_key

NIX_XZ = (Path(__file__).parents[1] / "data" / "narinfo" / "user-environment-xz.narinfo").read_bytes()
NARINFO = NIX_XZ + b"CA: fixed:r:sha256:1kq9jbvzczdzw1pacbyc7nbj48a0gzwhx6jr2fwv5ynnp63xi8fz\n"
LISTING = (
    b'{"version":1,"root":{"type":"directory","entries":{'
    b'"README":{"type":"regular","size":3,"narOffset":400},'
    b'"bin":{"type":"directory","entries":{"sh":{"type":"symlink","target":"../x"},'
    b'"x":{"type":"regular","size":0,"executable":true,"narOffset":900}}},'
    b'"readme":{"type":"regular","size":1,"narOffset":600}}}}'
)
SECRET = generate_secret_key("cache.example.org-1")
SECRET_TEXT = SECRET.to_text().encode()
PUBLIC_TEXT = SECRET.public_key().to_text().encode()
CONTENT_ADDRESS = b"fixed:r:sha256:1kq9jbvzczdzw1pacbyc7nbj48a0gzwhx6jr2fwv5ynnp63xi8fz"

# Bytes that make parsers trip: framing, escapes, nesting, control characters, bad UTF-8.
NASTY = [
    b"\0",
    b"\n",
    b"\r",
    b"\x7f",
    b"\xff",
    b"\xed\xa0\x80",
    b'"',
    b"\\",
    b"\\ud800",
    b"[",
    b"{",
    b":",
    b" ",
]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "drop", "repeat", "insert", "value"]))
        if kind == "value":
            # A field's value (after a colon or a quote) replaced by a few random or awkward bytes.
            starts = [i + 1 for i, b in enumerate(data) if b in b':"'] or [0]
            start = draw(st.sampled_from(starts))
            end = start + draw(st.integers(0, 24))
            data[start:end] = draw(st.binary(max_size=6) | st.sampled_from(NASTY))
        elif kind == "flip":
            if at < len(data):  # (at the very end there is no byte to flip)
                data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "drop":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "repeat":
            start = draw(st.integers(0, len(data)))
            data[at:at] = data[start : start + draw(st.integers(1, 32))] * draw(st.integers(1, 8))
        else:
            data[at:at] = draw(st.sampled_from(NASTY)) * draw(st.integers(1, 4))
    return bytes(data)


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


PARSERS: dict[str, tuple[bytes, Callable[[bytes], object]]] = {
    "narinfo": (NARINFO, lambda data: parse_narinfo(data, "x.narinfo")),
    "nix-cache-info": (
        format_cache_info() + b"WantMassQuery: 1\nPriority: 40\n",
        lambda data: parse_cache_info(data, "c"),
    ),
    "listing": (LISTING, lambda data: list(listing_directories(data, "'x.ls'"))),
    "secret key": (SECRET_TEXT, lambda data: parse_secret_key(text(data))),
    "public key": (PUBLIC_TEXT, lambda data: parse_public_key(text(data))),
    "content address": (CONTENT_ADDRESS, lambda data: parse_content_address(text(data))),
}


@pytest.mark.parametrize("kind", sorted(PARSERS))
@settings(max_examples=300)
@given(data=st.data())
def test_mutated_text_is_accepted_or_refused_with_an_xstore_error(kind: str, data: st.DataObject) -> None:
    seed, parse = PARSERS[kind]
    parse(seed)  # the seed itself is valid
    with contextlib.suppress(XstoreError):  # refused: the CLI prints it as one line
        parse(data.draw(mutated(seed)))
