"""S3 plumbing shared by DEST storage, input pictures and manifests, and `S3Storage`.

Clients use boto3's standard credential chain; `AWS_ENDPOINT_URL` (read by botocore
itself since 1.28) points them at MinIO, R2 or LocalStack. Every failure is turned into
a message that names the bucket's problem, not botocore's class names.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from i2v._constants import MiB
from i2v.errors import ConfigError, StorageError, StorageUnavailable
from i2v.storage import Storage, check_key, check_prefix, give_back_free_memory

S3_ERRORS = (ClientError, BotoCoreError, S3UploadFailedError)
# What a GET/HEAD/DELETE of an absent key answers (HEAD has no body, hence the bare 404).
S3_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# A conditional PUT that lost: the object exists (If-None-Match) or changed (If-Match);
# 409 is AWS's answer while another conditional write to the key is in flight.
S3_PRECONDITION_CODES = frozenset(
    {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
)
# Answers that say "not now" rather than "no": S3 (or a hop before it) is overloaded,
# restarting or cut off, and the same request may succeed in a moment.
S3_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "503"}
)
S3_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
# botocore retries each request (standard mode, jittered) BOTO_ATTEMPTS times; these
# waits come on top, for the faults that outlast its attempts or its retry quota (which
# a burst of failures drains): 12 tries in all, about 8 s before a call gives up. Each
# wait is jittered by +-50 %. A DEST down for longer is the pipeline's call
# (`i2v.outage`): it waits minutes for a paid video, and decides when to stop.
BOTO_ATTEMPTS = 3
RETRY_DELAYS_S = (0.5, 1.0, 2.0)
T = TypeVar("T")

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


def split_s3_uri(uri: str) -> tuple[str, str]:
    """("bucket", "key/prefix") of an s3:// URI; the key is taken literally (no decoding).

    Raises ConfigError when it is not an s3:// URI or names no bucket.
    """
    if uri[:5].lower() != "s3://":
        raise ConfigError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ConfigError(f"s3 URI {uri!r} names no bucket; use s3://bucket/prefix")
    return bucket, key


def make_s3_client(session: boto3.Session | None = None) -> Any:
    """An S3 client with bounded retries and a pool big enough for parallel transfers.

    The endpoint comes from `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3`, which botocore
    (>= 1.28, pinned via boto3 >= 1.35) applies on its own; credentials and region come
    from the standard chain.
    """
    session = session or boto3.session.Session()  # a fresh session: thread-safe to create
    config = Config(
        retries={"mode": "standard", "max_attempts": BOTO_ATTEMPTS},
        # A black-holed endpoint otherwise holds each attempt for botocore's 60 s.
        connect_timeout=10,
        max_pool_connections=64,
        # SigV4 everywhere: R2 and recent regions refuse the legacy presign signature.
        signature_version="s3v4",
    )
    return session.client("s3", config=config)


_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_default_clients: dict[tuple[str | None, ...], Any] = {}
_default_lock = threading.Lock()


def default_s3_client() -> Any:
    """A shared client for callers that pass none: making one costs ~100 ms and a pool.

    Keyed on the environment that shapes a client, so a changed endpoint or profile
    gets a new one.
    """
    env = tuple(os.environ.get(name) for name in _CLIENT_ENV)
    with _default_lock:
        if env not in _default_clients:
            _default_clients[env] = make_s3_client()
        return _default_clients[env]


def s3_error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore error, looking through boto3's upload wrapper."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return str(seen.response.get("Error", {}).get("Code", ""))
        seen = seen.__cause__ or seen.__context__
    return ""


def is_transient(exc: BaseException) -> bool:
    """Whether an S3 failure may pass on its own: a connection refused, cut or timed
    out, a 5xx, or S3 asking to slow down (looking through boto3's upload wrapper)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BotoConnectionError | HTTPClientError):
            return True
        if isinstance(seen, ClientError):
            meta = seen.response.get("ResponseMetadata", {})
            code = str(seen.response.get("Error", {}).get("Code", ""))
            return code in S3_TRANSIENT_CODES or meta.get("HTTPStatusCode") in S3_TRANSIENT_STATUS
        seen = seen.__cause__ or seen.__context__
    return False


def with_retries(call: Callable[[], T], delays_s: tuple[float, ...] = RETRY_DELAYS_S) -> T:
    """`call()`, again after each jittered delay while it fails transiently."""
    for delay in delays_s:
        try:
            return call()
        except S3_ERRORS as exc:
            if not is_transient(exc):
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))
    return call()


def s3_error_detail(exc: BaseException, bucket: str) -> str:
    """A one-line reason for an S3 failure in `bucket`, for people rather than logs."""
    code = s3_error_code(exc)
    if code == "NoSuchBucket":
        return f"bucket {bucket!r} does not exist"
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return "access denied (check the credentials and the bucket policy)"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            err = seen.response.get("Error", {})
            message = err.get("Message") or ""
            return f"{code}: {message}".rstrip(": ")
        if isinstance(seen, BotoCoreError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return str(exc)


def s3_storage_error(exc: BaseException, uri: str, action: str) -> StorageError:
    """ "cannot <action> <uri>: <reason>" for an S3 failure on the s3:// `uri`."""
    bucket = split_s3_uri(uri)[0]
    kind = StorageUnavailable if is_transient(exc) else StorageError
    return kind(f"cannot {action} {uri}: {s3_error_detail(exc, bucket)}")


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
        listing alone (`i2v.status` reads only the records that changed)."""
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
