"""Fetching input pictures: a local path, file://, s3:// or http(s) URL.

Problems that are the input's fault (missing, too big, refused) raise `InputError`;
trouble that is not (S3 access, connections, HTTP 5xx, timeouts) raises `StorageError`
(`FetchError` for a picture URL: only that row's). An http(s) picture reaches only the
addresses `i2v.netguard` allows. Calls block: the pipeline runs them in worker threads.
"""

from __future__ import annotations

import functools
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from i2v._constants import SCHEME, MiB, show
from i2v.errors import ConfigError, FetchError, InputError, StorageError
from i2v.netguard import Hop, check_host
from i2v.private_hosts import Allowance, worker_allowance

HTTP_TIMEOUT_S = 60.0
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


def _too_big(uri: str, max_bytes: int, size: int | None) -> InputError:
    limit = f"{max_bytes} bytes" + (f" ({max_bytes / MiB:g} MB)" if max_bytes >= MiB else "")
    if size is not None:
        return InputError(f"image {uri} is {size} bytes; the limit is {limit}")
    return InputError(f"image {uri} is larger than the limit of {limit}")


def read_location(uri: str, *, s3_client: Any | None = None, max_bytes: int | None = None) -> bytes:
    """Read one whole object from a local path, file://, s3:// or http(s) URL.

    Raises InputError when it is missing, larger than `max_bytes` (reading stops at
    max_bytes + 1, so a huge file is never fetched whole) or the URL is refused (an
    address `i2v.netguard` refuses, HTTP 4xx). Raises StorageError for trouble that is
    not the input's fault: S3 access, and (FetchError) connection errors, HTTP 5xx and
    timeouts of a picture URL.
    """
    match = SCHEME.match(uri)
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
    # boto3 only for S3 pictures.
    from i2v.s3 import S3_ERRORS, default_s3_client, s3_error_code, s3_storage_error, split_s3_uri

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
        raise s3_storage_error(exc, uri, "read") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_big(uri, max_bytes, None)
    return data


def _read_http(uri: str, max_bytes: int | None) -> bytes:
    """GET a picture URL, each hop's host resolved once and judged by `i2v.netguard`
    before any connection, and the connection made to the judged address (the name
    still in the Host header, the TLS SNI and the certificate check). Redirects are
    followed here, at most MAX_REDIRECTS, each hop judged the same way."""
    allowance = worker_allowance()
    # No proxy from the environment: it would connect to an address not judged here.
    with httpx.Client(timeout=HTTP_TIMEOUT_S, verify=_tls_context(), trust_env=False) as client:
        try:
            url, shown = httpx.URL(uri), uri
            for _ in range(MAX_REDIRECTS + 1):
                resp = _open(client, url, shown, uri, allowance)
                try:
                    location = resp.headers.get("location")
                    if resp.status_code in _REDIRECTS and location:
                        url = url.join(location)
                        shown = str(url)
                        continue
                    return _body(resp, uri, max_bytes)
                finally:
                    resp.close()
        except httpx.InvalidURL as exc:
            raise InputError(f"invalid image URL {show(uri)}: {exc}") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"cannot download image {uri}: {type(exc).__name__}: {exc}") from exc
    raise InputError(f"image URL {show(uri)} redirects more than {MAX_REDIRECTS} times")


def _open(
    client: httpx.Client, url: httpx.URL, shown: str, origin: str, allowance: Allowance
) -> httpx.Response:
    """The streamed answer for `url`, from the first judged address that connects."""
    scheme = url.scheme
    if scheme not in ("http", "https"):
        raise InputError(f"image URL {show(origin)} redirects to {show(shown)}: not http(s)")
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if scheme == "https" else 80)
    addresses = check_host(Hop(shown, scheme, host, port, origin), allowance)
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    failure: httpx.TransportError | None = None
    for address in addresses:
        request = client.build_request(
            "GET",
            url.copy_with(host=str(address)),
            headers={"Host": url.netloc.decode("ascii")},
            extensions=extensions,
        )
        try:
            return client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = exc  # the next address may answer
    assert failure is not None
    raise failure


def _body(resp: httpx.Response, uri: str, max_bytes: int | None) -> bytes:
    if resp.status_code in (404, 410):
        raise InputError(f"image not found: {uri} (HTTP {resp.status_code})")
    if resp.status_code >= 500:
        raise FetchError(f"cannot download image {uri}: HTTP {resp.status_code}")
    if resp.status_code >= 300:
        raise InputError(f"cannot download image {uri}: HTTP {resp.status_code}")
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


def _tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), made
    once per setting: the client itself no longer reads the environment."""
    return _tls_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _tls_for(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    # The arguments are the cache key: create_ssl_context reads the same two variables.
    return httpx.create_ssl_context()


def presign_location(uri: str, *, s3_client: Any | None = None, expires_s: int = 3600) -> str:
    """A presigned GET URL for an s3:// object (no request is made; existence unchecked)."""
    if uri[:5].lower() != "s3://":
        raise InputError(f"only s3:// locations can be presigned, not {uri!r}")
    from i2v.s3 import S3_ERRORS, default_s3_client, s3_storage_error, split_s3_uri

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
        raise s3_storage_error(exc, uri, "presign") from exc
