"""S3 plumbing shared by the S3 DEST (`i2v.s3_storage`), input pictures and manifests:
URIs, clients, and what a failure means (its code, whether it may pass, its message).

Clients use boto3's standard credential chain; `AWS_ENDPOINT_URL` (read by botocore
itself since 1.28) points them at MinIO, R2 or LocalStack. Every failure is turned into
a message that names the bucket's problem, not botocore's class names.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from i2v.errors import ConfigError, StorageError, StorageUnavailable

S3_ERRORS = (ClientError, BotoCoreError, S3UploadFailedError)
# What a GET/HEAD/DELETE of an absent key answers (HEAD has no body, hence the bare 404).
S3_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
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
