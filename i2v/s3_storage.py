"""An S3 prefix as a DEST: the S3 `Storage` backend.

Conditional writes are `If-None-Match`/`If-Match` PUTs; every call is retried while S3
fails transiently (`i2v.s3.with_retries`) and any other failure becomes a
`StorageError` naming the URI. Big transfers are multipart, a few at a time.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from i2v._constants import MiB
from i2v.errors import ConfigError, StorageError
from i2v.memory import give_back_free_memory
from i2v.s3 import (
    S3_ERRORS,
    S3_MISSING_CODES,
    default_s3_client,
    s3_error_code,
    s3_storage_error,
    with_retries,
)
from i2v.storage import Storage, check_key, check_prefix

# A conditional PUT that lost: the object exists (If-None-Match) or changed (If-Match);
# 409 is AWS's answer while another conditional write to the key is in flight.
S3_PRECONDITION_CODES = frozenset(
    {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
)
# Big transfers run in the caller's thread (the landing's worker), without s3transfer's
# own, and give malloc's free memory back when done (`give_back_free_memory`). Profiled
# (benchmarks/s3_memory_profile.py), an S3 DEST's extra memory over a local one was not
# live buffers but free memory held by glibc's per-thread arenas: botocore reads each
# part in 1 MiB pieces (the SigV4 payload hash on http, the CRC32 checksum), and
# s3transfer's fresh threads per call spread those over all 16 arenas (glibc's cap on 2
# cores). Parts then go one after another, so BIG_TRANSFERS_AT_ONCE places per storage
# (multipart transfers; smaller objects skip the queue) keep 4 connections busy, as 2
# videos x 2 parts did: throughput comes from moving several videos at once. Still
# multipart (8 MiB parts; S3's minimum is 5): the object appears only on
# CompleteMultipartUpload, and a failed upload is aborted. From a file, parts are read
# lazily: nothing is read ahead into memory.
BIG_TRANSFERS_AT_ONCE = 4
UPLOAD_CONFIG = TransferConfig(
    multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, use_threads=False
)
DOWNLOAD_CONFIG = TransferConfig(
    multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, use_threads=False
)

# A video is copied server-side in one copy_object call; only objects above 4 GiB (near
# copy_object's 5 GiB limit) go through part copies.
COPY_CONFIG = TransferConfig(
    multipart_threshold=4096 * MiB, multipart_chunksize=512 * MiB, max_concurrency=4
)


class S3Storage(Storage):
    """A prefix in an S3 (or S3-compatible) bucket."""

    list_page_size = 1000  # keys per ListObjectsV2 call (S3's maximum)

    def __init__(self, bucket: str, prefix: str = "", *, s3_client: Any | None = None) -> None:
        if not bucket:
            raise ConfigError("an S3 destination needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = s3_client if s3_client is not None else default_s3_client()
        self._bucket_ok = False
        self._staging: Path | None = None
        self._lock = threading.Lock()
        self._big_transfers = threading.BoundedSemaphore(BIG_TRANSFERS_AT_ONCE)

    def _key(self, key: str, *, folder: bool = False) -> str:
        key = check_key(key, folder=folder)
        return f"{self.prefix}/{key}" if self.prefix else key

    def key_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key, folder=True)}"

    def _check_bucket(self) -> None:
        """Tell "no such object" from "no such bucket": HEAD answers a bare 404 to both."""
        if self._bucket_ok:
            return
        try:
            with_retries(lambda: self.client.head_bucket(Bucket=self.bucket))
        except S3_ERRORS as exc:
            if s3_error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(
                    f"cannot use {self.uri}: bucket {self.bucket!r} does not exist"
                ) from exc
            raise s3_storage_error(exc, self.uri, "use") from exc
        self._bucket_ok = True

    def read_bytes(self, key: str) -> bytes | None:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:

            def get() -> tuple[bytes, str]:
                resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                return bytes(resp["Body"].read()), str(resp["ETag"])

            return with_retries(get)
        except S3_ERRORS as exc:
            if s3_error_code(exc) in S3_MISSING_CODES:
                return None, None
            raise s3_storage_error(exc, self.key_uri(key), "read") from exc

    def write_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        self._put(key, data, content_type)

    def write_if_absent(
        self, key: str, data: bytes, *, content_type: str | None = None
    ) -> str | None:
        return self._put(key, data, content_type, IfNoneMatch="*")

    def replace_if(
        self, key: str, data: bytes, version: str | None, *, content_type: str | None = None
    ) -> str | None:
        if version is None:
            return self.write_if_absent(key, data, content_type=content_type)
        return self._put(key, data, content_type, IfMatch=version)

    def _put(self, key: str, data: bytes, content_type: str | None, **condition: str) -> str | None:
        """One PUT; the new ETag, or None when its `condition` (If-None-Match / If-Match)
        did not hold.

        A store that ignores the condition headers degrades to last-writer-wins.
        """
        extra = {"ContentType": content_type} if content_type else {}
        try:
            # A conditional PUT retried after its answer was lost finds its own write
            # and answers 412: `i2v.claims` reads the record back to tell.
            resp = with_retries(
                lambda: self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, **extra, **condition
                )
            )
        except S3_ERRORS as exc:
            code = s3_error_code(exc)
            # If-Match on a key deleted since it was read answers 404 NoSuchKey.
            if condition and (code in S3_PRECONDITION_CODES or code in S3_MISSING_CODES):
                return None
            raise s3_storage_error(exc, self.key_uri(key), "write") from exc
        return str(resp["ETag"])

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else None
        try:
            with self._transfer_place(path.stat().st_size):
                with_retries(
                    lambda: self.client.upload_file(
                        str(path),
                        self.bucket,
                        self._key(key),
                        ExtraArgs=extra,
                        Config=UPLOAD_CONFIG,
                    )
                )
        except S3_ERRORS as exc:
            raise s3_storage_error(exc, self.key_uri(key), "upload to") from exc
        except OSError as exc:
            raise StorageError(f"cannot upload {path}: {exc.strerror or exc}") from exc

    def _transfer_place(self, size: int) -> contextlib.AbstractContextManager[Any]:
        """A place among the big transfers for an object of `size` bytes (none if small)."""
        if size >= UPLOAD_CONFIG.multipart_threshold:
            return self._big_transfer()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _big_transfer(self) -> Iterator[None]:
        try:
            with self._big_transfers:
                yield
        finally:
            give_back_free_memory()

    def get_file(self, key: str, path: Path) -> None:
        """Download `key` to `path`, streamed to disk (bounded memory); StorageError if
        it is missing or unreadable."""
        head = self._head(key)
        if head is None:
            raise StorageError(f"{self.key_uri(key)} does not exist")
        try:
            with self._transfer_place(int(head.get("ContentLength", 0))):
                with_retries(
                    lambda: self.client.download_file(
                        self.bucket, self._key(key), str(path), Config=DOWNLOAD_CONFIG
                    )
                )
        except S3_ERRORS as exc:
            raise s3_storage_error(exc, self.key_uri(key), "download") from exc

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(
                with_retries(
                    lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                )
            )
        except S3_ERRORS as exc:
            if s3_error_code(exc) in S3_MISSING_CODES:
                self._check_bucket()
                return None
            raise s3_storage_error(exc, self.key_uri(key), "check") from exc

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def copy(self, src_key: str, dst_key: str) -> None:
        source = {"Bucket": self.bucket, "Key": self._key(src_key)}
        try:
            with_retries(
                lambda: self.client.copy(
                    source, self.bucket, self._key(dst_key), Config=COPY_CONFIG
                )
            )
        except S3_ERRORS as exc:
            if s3_error_code(exc) in S3_MISSING_CODES:
                self._check_bucket()
                raise StorageError(
                    f"cannot copy {self.key_uri(src_key)}: it does not exist"
                ) from exc
            raise s3_storage_error(exc, self.key_uri(src_key), "copy") from exc

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self.list_versions(prefix))

    def list_versions(self, prefix: str = "") -> dict[str, str]:
        """Key -> ETag of every object under `prefix`: a record's version, from the
        listing alone (`i2v.status_read` reads only the records that changed)."""
        check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""

        def listing() -> dict[str, str]:
            found: dict[str, str] = {}
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=root + prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        found[obj["Key"][len(root) :]] = str(obj.get("ETag", ""))
            return found

        try:
            return with_retries(listing)
        except S3_ERRORS as exc:
            raise s3_storage_error(exc, f"{self.uri}/{prefix}".rstrip("/"), "list") from exc

    def delete(self, key: str) -> None:
        try:
            with_retries(lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))
        except S3_ERRORS as exc:
            if s3_error_code(exc) in S3_MISSING_CODES:
                return
            raise s3_storage_error(exc, self.key_uri(key), "delete") from exc

    def staging_dir(self) -> Path:
        with self._lock:
            if self._staging is None:
                self._staging = Path(tempfile.mkdtemp(prefix="i2v-staging-"))
                # Removed at exit rather than on garbage collection, so a caller holding
                # only the path never sees it vanish.
                atexit.register(shutil.rmtree, self._staging, ignore_errors=True)
            return self._staging

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        try:
            return str(
                self.client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket, "Key": self._key(key)},
                    ExpiresIn=expires_s,
                )
            )
        except S3_ERRORS as exc:
            raise s3_storage_error(exc, self.key_uri(key), "presign") from exc
