"""`i2v doctor`: first contact with the service and the DEST, using only calls that
cost nothing, one check per line.

Every check returns a `Check` (ok, line, what to do). The checks, in the order shown:

- the API host answers `GET /api/v1/models` (no key) with JSON, not a Cloudflare page;
- the key is valid: a GET of a prediction id that cannot exist answers 404 (401: bad key);
- the model is in the listing;
- its published input schema (the entry's `schema` URL, `components.schemas.Input`)
  takes exactly the fields we send, with the durations we check;
- the catalog's price against the configured one;
- S3 credentials and region (for an s3:// DEST), then DEST writable: a marker written
  (create-if-absent, and a second create must be refused: the claims rely on it), read
  back and deleted.

Here: the report's lines (`Check`) and the DEST checks; the API checks are
`i2v.doctor_api`. The Prefect checks (API reachable, global concurrency limit) live
with the CLI (`cli/doctor.py`): nothing in `i2v` imports Prefect. No check prints the
key.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from i2v.errors import StorageError
from i2v.local_storage import LocalStorage
from i2v.storage import Storage

OK_MARK, BAD_MARK = "✓", "✗"
DOCTOR_PREFIX = "_doctor/"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    ok: bool
    line: str
    todo: str = ""  # what to do, when not ok

    def render(self) -> str:
        head = f"{OK_MARK if self.ok else BAD_MARK} {self.line}"
        return head if self.ok or not self.todo else f"{head}\n    → {self.todo}"


def exit_code(checks: Sequence[Check]) -> int:
    """0 when every check passed, 2 otherwise."""
    return 0 if all(c.ok for c in checks) else 2


# ----------------------------------------------------------------------------- DEST


def check_s3(bucket: str, s3_client: Any, session: Any) -> Check:
    """Credentials are found, and the bucket answers from this region."""
    creds = session.get_credentials()
    if creds is None:
        return Check(
            False,
            "S3: no AWS credentials found",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an "
            "instance / task role (or name aws_credentials_block in the config)",
        )
    region = s3_client.meta.region_name or session.region_name
    method = getattr(creds, "method", None) or "the AWS chain"
    try:
        answer = s3_client.head_bucket(Bucket=bucket)
    except Exception as exc:
        from i2v.s3 import s3_error_code

        code = s3_error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            todo = f"create bucket {bucket!r} or fix the DEST"
            line = f"S3: bucket {bucket!r} does not exist"
        elif code in ("403", "AccessDenied", "Forbidden"):
            todo = "grant these credentials s3:ListBucket, GetObject, PutObject, DeleteObject"
            line = f"S3: credentials from {method} may not use bucket {bucket!r}"
        elif code in ("301", "PermanentRedirect"):
            todo = "set AWS_REGION (or AWS_DEFAULT_REGION) to the bucket's region"
            line = f"S3: bucket {bucket!r} is in another region than {region}"
        else:
            todo = "check the credentials, AWS_REGION and AWS_ENDPOINT_URL"
            line = f"S3: bucket {bucket!r} cannot be reached ({type(exc).__name__}: {exc})"
        return Check(False, line, todo)
    headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    bucket_region = answer.get("BucketRegion") or headers.get("x-amz-bucket-region")
    if bucket_region and region and bucket_region != region:
        return Check(
            False,
            f"S3: bucket {bucket!r} is in {bucket_region}, the client signs for {region}",
            f"set AWS_REGION={bucket_region}: presigned picture URLs signed for another "
            "region are refused",
        )
    return Check(
        True,
        f"S3: credentials from {method}, region {region or 'not set'}, bucket {bucket!r} answers",
    )


def check_dest(storage: Storage) -> Check:
    """DEST is writable: a marker created, a second create refused, read back, deleted."""
    key = f"{DOCTOR_PREFIX}marker-{uuid.uuid4().hex}"
    data = f"i2v doctor {uuid.uuid4()}".encode()
    where = storage.uri
    try:
        if storage.write_if_absent(key, data) is None:
            return Check(
                False,
                f"DEST {where}: a new marker could not be created",
                "check what else writes under DEST/_doctor/",
            )
        try:
            second = storage.write_if_absent(key, b"again")
            back = storage.read_bytes(key)
        finally:
            storage.delete(key)
        gone = not storage.exists(key)
    except StorageError as exc:
        return Check(
            False,
            f"DEST {where} is not writable ({exc})",
            "give these credentials write access (S3: s3:PutObject, GetObject, DeleteObject, "
            "ListBucket), or fix the folder's permissions",
        )
    finally:
        if isinstance(storage, LocalStorage):
            shutil.rmtree(storage.root / DOCTOR_PREFIX.rstrip("/"), ignore_errors=True)
    if second is not None:
        return Check(
            False,
            f"DEST {where} ignores conditional writes (a second create-if-absent succeeded)",
            "two runs sharing this DEST could pay twice for one input: never run two at "
            "once on it, or use a store that honours If-None-Match / If-Match",
        )
    if back != data:
        return Check(
            False,
            f"DEST {where}: a marker did not read back as written",
            "the store does not keep what is written: do not use it as a DEST",
        )
    if not gone:
        return Check(
            False,
            f"DEST {where}: a deleted marker is still there",
            "check the store's delete permission (s3:DeleteObject)",
        )
    return Check(True, f"DEST {where} is writable (write, conditional write, read, delete)")
