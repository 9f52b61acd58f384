"""Where results land: a local folder or an S3 prefix (the DEST).

`Storage` is a root location addressed by '/'-separated relative keys ("videos/a.mp4").
`LocalStorage` writes atomically (temp file in the same folder, fsync, rename) so a crash
never leaves a half-written file under its final name; `S3Storage` (in `i2v.s3`) uses a
boto3 client.

Conditional writes (`write_if_absent`, `replace_if`) let runs sharing a DEST agree on
who does what: on S3 they are `If-None-Match`/`If-Match` PUTs; on a folder, a hard link
(create) and an flock held around compare-and-rename (replace), safe across processes
on one machine. `write_bytes` and `delete` stay unconditional: last writer wins.

Every S3 failure becomes a `StorageError` naming the URI; a missing object is `None` or
`False` where the method says so. Calls block: the pipeline runs them in worker threads
(boto3 clients are thread-safe).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import unquote, urlsplit

from i2v._constants import SCHEME, MiB
from i2v.errors import ConfigError, StorageError
from i2v.localfs import LOCK_NAME, TMP_SUFFIX, atomic_write, folder_lock, fsync_file

if TYPE_CHECKING:
    from i2v.s3 import S3Storage

STAGING_DIR = ".staging"


# ------------------------------------------------------------------------------ helpers


def check_key(key: str, *, folder: bool = False) -> str:
    """Refuse keys that could escape the root or mean different things on each backend."""
    body = key[:-1] if folder and key.endswith("/") else key
    if folder and body == "":
        return key
    parts = body.split("/")
    if not body or "\\" in body or "\x00" in body or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid storage key {key!r}: use a relative '/'-separated path")
    return key


def check_prefix(prefix: str) -> str:
    if prefix.startswith("/") or "\\" in prefix or ".." in prefix.split("/"):
        raise StorageError(f"invalid storage prefix {prefix!r}")
    return prefix


def _libc_malloc_trim() -> Any:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's; musl, macOS and Windows lack it
    except (AttributeError, OSError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _libc_malloc_trim()


def give_back_free_memory() -> None:
    """Return the memory malloc holds free to the system (glibc; elsewhere nothing).

    For after a big video's landing or transfer: its buffers (256 KiB download chunks,
    botocore's 1 MiB reads of each S3 part, decoded frames) raise glibc's mmap
    threshold, after which buffers that size come from the threads' arenas and stay
    there, free but resident, until the process ends (2-5 MiB in each of a run's 14-16
    arenas). Takes well under a millisecond.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


_M_ARENA_MAX = -8  # glibc's mallopt parameter number
RUN_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = RUN_MALLOC_ARENAS) -> bool:
    """Let the threads started from now on share `arenas` malloc arenas (glibc; False
    and nothing elsewhere).

    glibc gives threads up to 8 arenas per core, and a run's dozens of threads
    (landings, state writes, Prefect's own) each keep free memory resident in theirs:
    at a 2,000-row run's peak, 65 MiB free in the arenas against 16 MiB with 2, peak
    RSS 427 MiB against 379, the batch no slower (measured; Python's own allocations
    hold the GIL anyway). Arenas that exist already stay.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, max(1, arenas)))


def _local_version(data: bytes) -> str:
    # Content-addressed: equal bytes are the same state, so an A-B-A change is harmless.
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ storage


class Storage(ABC):
    """A root location; keys are '/'-separated relative paths like "videos/a.mp4"."""

    uri: str

    @abstractmethod
    def key_uri(self, key: str) -> str:
        """Full location of a key: absolute local path or s3://bucket/prefix/key.

        A key ending in '/' names a folder (e.g. "runs/abc/").
        """

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        """Write atomically: readers see the old content or the new, never a mix."""

    @abstractmethod
    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        """Land a staged file under `key` without loading it into memory.

        Local: the file is moved (renamed) into place, so `path` is gone afterwards.
        S3: it is uploaded (multipart when big) and `path` is left for the caller to remove.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object (a file, not a folder) exists under `key`."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when missing."""

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> None:
        """Copy within the root (server-side on S3); a missing source is a StorageError."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix` (a plain string prefix, as on S3), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; a missing one is fine."""

    @abstractmethod
    def staging_dir(self) -> Path:
        """A local folder for downloads that `put_file` will land."""

    @abstractmethod
    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        """A presigned GET URL (S3), or None where there is no such thing (local)."""

    @abstractmethod
    def write_if_absent(
        self, key: str, data: bytes, *, content_type: str | None = None
    ) -> str | None:
        """Create the object only if none exists under `key`: its new version if this
        call created it, else None.

        Of any number of racing callers exactly one gets a version. On S3 a retried
        request whose first attempt landed answers None: the safe side for a claim.
        """

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """The bytes and a version token for `replace_if`; (None, None) when missing."""

    @abstractmethod
    def replace_if(
        self, key: str, data: bytes, version: str | None, *, content_type: str | None = None
    ) -> str | None:
        """Compare-and-swap: write only if the object is still at `version` (from
        `read_versioned` or an earlier write); the new version, or None and nothing
        written.

        `version=None` means "still absent", i.e. `write_if_absent`.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


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


def open_storage(uri: str | Path, *, s3_client: Any | None = None) -> Storage:
    """Open a destination: s3://bucket/prefix -> S3Storage; a path or file:// -> LocalStorage.

    Raises ConfigError for an s3:// URI without a bucket, any other scheme, or a local
    path that is an existing file.
    """
    if isinstance(uri, Path):
        return _local(uri)
    text = uri.strip()
    if not text:
        raise ConfigError("the destination is empty; give a folder or s3://bucket/prefix")
    match = SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme == "s3":
            # Imported here: i2v.s3 imports Storage from this module.
            from i2v.s3 import S3Storage, split_s3_uri

            bucket, prefix = split_s3_uri(text)
            return S3Storage(bucket, prefix, s3_client=s3_client)
        if scheme == "file":
            return _local(Path(unquote(urlsplit(text).path)))
        raise ConfigError(
            f"unsupported destination {text!r}: use a local folder or s3://bucket/prefix"
        )
    return _local(Path(text))


def is_s3(storage: Storage) -> TypeGuard[S3Storage]:
    """`isinstance(storage, S3Storage)` without importing boto3 for a folder DEST: an
    S3Storage exists only once i2v.s3 has been imported."""
    s3 = sys.modules.get("i2v.s3")
    return s3 is not None and isinstance(storage, s3.S3Storage)


def _local(path: Path) -> LocalStorage:
    storage = LocalStorage(path)
    if storage.root.exists() and not storage.root.is_dir():
        raise ConfigError(f"destination {storage.root} is a file, not a folder")
    return storage
