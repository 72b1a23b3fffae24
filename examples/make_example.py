"""Regenerate `linux-headers.nar`, the bundled example: a small tree shaped like a Linux closure, with the
names that collide on a case-insensitive filesystem (netfilter headers, terminfo, man pages) and one pair
that differs only in Unicode normalisation. Contents are short placeholders written for this example.

Run: python examples/make_example.py  (writes examples/linux-headers.nar next to this file)
"""

from __future__ import annotations

from pathlib import Path

from xstore.nar.encoder import NarEncoder
from xstore.nar.events import (
    ArchiveEnd,
    DirectoryEnd,
    DirectoryStart,
    Event,
    FileChunk,
    FileEnd,
    RegularFile,
    Symlink,
)

HEADERS = ["CONNMARK", "DSCP", "MARK", "RATEEST", "TCPMSS", "TOS"]

Tree = dict[bytes, "bytes | Tree | tuple[str, bytes]"]


def build() -> Tree:
    netfilter: Tree = {}
    for name in HEADERS:
        for spelling in (name, name.lower()):
            text = f"/* {spelling}: {'target' if spelling.isupper() else 'match'} extension (example) */\n"
            netfilter[f"xt_{spelling}.h".encode()] = text.encode()
    terminfo: Tree = {
        b"E": {b"Eterm": b"Eterm terminal description (example)\n"},
        b"e": {b"eterm": b"eterm terminal description (example)\n"},
        b"x": {b"xterm": b"xterm terminal description (example)\n"},
    }
    man3: Tree = {b"Exit.3": b".TH Exit 3 (example)\n", b"exit.3": b".TH exit 3 (example)\n"}
    docs: Tree = {
        "re\u0301sume\u0301.txt".encode(): b"decomposed (NFD) spelling\n",
        "r\u00e9sum\u00e9.txt".encode(): b"composed (NFC) spelling\n",
    }
    return {
        b"bin": {b"hello": ("exec", b"#!/bin/sh\necho hello\n")},
        b"include": {b"linux": {b"netfilter": netfilter}},
        b"share": {b"terminfo": terminfo, b"man": {b"man3": man3}, b"doc": docs},
        b"lib": {b"libhello.so": ("link", b"libhello.so.1"), b"libhello.so.1": b"\x7fELF (example)\n"},
    }


def events(node: bytes | Tree | tuple[str, bytes], path: tuple[bytes, ...]) -> list[Event]:
    if isinstance(node, dict):
        out: list[Event] = [DirectoryStart(path)]
        for name in sorted(node):
            out += events(node[name], (*path, name))
        return [*out, DirectoryEnd(path)]
    if isinstance(node, tuple):
        kind, data = node
        if kind == "link":
            return [Symlink(path, data)]
        return [RegularFile(path, True, len(data), 0), FileChunk(data), FileEnd(path)]
    return [RegularFile(path, False, len(node), 0), FileChunk(node), FileEnd(path)]


def main() -> None:
    encoder = NarEncoder()
    data = b"".join(encoder.send(e) for e in [*events(build(), ()), ArchiveEnd(0)])
    (Path(__file__).resolve().parent / "linux-headers.nar").write_bytes(data)


if __name__ == "__main__":
    main()
