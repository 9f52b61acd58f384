"""The simulated account's pictures: uploads, fetched URLs and data URIs, and their checks."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx

from i2v.simulator.inputs import MAX_IMAGE_BYTES, ApiError, picture_problem

_INLINE_LIMIT = 256 * 1024  # bigger inputs are handled off the event loop
T = TypeVar("T")


def is_loopback(host: str | None) -> bool:
    """Whether `host` is `localhost` or a loopback IP address: the only pictures the
    simulated provider fetches (the worker's own rules are `i2v.netguard`'s)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def off_loop_if_large(size: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), in a worker thread when the input is big enough to stall the event loop
    (a 27 MB base64 body), inline otherwise (a thread hop costs more than a small parse)."""
    if size > _INLINE_LIMIT:
        return await anyio.to_thread.run_sync(fn, *args)
    return fn(*args)


@dataclass(frozen=True)
class _Upload:
    sha: str
    file_name: str
    content_type: str
    size: int


class MediaStore:
    """Picture bytes by sha256, the uploads naming them, and each picture's verdict."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}  # sha256 -> picture bytes (uploads, fetches)
        self._uploads: dict[str, _Upload] = {}  # upload token -> upload
        self._checks: dict[str, str | None] = {}  # sha256 -> problem (None: fine)
        self._http: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        """Close the client that fetches picture URLs, if one was opened."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def add_upload(self, data: bytes, file_name: str, content_type: str) -> str:
        """Store an uploaded file; returns its token (the last part of its URL)."""
        sha = (await off_loop_if_large(len(data), hashlib.sha256, data)).hexdigest()
        self._blobs.setdefault(sha, data)
        token = uuid.uuid4().hex
        self._uploads[token] = _Upload(sha, file_name, content_type, len(data))
        return token

    def upload(self, token: str) -> tuple[bytes, str] | None:
        """(bytes, content type) of an upload, or None for an unknown token."""
        found = self._uploads.get(token)
        return None if found is None else (self._blobs[found.sha], found.content_type)

    def blob(self, sha: str) -> bytes:
        """The bytes of an accepted picture."""
        return self._blobs[sha]

    async def resolve_image(self, image: str) -> bytes:
        """The picture bytes behind an `image` input (data URI, own upload, loopback URL)."""
        if image.startswith("data:"):
            header, sep, payload = image.partition(",")
            if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
                raise ApiError(400, "image data URI must look like data:image/...;base64,...")
            if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
                raise ApiError(400, "image is larger than 20 MB")
            try:
                return await off_loop_if_large(len(payload), base64.b64decode, payload)
            except (binascii.Error, ValueError):
                raise ApiError(400, "image data URI is not valid base64") from None
        parts = urlsplit(image)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(400, "image must be an http(s) URL or a data:image/...;base64 URI")
        if not is_loopback(parts.hostname):
            raise ApiError(
                400, f"simulator only fetches loopback URLs; refused host {parts.hostname!r}"
            )
        own = re.fullmatch(r"/_sim/media/([0-9a-f]+)", parts.path)
        if own and own.group(1) in self._uploads:
            return self._blobs[self._uploads[own.group(1)].sha]
        return await self._fetch(image)

    async def _fetch(self, url: str) -> bytes:
        if self._http is None:
            # trust_env=False: a proxy from the environment must never see these fetches.
            self._http = httpx.AsyncClient(timeout=30.0, trust_env=False)
        try:
            async with self._http.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise ApiError(400, f"could not fetch image: HTTP {resp.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise ApiError(400, "image is larger than 20 MB")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise ApiError(400, f"could not fetch image: {type(exc).__name__}") from None

    async def accept_picture(self, data: bytes) -> str:
        """The sha256 of an accepted picture, stored for rendering; 400 when refused."""
        sha = (await off_loop_if_large(len(data), hashlib.sha256, data)).hexdigest()
        if sha not in self._checks:
            self._checks[sha] = await anyio.to_thread.run_sync(picture_problem, data)
        problem = self._checks[sha]
        if problem:
            raise ApiError(400, problem)
        self._blobs.setdefault(sha, data)
        return sha
