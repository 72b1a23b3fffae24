"""Streaming compression and decompression, for every method Nix uses on NARs.

`none`, `xz`, `bzip2` and `gzip` come from the standard library, `zstd` from the standard library's
`compression.zstd` (Python 3.14) or its backport `backports.zstd` (a dependency before 3.14), and `br` from
`brotli` (the `cache` extra), each imported only when used. Every codec works on streams
of any length in bounded memory: a reader gives out at most what is asked for, however well the input
compresses (a small hostile input cannot expand into memory), and concatenated streams (several xz
streams, gzip members or zstd frames, as parallel compressors write them) are read as one.

`open_reader(read, method)` wraps a read function; `open_writer(sink, method)` gives a sink and a
`finish()` that flushes the end of the compressed stream. Nix: libutil/compression.cc (where `Compression:
gzip` is read too, and a missing method means bzip2 in a narinfo).
"""

from __future__ import annotations

import enum
import os
import sys
import zlib
from collections.abc import Callable

from xstore.errors import CompressionError, UnsupportedError

TYPE_CHECKING = False  # not `from typing import`: the fast path runs without loading typing
if TYPE_CHECKING:
    from typing import Any, Final

Read = Callable[[int], bytes]
Sink = Callable[[bytes], object]

CHUNK: Final = 1 << 20


class Method(enum.StrEnum):
    NONE = "none"
    XZ = "xz"
    BZIP2 = "bzip2"
    GZIP = "gzip"
    ZSTD = "zstd"
    BR = "br"

    @property
    def suffix(self) -> str:
        """The file name suffix Nix gives a NAR compressed this way (`gzip` gets none, as in Nix)."""
        return _SUFFIXES.get(self, "")

    @classmethod
    def parse(cls, name: str) -> Method:
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise UnsupportedError(f"unknown compression method '{name}' (known: {known})") from None


_SUFFIXES: Final = {Method.XZ: ".xz", Method.BZIP2: ".bz2", Method.ZSTD: ".zst", Method.BR: ".br"}

# Magic numbers at the start of a compressed stream (brotli has none).
MAGIC: Final = {
    Method.XZ: b"\xfd7zXZ\x00",
    Method.ZSTD: b"\x28\xb5\x2f\xfd",
    Method.GZIP: b"\x1f\x8b",
    Method.BZIP2: b"BZh",
}


def detect(head: bytes) -> Method | None:
    """The method whose magic number `head` starts with, or None (uncompressed, or brotli)."""
    for method, magic in MAGIC.items():
        if head.startswith(magic) and (method is not Method.BZIP2 or head[3:4].isdigit()):
            return method
    return None


def _need(module: str, method: Method) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UnsupportedError(
            f"{method.value} compression needs the Python package '{module}': pip install 'xstore[cache]'"
        ) from None


def _zstd() -> Any:
    """The zstd module: the standard library's from Python 3.14, its backport before. (Not `pyzstd`:
    since 0.18 it is a layer over the backport that imports `typing_extensions` and with it `inspect`,
    about 10 ms of every command that reads a zstd NAR.)"""
    if sys.version_info >= (3, 14):
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]

        return zstd
    return _need("backports.zstd", Method.ZSTD)


# -- reading -----------------------------------------------------------------------------------------


class _IncrementalReader:
    """xz, bzip2, gzip and zstd through the standard library's incremental decompressors (zstd's backport
    before Python 3.14), which share one interface: output bounded per call, one stream (xz), member
    (gzip) or frame (zstd) per decompressor, so concatenated ones restart with a new decompressor on
    what follows the end, and truncation detected at the end of input."""

    def __init__(self, read: Read, method: Method) -> None:
        self._read = read
        self._method = method
        self._errors: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)
        self._dec = self._new()
        self._in = b""

    def _new(self) -> Any:
        method = self._method
        if method is Method.XZ:
            import lzma

            self._errors = (*self._errors, lzma.LZMAError)
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        if method is Method.BZIP2:
            import bz2

            return bz2.BZ2Decompressor()
        if method is Method.ZSTD:
            zstd = _zstd()
            self._errors = (*self._errors, zstd.ZstdError)
            return zstd.ZstdDecompressor()
        return zlib.decompressobj(wbits=31)

    def __call__(self, n: int) -> bytes:
        gzip = self._method is Method.GZIP
        while True:
            dec = self._dec
            if dec.eof:
                # Everything after the stream's end, whatever was still queued as input (zlib keeps
                # it in both `unused_data` and `unconsumed_tail`).
                rest = dec.unused_data
                if not rest:
                    rest = self._read(CHUNK)
                    if not rest:
                        return b""  # the end, after a complete stream
                self._dec = dec = self._new()
                self._in = rest
            if not self._in and (gzip or dec.needs_input):
                self._in = self._read(CHUNK)
                if not self._in:
                    raise CompressionError(f"{self._method.value} data ends before its stream does")
            try:
                out = dec.decompress(self._in, n)
            except self._errors as e:
                raise CompressionError(f"corrupt {self._method.value} data: {e}") from e
            self._in = dec.unconsumed_tail if gzip else b""
            if out:
                return bytes(out)


class _BrotliReader:
    def __init__(self, read: Read) -> None:
        brotli = _need("brotli", Method.BR)
        self._dec = brotli.Decompressor()
        self._error = brotli.error
        self._read = read
        self._out = b""
        self._input_ended = False

    def __call__(self, n: int) -> bytes:
        while not self._out:
            if self._dec.is_finished():
                return b""
            data = self._read(CHUNK) if not self._input_ended else b""
            if not data:
                self._input_ended = True
            try:
                self._out = self._dec.process(data, output_buffer_limit=max(n, CHUNK))
            except self._error as e:
                raise CompressionError(f"corrupt br data: {e}") from e
            if not self._out and self._input_ended and not self._dec.is_finished():
                raise CompressionError("br data ends before its stream does")
        out, self._out = self._out[:n], self._out[n:]
        return bytes(out)


def open_reader(read: Read, method: Method | str) -> Read:
    """A read function giving the decompressed bytes of the stream read with `read`. Raises
    `CompressionError` for corrupt or truncated input, `UnsupportedError` for a method whose package
    is missing."""
    method = Method.parse(method)
    if method is Method.NONE:
        return read
    if method is Method.BR:
        return _BrotliReader(read)
    return _IncrementalReader(read, method)


def decompress_whole(data: bytes, method: Method | str, limit: int) -> bytes:
    """`data` (a whole compressed file) decompressed in one piece, but never more than `limit + 1`
    bytes: a caller expecting at most `limit` tells a longer stream by the length. Raises as
    `open_reader`'s reads do."""
    method = Method.parse(method)
    if method is Method.NONE:
        return data
    if method is Method.ZSTD:
        # The usual case, one whole frame, in one call; anything else (several frames, a truncated or
        # corrupt one, more than `limit` bytes) again through the reader, which tells what is wrong.
        zstd = _zstd()
        decompressor = zstd.ZstdDecompressor()
        try:
            out: bytes = decompressor.decompress(data, limit + 1)
        except zstd.ZstdError:
            out = b""
        if decompressor.eof and not decompressor.unused_data and len(out) <= limit:
            return out
    pending = [data]
    read = open_reader(lambda _n: pending.pop() if pending else b"", method)
    parts: list[bytes] = []
    left = limit + 1
    while left > 0 and (chunk := read(left)):
        parts.append(chunk)
        left -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- writing -----------------------------------------------------------------------------------------


class Writer:
    """A sink that compresses into another sink; call `finish()` once at the end."""

    def __init__(self, sink: Sink, method: Method, level: int | None = None, threads: bool = False) -> None:
        self._sink = sink
        self.method = method
        self._enc: Any = None
        if method is Method.XZ:
            import lzma

            self._enc = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=6 if level is None else level)
        elif method is Method.BZIP2:
            import bz2

            self._enc = bz2.BZ2Compressor(9 if level is None else level)
        elif method is Method.GZIP:
            self._enc = zlib.compressobj(-1 if level is None else level, wbits=31)
        elif method is Method.ZSTD:
            zstd = _zstd()
            parameter = zstd.CompressionParameter
            options = {
                parameter.compression_level: 3 if level is None else level,
                parameter.checksum_flag: 1,  # corruption shows as an error, not as other bytes
            }
            if threads:  # Nix's parallel-compression: zstd's own worker threads
                options[parameter.nb_workers] = os.cpu_count() or 1
            self._enc = zstd.ZstdCompressor(options=options)
        elif method is Method.BR:
            brotli = _need("brotli", method)
            self._enc = brotli.Compressor(quality=11 if level is None else level)

    def __call__(self, data: bytes) -> None:
        if self._enc is None:
            self._sink(data)
            return
        out = self._enc.process(data) if self.method is Method.BR else self._enc.compress(data)
        if out:
            self._sink(out)

    def finish(self) -> None:
        if self._enc is None:
            return
        out = self._enc.finish() if self.method is Method.BR else self._enc.flush()
        if out:
            self._sink(out)


def open_writer(sink: Sink, method: Method | str, level: int | None = None, threads: bool = False) -> Writer:
    """A compressing sink; `threads` lets methods that can (zstd) compress on several cores."""
    return Writer(sink, Method.parse(method), level, threads)
