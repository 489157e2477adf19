"""File-system helpers of the local target: exclusive writes, fsync, reads that never follow a
symlink, and a stat walk. Plain functions over paths; no knowledge of the layout."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import NamedTuple


class FileRecord(NamedTuple):
    """The stat of one file when it was materialised; hash is None for secrets.env.

    A tuple, not a dataclass: a large instance reads back a hundred thousand of them."""

    hash: str | None
    size: int
    mtime_ns: int
    ino: int
    mode: int

    def matches(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ino) == (self.size, self.mtime_ns, self.ino) and (
            self.hash is not None or stat.S_IMODE(st.st_mode) == self.mode
        )

    @classmethod
    def of(cls, digest: str | None, st: os.stat_result) -> FileRecord:
        return cls(digest, st.st_size, st.st_mtime_ns, st.st_ino, stat.S_IMODE(st.st_mode))


def second_ago_ns() -> int:
    # Materialised files get an mtime a whole second in the past, so any later in-place edit
    # (whose mtime is "now", at the kernel's coarse granularity) always differs from it.
    return (time.time_ns() // 1_000_000_000 - 1) * 1_000_000_000


def write_new(path: str | Path, content: bytes, mode: int, mtime_ns: int) -> os.stat_result:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        return os.fstat(fd)
    finally:
        os.close(fd)


def fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_under(base: str | Path, rel: str) -> bytes | None:
    """Read ``base/rel`` without following any symlink below ``base``; None if not a file."""
    parts = rel.split("/")
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        for part in parts[:-1]:
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = sub
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        with os.fdopen(leaf, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO):
            return None
        raise
    finally:
        os.close(fd)


def walk(base: str | Path) -> dict[str, os.stat_result]:
    """Every regular file below ``base`` (symlinks are not followed) -> its lstat."""
    found: dict[str, os.stat_result] = {}
    stack = [("", os.fspath(base))]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    found[rel] = entry.stat(follow_symlinks=False)
    return found
