# mypy: disable-error-code="unreachable"
"""The casefold layer with the kernel's caches on: a change through one spelling shows at once through
every other.

The mount lets the kernel keep names and attributes for an hour (`--cache-timeout 3600`), so nothing in
these tests expires on its own: what a test sees through a spelling other than the one it changed, it
sees because the layer told the kernel (`xstore.fuse.casefold_cache`). The first test proves that the
caches are really on (a change made to the backing directory directly, which the layer cannot see, stays
invisible through the mount); each other test first makes the kernel cache what the change will make
untrue (a stat, a lookup, an open), then changes it through another spelling or another spelling of its
directory, and looks at once. The daemon's log must show no error.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fusehelpers import mounted, require_fuse

if sys.platform != "linux":
    pytest.skip("FUSE tests run on Linux only", allow_module_level=True)

pytestmark = pytest.mark.fuse


def daemon_errors(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(mount point, backing directory, log) of an apfs-model mount whose caches last an hour."""
    require_fuse()
    base = tmp_path_factory.mktemp("casefold-cache")
    backing, mountpoint, log = base / "backing", base / "mnt", base / "fuse.log"
    backing.mkdir()
    mountpoint.mkdir()
    env = {**os.environ, "XSTORE_FUSE_LOG": str(log)}
    argv: list[str | os.PathLike[str]] = ["casefold", backing, mountpoint, "--cache-timeout", "3600"]
    with mounted(argv, mountpoint, env=env):
        yield mountpoint, backing, log
    assert daemon_errors(log) == []


@pytest.fixture
def place(layer: tuple[Path, Path, Path], request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    """A fresh directory of the mount: (as the mount shows it, in the backing directory)."""
    mount, backing, log = layer
    name = request.node.name
    (mount / name).mkdir()
    yield mount / name, backing / name
    assert daemon_errors(log) == []


def errno_of(call: object, *args: object) -> int:
    assert callable(call)
    try:
        result = call(*args)
    except OSError as e:
        return e.errno or 0
    close = getattr(result, "close", None)
    if callable(close):
        close()
    pytest.fail(f"{getattr(call, '__name__', call)}{args} succeeded")


def test_the_kernel_caches_are_on(layer: tuple[Path, Path, Path], place: tuple[Path, Path]) -> None:
    """A change the layer cannot see (made to the backing directory directly) stays invisible through
    the mount: attributes, and names where the kernel has the epoch notification (Linux 6.16; the
    layer says in its log whether it has), come from the kernel's caches, not from the layer."""
    m, b = place
    (m / "seen").write_bytes(b"123")
    assert os.stat(m / "seen").st_size == 3
    (b / "seen").write_bytes(b"1234567")
    assert os.stat(m / "seen").st_size == 3  # cached
    os.unlink(b / "seen")
    log = layer[2].read_text(errors="replace")
    assert "FUSE notifications: epoch" in log
    if "FUSE notifications: epoch supported" in log:
        assert os.path.exists(m / "seen")  # cached


def test_a_write_shows_through_every_spelling(place: tuple[Path, Path]) -> None:
    m, _ = place
    (m / "foo").write_bytes(b"abc")
    assert os.stat(m / "FOO").st_size == 3  # FOO's inode (an alias) has attributes cached
    assert (m / "Foo").read_bytes() == b"abc"  # and Foo's pages
    fd = os.open(m / "fOO", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 3
        with open(m / "foo", "ab") as f:
            f.write(b"defg")
        assert os.stat(m / "FOO").st_size == 7
        assert os.fstat(fd).st_size == 7
        assert (m / "Foo").read_bytes() == b"abcdefg"
        assert os.pread(fd, 100, 0) == b"abcdefg"
    finally:
        os.close(fd)


def test_a_truncating_open_shows_through_every_spelling(place: tuple[Path, Path]) -> None:
    m, _ = place
    (m / "data").write_bytes(b"0123456789")
    assert os.stat(m / "DATA").st_size == 10
    (m / "Data").write_bytes(b"xy")  # O_TRUNC through a third spelling
    assert os.stat(m / "DATA").st_size == 2
    assert os.stat(m / "data").st_size == 2
    assert (m / "DATA").read_bytes() == b"xy"


def test_attributes_set_through_one_spelling_show_through_another(place: tuple[Path, Path]) -> None:
    m, b = place
    (m / "attr").write_bytes(b"a")
    before = os.stat(m / "attr")
    assert stat.S_IMODE(before.st_mode) == 0o644 & ~current_umask()
    os.chmod(m / "ATTR", 0o600)
    os.utime(m / "Attr", ns=(10**9, 2 * 10**9))
    after = os.stat(m / "attr")
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert after.st_mtime_ns == 2 * 10**9
    os.setxattr(m / "ATTR", "user.k", b"v")
    assert os.stat(m / "attr").st_ctime_ns == os.stat(b / "attr").st_ctime_ns


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_link_count_shows_through_every_spelling(place: tuple[Path, Path]) -> None:
    m, _ = place
    (m / "one").write_bytes(b"1")
    assert os.stat(m / "ONE").st_nlink == 1
    os.link(m / "one", m / "two")
    assert os.stat(m / "ONE").st_nlink == 2
    os.unlink(m / "TWO")
    assert os.stat(m / "ONE").st_nlink == 1


def test_a_rename_through_one_spelling_hides_the_others(place: tuple[Path, Path]) -> None:
    m, b = place
    (m / "foo").write_bytes(b"f")
    assert os.stat(m / "foo").st_size == 1  # the kernel holds `foo`
    os.rename(m / "FOO", m / "bar")
    assert not os.path.lexists(m / "foo")
    assert not os.path.lexists(m / "FOO")
    assert (m / "BAR").read_bytes() == b"f"
    assert sorted(os.listdir(m)) == sorted(os.listdir(b)) == ["bar"]

    (m / "dir").mkdir()
    (m / "dir" / "x").write_bytes(b"x")
    assert os.stat(m / "dir" / "x").st_size == 1  # `dir` and `dir/x`
    os.rename(m / "DIR", m / "moved")
    assert not os.path.lexists(m / "dir")
    assert errno_of(os.stat, m / "dir" / "x") == errno.ENOENT
    assert (m / "MOVED" / "X").read_bytes() == b"x"


def test_an_unlink_through_one_spelling_shows_through_another(place: tuple[Path, Path]) -> None:
    m, b = place
    (m / "gone").write_bytes(b"old")
    assert os.stat(m / "gone").st_size == 3
    os.unlink(m / "GONE")
    assert not os.path.lexists(m / "gone")
    assert errno_of(open, m / "gone", "rb") == errno.ENOENT
    (m / "gone").write_bytes(b"new!")  # a new file, not the old one reopened
    assert (m / "GONE").read_bytes() == b"new!"
    assert (b / "gone").read_bytes() == b"new!"

    (m / "empty").mkdir()
    assert os.stat(m / "empty").st_nlink == 2
    os.rmdir(m / "EMPTY")
    assert not os.path.lexists(m / "empty")
    os.mkdir(m / "empty")
    assert os.listdir(m / "EMPTY") == []


def test_a_removal_through_the_stored_spelling_hides_the_others(place: tuple[Path, Path]) -> None:
    """The kernel holds `NAME` (an alias); the removal names `name`, as stored."""
    m, _ = place
    (m / "name").write_bytes(b"n")
    assert os.stat(m / "NAME").st_size == 1
    os.unlink(m / "name")
    assert not os.path.lexists(m / "NAME")
    assert errno_of(open, m / "NAME", "rb") == errno.ENOENT
    (m / "name").write_bytes(b"again")
    assert (m / "NAME").read_bytes() == b"again"  # the new file, through the spelling the kernel held


def test_a_removal_through_another_spelling_of_the_directory(place: tuple[Path, Path]) -> None:
    """`Dir/x` is cached; `DIR/x` (the directory through another spelling, another inode) goes."""
    m, _ = place
    (m / "Dir").mkdir()
    (m / "Dir" / "x").write_bytes(b"x")
    assert os.stat(m / "Dir" / "x").st_size == 1
    os.unlink(m / "DIR" / "x")
    assert not os.path.lexists(m / "Dir" / "x")
    (m / "DIR" / "y").write_bytes(b"y")
    assert os.stat(m / "dIR" / "Y").st_size == 1
    os.rename(m / "Dir" / "y", m / "Dir" / "z")
    assert not os.path.lexists(m / "dIR" / "Y")
    assert os.path.exists(m / "dIR" / "Z")


def test_a_rename_onto_another_spelling_replaces_what_it_shows(place: tuple[Path, Path]) -> None:
    m, b = place
    (m / "target").write_bytes(b"old")
    (m / "source").write_bytes(b"new contents")
    assert (m / "target").read_bytes() == b"old"  # the kernel holds `target`, attributes and pages
    os.rename(m / "source", m / "TARGET")
    assert (m / "target").read_bytes() == b"new contents"
    assert os.stat(m / "target").st_size == len(b"new contents")
    assert not os.path.lexists(m / "source")
    assert sorted(os.listdir(m)) == sorted(os.listdir(b)) == ["TARGET"]


def test_a_listing_and_the_directory_after_creating_through_another_spelling(
    place: tuple[Path, Path],
) -> None:
    m, b = place
    (m / "Dir").mkdir()
    nlink = os.stat(m / "Dir").st_nlink
    os.mkdir(m / "DIR" / "sub")
    assert os.stat(m / "Dir").st_nlink == nlink + 1  # before any listing, which refreshes it anyway
    assert os.listdir(m / "Dir") == ["sub"]
    (m / "dir" / "File").write_bytes(b"f")
    assert sorted(os.listdir(m / "Dir")) == sorted(os.listdir(b / "Dir")) == ["File", "sub"]
    assert os.stat(m / "Dir" / "file").st_size == 1
