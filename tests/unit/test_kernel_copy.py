"""Large file contents moved in the kernel: dumping to a file or a pipe, restoring from a file or a pipe.
The bytes must be exactly those of the buffered path, and the same checks must hold (a file that
changes size while dumped, an archive that ends early)."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from xstore.casehack import CaseHackMode
from xstore.errors import DumpError, TruncatedError
from xstore.fsops import FdSink, copy_range
from xstore.nar.dump import dump_path
from xstore.nar.restore import restore_path

SIZE = (3 << 20) + 5  # over the threshold, and not a multiple of 8 (padding follows)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "big").write_bytes(os.urandom(SIZE))
    (root / "small").write_bytes(b"small")
    (root / "tool").write_bytes(os.urandom(SIZE + 3))
    os.chmod(root / "tool", 0o755)  # noqa: S103 (an executable in the tree)
    return root


def buffered_nar(path: Path) -> bytes:
    parts: list[bytes] = []
    dump_path(path, parts.append)
    return b"".join(parts)


def test_dump_into_a_file_and_a_pipe(tree: Path, tmp_path: Path) -> None:
    expected = buffered_nar(tree)
    out = tmp_path / "out.nar"
    with open(out, "wb") as f:
        assert dump_path(tree, FdSink(f.fileno())) == len(expected)
    assert out.read_bytes() == expected
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(r, 1 << 16), b"")))
    reader.start()
    try:
        dump_path(tree, FdSink(w))
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    assert b"".join(got) == expected


def test_dump_in_the_kernel_still_notices_a_file_that_changed(tree: Path, tmp_path: Path) -> None:
    big = tree / "sub" / "big"
    with open(tmp_path / "out.nar", "wb") as f:
        sink = FdSink(f.fileno())
        grown = False

        class Growing(FdSink):
            def __call__(self, data: bytes) -> None:
                nonlocal grown
                super().__call__(data)
                if not grown and b"sub" in data:
                    grown = True
                    with open(big, "ab") as g:
                        g.write(b"more")

        with pytest.raises(DumpError, match=r"big' grew while being dumped"):
            dump_path(tree, Growing(sink.fd))


def _restore_from_fd(tmp_path: Path, data: bytes, name: str, through_pipe: bool) -> Path:
    dest = tmp_path / name
    if through_pipe:
        r, w = os.pipe()

        def feed() -> None:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view[: 1 << 16]) :]
            except BrokenPipeError:
                pass
            finally:
                os.close(w)

        writer = threading.Thread(target=feed)
        writer.start()
        try:
            restore_path(dest, lambda n: os.read(r, n), source_fd=r, case_hack=CaseHackMode.OFF)
        finally:
            os.close(r)
            writer.join()
    else:
        path = tmp_path / f"{name}.nar"
        path.write_bytes(data)
        with open(path, "rb", buffering=0) as f:
            restore_path(dest, f.read, source_fd=f.fileno(), case_hack=CaseHackMode.OFF)
    return dest


@pytest.mark.parametrize("through_pipe", [False, True], ids=["file", "pipe"])
def test_restore_from_a_descriptor(tree: Path, tmp_path: Path, through_pipe: bool) -> None:
    data = buffered_nar(tree)
    dest = _restore_from_fd(tmp_path, data, "out", through_pipe)
    assert buffered_nar(dest) == data
    assert os.stat(dest / "tool").st_mode & 0o777 == 0o755


@pytest.mark.parametrize("through_pipe", [False, True], ids=["file", "pipe"])
def test_restore_from_a_descriptor_refuses_a_cut_archive(
    tree: Path, tmp_path: Path, through_pipe: bool
) -> None:
    data = buffered_nar(tree)
    cut = data[: len(data) - SIZE // 2]  # inside the last large file's contents
    with pytest.raises(TruncatedError, match="unexpected end of file while reading a file's contents"):
        _restore_from_fd(tmp_path, cut, "cut", through_pipe)
    assert sorted(os.listdir(tmp_path)) == sorted(["tree", *(["cut.nar"] if not through_pipe else [])])


def test_copy_range_falls_back_between_kinds(tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    src = tmp_path / "src"
    src.write_bytes(payload)
    # file -> file, file -> pipe (sendfile), pipe -> file (splice), pipe -> pipe (splice)
    with open(src, "rb") as f, open(tmp_path / "dst", "wb") as g:
        assert copy_range(f.fileno(), g.fileno(), len(payload)) == len(payload)
    assert (tmp_path / "dst").read_bytes() == payload
    r, w = os.pipe()
    with open(src, "rb") as f:
        got = _through_pipe(lambda: copy_range(f.fileno(), w, len(payload)), r, w)
    assert got == payload
    with open(src, "rb") as f, open(os.devnull, "wb") as null:
        assert copy_range(f.fileno(), null.fileno(), 10) == 10


def test_copy_range_reports_a_short_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    with open(src, "rb") as f, open(tmp_path / "dst", "wb") as g:
        assert copy_range(f.fileno(), g.fileno(), 10) == 3


def _through_pipe(write: object, r: int, w: int) -> bytes:
    assert callable(write)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(_chunks(r)))
    reader.start()
    try:
        write()
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    return b"".join(got)


def _chunks(fd: int) -> Iterator[bytes]:
    while data := os.read(fd, 1 << 16):
        yield data


def test_buffered_restore_is_unchanged(tree: Path, tmp_path: Path) -> None:
    data = buffered_nar(tree)
    restore_path(tmp_path / "plain", io.BytesIO(data).read, case_hack=CaseHackMode.OFF)
    assert buffered_nar(tmp_path / "plain") == data
