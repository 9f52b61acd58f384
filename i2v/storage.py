"""Where results land and pictures come from: a local folder or an S3 prefix.

`Storage` is a root location addressed by '/'-separated relative keys ("videos/a.mp4").
`LocalStorage` writes atomically (temp file in the same folder, fsync, rename) so a crash
never leaves a half-written file under its final name; `S3Storage` uses boto3 with the
standard credential chain, and `AWS_ENDPOINT_URL` (read by botocore itself since 1.28)
points it at MinIO, R2 or LocalStack.

Every S3 failure becomes a `StorageError` naming the URI; a missing object is `None` or
`False` where the method says so. Calls block: the pipeline runs them in worker threads
(boto3 clients are thread-safe).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import boto3
import httpx
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from i2v.errors import ConfigError, InputError, StorageError

MiB = 1024 * 1024

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

HTTP_TIMEOUT_S = 60.0
STAGING_DIR = ".staging"
TMP_SUFFIX = ".i2v-tmp"  # in-progress local writes; never listed

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


# ------------------------------------------------------------------------------ helpers


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


def _s3_error(exc: BaseException, uri: str, action: str) -> StorageError:
    bucket = split_s3_uri(uri)[0]
    return StorageError(f"cannot {action} {uri}: {s3_error_detail(exc, bucket)}")


S3_ERRORS = (ClientError, BotoCoreError, S3UploadFailedError)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _check_key(key: str, *, folder: bool = False) -> str:
    """Refuse keys that could escape the root or mean different things on each backend."""
    body = key[:-1] if folder and key.endswith("/") else key
    if folder and body == "":
        return key
    parts = body.split("/")
    if not body or "\\" in body or "\x00" in body or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid storage key {key!r}: use a relative '/'-separated path")
    return key


def _check_prefix(prefix: str) -> str:
    if prefix.startswith("/") or "\\" in prefix or ".." in prefix.split("/"):
        raise StorageError(f"invalid storage prefix {prefix!r}")
    return prefix


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(dst: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Write `dst` through a temp file in its folder: readers see old or new, never half.

    `fill(file)` writes the content. The temp file is created with mode 0o666 so the
    umask applies as for any normal file (mkstemp would force 0o600).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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

    def public_url(self, key: str) -> str:
        """What the results table shows: the local absolute path or the s3:// URI."""
        return self.key_uri(key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStorage(Storage):
    """A folder on this machine, created on first write."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def key_uri(self, key: str) -> str:
        return str(self.root / _check_key(key, folder=True))

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
            _atomic_write(path, lambda f: f.write(data))
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        dst = self._path(key)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            # The rename is atomic but not durable by itself: flush the data first so a
            # power cut cannot leave an empty file under the final name.
            _fsync_file(path)
            try:
                os.replace(path, dst)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # Staged somewhere else than staging_dir(): copy instead of rename.
                with open(path, "rb") as src:
                    _atomic_write(dst, lambda f: shutil.copyfileobj(src, f, 1 * MiB))
        except OSError as exc:
            raise StorageError(f"cannot move {path} to {dst}: {exc.strerror or exc}") from exc

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
                _atomic_write(dst, lambda f: shutil.copyfileobj(f_src, f, 1 * MiB))
        except FileNotFoundError as exc:
            raise StorageError(f"cannot copy {src}: it does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot copy {src} to {dst}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
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
                    if not name.endswith(TMP_SUFFIX) and (rel + name).startswith(prefix)
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
        key = _check_key(key, folder=folder)
        return f"{self.prefix}/{key}" if self.prefix else key

    def key_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key, folder=True)}"

    def _check_bucket(self) -> None:
        """Tell "no such object" from "no such bucket": HEAD answers a bare 404 to both."""
        if self._bucket_ok:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except S3_ERRORS as exc:
            if s3_error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(
                    f"cannot use {self.uri}: bucket {self.bucket!r} does not exist"
                ) from exc
            raise _s3_error(exc, self.uri, "use") from exc
        self._bucket_ok = True

    def read_bytes(self, key: str) -> bytes | None:
        full = self._key(key)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            return bytes(resp["Body"].read())
        except S3_ERRORS as exc:
            if s3_error_code(exc) in _MISSING_CODES:
                return None
            raise _s3_error(exc, self.key_uri(key), "read") from exc

    def write_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)
        except S3_ERRORS as exc:
            raise _s3_error(exc, self.key_uri(key), "write") from exc

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else None
        try:
            with self._transfer_place(path.stat().st_size):
                self.client.upload_file(
                    str(path), self.bucket, self._key(key), ExtraArgs=extra, Config=UPLOAD_CONFIG
                )
        except S3_ERRORS as exc:
            raise _s3_error(exc, self.key_uri(key), "upload to") from exc
        except OSError as exc:
            raise StorageError(f"cannot upload {path}: {exc.strerror or exc}") from exc

    def _transfer_place(self, size: int) -> contextlib.AbstractContextManager[Any]:
        """A place among the big transfers for an object of `size` bytes (none if small)."""
        if size >= UPLOAD_CONFIG.multipart_threshold:
            return self._big_transfers
        return contextlib.nullcontext()

    def get_file(self, key: str, path: Path) -> None:
        """Download `key` to `path`, streamed to disk (bounded memory); StorageError if
        it is missing or unreadable."""
        head = self._head(key)
        if head is None:
            raise StorageError(f"{self.key_uri(key)} does not exist")
        try:
            with self._transfer_place(int(head.get("ContentLength", 0))):
                self.client.download_file(
                    self.bucket, self._key(key), str(path), Config=DOWNLOAD_CONFIG
                )
        except S3_ERRORS as exc:
            raise _s3_error(exc, self.key_uri(key), "download") from exc

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except S3_ERRORS as exc:
            if s3_error_code(exc) in _MISSING_CODES:
                self._check_bucket()
                return None
            raise _s3_error(exc, self.key_uri(key), "check") from exc

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def copy(self, src_key: str, dst_key: str) -> None:
        source = {"Bucket": self.bucket, "Key": self._key(src_key)}
        try:
            self.client.copy(source, self.bucket, self._key(dst_key), Config=COPY_CONFIG)
        except S3_ERRORS as exc:
            if s3_error_code(exc) in _MISSING_CODES:
                self._check_bucket()
                raise StorageError(
                    f"cannot copy {self.key_uri(src_key)}: it does not exist"
                ) from exc
            raise _s3_error(exc, self.key_uri(src_key), "copy") from exc

    def list(self, prefix: str = "") -> list[str]:
        _check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=root + prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            for page in pages:
                keys.extend(
                    obj["Key"][len(root) :]
                    for obj in page.get("Contents", [])
                    if not obj["Key"].endswith("/")  # folder markers made by consoles
                )
        except S3_ERRORS as exc:
            raise _s3_error(exc, f"{self.uri}/{prefix}".rstrip("/"), "list") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except S3_ERRORS as exc:
            if s3_error_code(exc) in _MISSING_CODES:
                return
            raise _s3_error(exc, self.key_uri(key), "delete") from exc

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
            raise _s3_error(exc, self.key_uri(key), "presign") from exc


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
    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme == "s3":
            bucket, prefix = split_s3_uri(text)
            return S3Storage(bucket, prefix, s3_client=s3_client)
        if scheme == "file":
            return _local(Path(unquote(urlsplit(text).path)))
        raise ConfigError(
            f"unsupported destination {text!r}: use a local folder or s3://bucket/prefix"
        )
    return _local(Path(text))


def _local(path: Path) -> LocalStorage:
    storage = LocalStorage(path)
    if storage.root.exists() and not storage.root.is_dir():
        raise ConfigError(f"destination {storage.root} is a file, not a folder")
    return storage


# ------------------------------------------------------------------------------ locations


def _too_big(uri: str, max_bytes: int, size: int | None) -> InputError:
    limit = f"{max_bytes} bytes" + (f" ({max_bytes / MiB:g} MB)" if max_bytes >= MiB else "")
    if size is not None:
        return InputError(f"image {uri} is {size} bytes; the limit is {limit}")
    return InputError(f"image {uri} is larger than the limit of {limit}")


def read_location(uri: str, *, s3_client: Any | None = None, max_bytes: int | None = None) -> bytes:
    """Read one whole object from a local path, file://, s3:// or http(s) URL.

    Raises InputError when it is missing, larger than `max_bytes` (reading stops at
    max_bytes + 1, so a huge file is never fetched whole) or the URL is refused (HTTP
    4xx). Raises StorageError for trouble that is not the input's fault: S3 access or
    connection errors, HTTP 5xx, timeouts.
    """
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "s3":
        return _read_s3(uri, s3_client, max_bytes)
    if scheme in ("http", "https"):
        return _read_http(uri, max_bytes)
    if scheme == "file":
        return _read_file(Path(unquote(urlsplit(uri).path)), max_bytes)
    if scheme:
        raise InputError(f"unsupported image location {uri!r}: use a path, https:// or s3://")
    return _read_file(Path(uri), max_bytes)


def _read_file(path: Path, max_bytes: int | None) -> bytes:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is None:
                return f.read()
            if size > max_bytes:
                raise _too_big(str(path), max_bytes, size)
            data = f.read(max_bytes + 1)  # the file may have grown since fstat
    except FileNotFoundError:
        raise InputError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"image path is a folder, not a file: {path}") from None
    except PermissionError:
        raise InputError(f"cannot read image file {path}: permission denied") from None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise _too_big(str(path), max_bytes, None)
    return data


def _read_s3(uri: str, s3_client: Any | None, max_bytes: int | None) -> bytes:
    try:
        bucket, key = split_s3_uri(uri)
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    if not key or key.endswith("/"):
        raise InputError(f"s3 URI {uri!r} names no object")
    client = s3_client if s3_client is not None else default_s3_client()
    extra = {} if max_bytes is None else {"Range": f"bytes=0-{max_bytes}"}
    try:
        resp = client.get_object(Bucket=bucket, Key=key, **extra)
        # A ranged answer says the full size ("bytes 0-N/TOTAL"): refuse before reading.
        total = str(resp.get("ContentRange", "")).rpartition("/")[2]
        if max_bytes is not None and total.isdigit() and int(total) > max_bytes:
            resp["Body"].close()
            raise _too_big(uri, max_bytes, int(total))
        body = resp["Body"]
        data = bytes(body.read() if max_bytes is None else body.read(max_bytes + 1))
        body.close()
    except S3_ERRORS as exc:
        code = s3_error_code(exc)
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise InputError(f"image not found: {uri}") from None
        if code == "InvalidRange":  # a ranged GET of an empty object
            return b""
        raise _s3_error(exc, uri, "read") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_big(uri, max_bytes, None)
    return data


def _read_http(uri: str, max_bytes: int | None) -> bytes:
    try:
        with httpx.stream("GET", uri, follow_redirects=True, timeout=HTTP_TIMEOUT_S) as resp:
            if resp.status_code in (404, 410):
                raise InputError(f"image not found: {uri} (HTTP {resp.status_code})")
            if 400 <= resp.status_code < 500:
                raise InputError(f"cannot download image {uri}: HTTP {resp.status_code}")
            if resp.status_code >= 500:
                raise StorageError(f"cannot download image {uri}: HTTP {resp.status_code}")
            length = resp.headers.get("content-length", "")
            if max_bytes is not None and length.isdigit() and int(length) > max_bytes:
                raise _too_big(uri, max_bytes, int(length))
            chunks: list[bytes] = []
            got = 0
            for chunk in resp.iter_bytes():
                chunks.append(chunk)
                got += len(chunk)
                if max_bytes is not None and got > max_bytes:
                    raise _too_big(uri, max_bytes, None)
            return b"".join(chunks)
    except httpx.InvalidURL as exc:
        raise InputError(f"invalid image URL {uri!r}: {exc}") from None
    except httpx.HTTPError as exc:
        raise StorageError(f"cannot download image {uri}: {type(exc).__name__}: {exc}") from exc


def presign_location(uri: str, *, s3_client: Any | None = None, expires_s: int = 3600) -> str:
    """A presigned GET URL for an s3:// object (no request is made; existence unchecked)."""
    if uri[:5].lower() != "s3://":
        raise InputError(f"only s3:// locations can be presigned, not {uri!r}")
    try:
        bucket, key = split_s3_uri(uri)
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    if not key:
        raise InputError(f"s3 URI {uri!r} names no object")
    client = s3_client if s3_client is not None else default_s3_client()
    try:
        return str(
            client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
            )
        )
    except S3_ERRORS as exc:
        raise _s3_error(exc, uri, "presign") from exc
