"""Where results land: a local folder or an S3 prefix (the DEST), as one interface.

`Storage` is a root location addressed by '/'-separated relative keys ("videos/a.mp4").
The backends: `LocalStorage` (`i2v.local_storage`) writes atomically (temp file in the
same folder, fsync, rename) so a crash never leaves a half-written file under its final
name; `S3Storage` (`i2v.s3_storage`) uses a boto3 client. `i2v.dest.open_storage`
chooses between them from a DEST's URI.

Conditional writes (`write_if_absent`, `replace_if`) let runs sharing a DEST agree on
who does what: on S3 they are `If-None-Match`/`If-Match` PUTs; on a folder, a hard link
(create) and an flock held around compare-and-rename (replace), safe across processes
on one machine. `write_bytes` and `delete` stay unconditional: last writer wins.

Every S3 failure becomes a `StorageError` naming the URI; a missing object is `None` or
`False` where the method says so. Calls block: the pipeline runs them in worker threads
(boto3 clients are thread-safe).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from i2v.errors import StorageError


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
