"""Opening a DEST from its URI: a folder (`LocalStorage`) or an S3 prefix (`S3Storage`).

The S3 backend is imported only for an s3:// DEST: it loads boto3, which a folder DEST
(and the CLI's start-up) does without.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import unquote, urlsplit

from i2v._constants import SCHEME
from i2v.errors import ConfigError
from i2v.local_storage import LocalStorage
from i2v.storage import Storage

if TYPE_CHECKING:
    from i2v.s3_storage import S3Storage


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
            from i2v.s3 import split_s3_uri  # boto3 only for an S3 DEST
            from i2v.s3_storage import S3Storage

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
    S3Storage exists only once i2v.s3_storage has been imported."""
    s3 = sys.modules.get("i2v.s3_storage")
    return s3 is not None and isinstance(storage, s3.S3Storage)


def _local(path: Path) -> LocalStorage:
    storage = LocalStorage(path)
    if storage.root.exists() and not storage.root.is_dir():
        raise ConfigError(f"destination {storage.root} is a file, not a folder")
    return storage
