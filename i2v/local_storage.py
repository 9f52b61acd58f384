"""A folder on this machine as a DEST: the local `Storage` backend.

Writes go through a temp file in the target's folder (`i2v.localfs`), so a crash never
leaves a half-written file under its final name; conditional writes are a hard link
(create) or a compare-and-rename under the folder's flock (replace).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from pathlib import Path

from i2v._constants import MiB
from i2v.errors import StorageError
from i2v.localfs import LOCK_NAME, TMP_SUFFIX, atomic_write, folder_lock, fsync_file
from i2v.storage import Storage, check_key, check_prefix

STAGING_DIR = ".staging"


def _local_version(data: bytes) -> str:
    # Content-addressed: equal bytes are the same state, so an A-B-A change is harmless.
    return hashlib.sha256(data).hexdigest()


class LocalStorage(Storage):
    """A folder on this machine, created on first write."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def key_uri(self, key: str) -> str:
        return str(self.root / check_key(key, folder=True))

    def read_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def write_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        path = self._path(key)
        try:
            atomic_write(path, lambda f: f.write(data))
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        dst = self._path(key)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            # The rename is atomic but not durable by itself: flush the data first so a
            # power cut cannot leave an empty file under the final name.
            fsync_file(path)
            try:
                os.replace(path, dst)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # Staged somewhere else than staging_dir(): copy instead of rename.
                with open(path, "rb") as src:
                    atomic_write(dst, lambda f: shutil.copyfileobj(src, f, 1 * MiB))
        except OSError as exc:
            raise StorageError(f"cannot move {path} to {dst}: {exc.strerror or exc}") from exc

    def write_if_absent(
        self, key: str, data: bytes, *, content_type: str | None = None
    ) -> str | None:
        path = self._path(key)
        try:
            # Under the lock too, so a create never lands inside a replace_if's
            # compare-and-rename.
            with folder_lock(path.parent):
                created = atomic_write(path, lambda f: f.write(data), overwrite=False)
                return _local_version(data) if created else None
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        data = self.read_bytes(key)
        return data, None if data is None else _local_version(data)

    def replace_if(
        self, key: str, data: bytes, version: str | None, *, content_type: str | None = None
    ) -> str | None:
        if version is None:
            return self.write_if_absent(key, data, content_type=content_type)
        path = self._path(key)
        try:
            with folder_lock(path.parent):
                if self.read_versioned(key)[1] != version:
                    return None
                atomic_write(path, lambda f: f.write(data))
                return _local_version(data)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc.strerror or exc}") from exc
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def copy(self, src_key: str, dst_key: str) -> None:
        src, dst = self._path(src_key), self._path(dst_key)
        try:
            with open(src, "rb") as f_src:
                atomic_write(dst, lambda f: shutil.copyfileobj(f_src, f, 1 * MiB))
        except FileNotFoundError as exc:
            raise StorageError(f"cannot copy {src}: it does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot copy {src} to {dst}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        folder = prefix.rpartition("/")[0]  # walk only the folder the prefix can be in
        start = self.root / folder if folder else self.root
        if not start.is_dir():
            return []
        keys: list[str] = []
        try:
            for dirpath, dirnames, filenames in os.walk(start, onerror=_raise_unless_gone):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                rel = "" if rel == "." else rel + "/"
                if rel == "":
                    dirnames[:] = [d for d in dirnames if d != STAGING_DIR]
                keys.extend(
                    rel + name
                    for name in filenames
                    if not name.endswith(TMP_SUFFIX)
                    and name != LOCK_NAME
                    and (rel + name).startswith(prefix)
                )
        except OSError as exc:
            raise StorageError(f"cannot list {start}: {exc.strerror or exc}") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror or exc}") from exc

    def staging_dir(self) -> Path:
        # Inside the root: same filesystem, so put_file is a rename, not a copy.
        path = self.root / STAGING_DIR
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
        return path

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        return None


def _raise_unless_gone(exc: OSError) -> None:
    # A folder deleted while we walk is simply not there; anything else is a real error.
    if not isinstance(exc, FileNotFoundError):
        raise exc
