"""Recorded byte streams of real Nix 2.8 protocol sessions (`tests/data/nix-protocols/`), and feeding
them to sans-IO machines in any chunking.

Each session `NAME` is two files: `NAME.c2s` (everything the client wrote) and `NAME.s2c` (everything
the server wrote). See the README beside them for how they were recorded and what each holds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol, TypeVar

from xstore.wire import NEED_DATA, Signal

TRANSCRIPTS_DIR: Final = Path(__file__).resolve().parent / "data" / "nix-protocols"

# The closure in every session: a user environment (input-addressed, with a deriver) and the two
# content-addressed paths it refers to (README §5.1 of the protocol notes).
USER_ENV: Final = "/nix/store/awvaiqhp0w783q3lxcrlsh60nwax5303-user-environment"
PKG: Final = "/nix/store/f63i83p5m5920ci0qz1sn1snmkqayzra-pkg"
MANIFEST: Final = "/nix/store/nkqz694anififsm0bkwkydf4qbpj7kd7-env-manifest.nix"
USER_ENV_DRV: Final = "/nix/store/i18s6b0kj8czg9hcrv5dpc7lqjj53sx0-user-environment.drv"
# From the binary cache that Nix 2.8 made of the same closure (README §1.3).
USER_ENV_NAR_HASH: Final = "sha256:07bdvr675sqfsxvwkmfh8rmz74w0yvl479y59ip2bdhh88di9jcq"
NAR_SIZES: Final = {USER_ENV: 1072, PKG: 1056, MANIFEST: 320}

E = TypeVar("E")
E_co = TypeVar("E_co", covariant=True)


class Machine(Protocol[E_co]):
    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> E_co | Signal: ...


def load(name: str) -> tuple[bytes, bytes]:
    """The client-to-server and server-to-client bytes of session `name`."""
    return (TRANSCRIPTS_DIR / f"{name}.c2s").read_bytes(), (TRANSCRIPTS_DIR / f"{name}.s2c").read_bytes()


def chunkings(data: bytes, seed: int = 0) -> Iterator[tuple[str, list[bytes]]]:
    """`data` whole, byte by byte, and in random chunks (h11's way of testing a reader)."""
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    chunks = []
    i = 0
    while i < len(data):
        n = rng.randint(1, 97)
        chunks.append(data[i : i + n])
        i += n
    yield "random", chunks


def events(
    machine: Machine[E], chunks: list[bytes], *, end: bool = True, stop: type | None = None
) -> list[E]:
    """Every event `machine` gives for `chunks` (then the end of input, if `end`), pulling events after
    each chunk as a driver would, up to and including one of type `stop` (which a machine repeats)."""
    out: list[E] = []
    for chunk in [*chunks, *([b""] if end else [])]:
        machine.receive_data(chunk)
        while True:
            event = machine.next_event()
            if event is NEED_DATA:
                break
            assert not isinstance(event, Signal)
            out.append(event)
            if stop is not None and isinstance(event, stop):
                return out
    return out
