"""S3 plumbing shared by DEST storage, input pictures and manifests.

Clients use boto3's standard credential chain; `AWS_ENDPOINT_URL` (read by botocore
itself since 1.28) points them at MinIO, R2 or LocalStack. Every failure is turned into
a message that names the bucket's problem, not botocore's class names.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from i2v.errors import ConfigError, StorageError

MiB = 1024 * 1024

S3_ERRORS = (ClientError, BotoCoreError, S3UploadFailedError)
# What a GET/HEAD/DELETE of an absent key answers (HEAD has no body, hence the bare 404).
S3_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# A conditional PUT that lost: the object exists (If-None-Match) or changed (If-Match);
# 409 is AWS's answer while another conditional write to the key is in flight.
S3_PRECONDITION_CODES = frozenset(
    {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
)

# Multipart uploads read one part per worker from the file, so memory stays near
# chunksize * max_concurrency (32 MiB) however big the video is.
# Memory per upload is about (parts in flight + parts read ahead) x part size: s3transfer
# reads up to `max_in_memory_upload_chunks` (default 10, i.e. 80 MiB) ahead of the
# senders. Measured: 3 videos of 300 MiB landing together grew the run by 65 MiB with
# 4 parts in flight each; 2 in flight and 2 read ahead bound one upload to ~32 MiB.
# Throughput comes from landing several videos at once, not from parts of one; but a
# run lands up to 16 videos at once, so multipart transfers (uploads, and the contact
# sheet's downloads) also take one of BIG_TRANSFERS_AT_ONCE places per storage: the
# run's peak stays bounded however many big videos finish together. Objects under the
# threshold (one request) skip the queue.
BIG_TRANSFERS_AT_ONCE = 2
UPLOAD_CONFIG = TransferConfig(
    multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=2
)
UPLOAD_CONFIG.max_in_memory_upload_chunks = 2  # s3transfer's knob; boto3's init lacks it
# Downloads (contact sheets of S3 videos): the default keeps 10 parts in flight and a
# 25 MiB write queue; two parts and a short queue keep a 300 MiB video off the heap.
DOWNLOAD_CONFIG = TransferConfig(
    multipart_threshold=8 * MiB,
    multipart_chunksize=8 * MiB,
    max_concurrency=2,
    max_io_queue=16,
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
        retries={"mode": "standard", "max_attempts": 5},
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
    return StorageError(f"cannot {action} {uri}: {s3_error_detail(exc, bucket)}")
