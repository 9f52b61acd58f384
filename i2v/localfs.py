"""Files that are never seen half-written, and a lock shared by every process on a machine.

The local DEST backend's building blocks: a write goes to a temp file in the target's
folder, is fsynced, then renamed (replace) or hard-linked (create only) into place.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".i2v-tmp"  # in-progress writes; never listed
LOCK_NAME = ".i2v.lock"  # one per folder that saw a conditional write; never listed


def fsync_file(path: Path) -> None:
    """Flush `path`'s data to disk, so a rename of it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(dst: Path, fill: Callable[[BinaryIO], object], *, overwrite: bool = True) -> bool:
    """Write `dst` through a temp file in its folder: readers see old or new, never half.

    `fill(file)` writes the content. With `overwrite=False` the temp file is hard-linked
    into place, which (unlike rename) refuses an existing `dst`: False, nothing written.
    The temp file is created with mode 0o666 so the umask applies as for any normal file
    (mkstemp would force 0o600).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, dst)
            return True
        try:
            os.link(tmp, dst)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):  # after a rename it is gone already
            tmp.unlink()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on `folder`'s lock file: one holder per machine.

    Each call opens its own file description, so threads of one process exclude each
    other too; the kernel drops the lock if the holder dies.
    """
    import fcntl  # POSIX only; imported here so the package still loads elsewhere

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
