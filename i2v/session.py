"""The HTTP side of the Atlas client: the key, the connection pools, one call with retries.

Every call that costs nothing (GETs, uploads, downloads) is retried on transient
failures; a generate POST is resent only when the failure proves no job was created (see
`i2v.retry`), and an answer lost after sending becomes an `AmbiguousSubmissionError`,
never a silent second paid job.

The key is sent only as `Authorization: Bearer …` to `base_url`'s origin and is kept out
of every repr, message and log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal
from urllib.parse import urlsplit

import httpx

from i2v._constants import url_origin
from i2v.errors import AmbiguousSubmissionError, OutputError, ServerError, TransportError
from i2v.parsing import ErrorPage, effective_status, error_page, safe_url, server_message
from i2v.retry import (
    NOT_SENT_EXCEPTIONS,
    RetryPolicy,
    backoff_delay,
    classify_status,
    should_retry_get,
    should_retry_submit,
)

__all__ = ["ApiSession", "DownloadResult", "Timeouts"]

logger = logging.getLogger("i2v.client")


@dataclass(frozen=True)
class Timeouts:
    """Per-phase timeouts in seconds (as replicate-python sets them: explicit per phase).

    `read_s` covers ordinary GETs; uploads, the generate POST and output downloads get
    their own read budget because they legitimately take longer.
    """

    connect_s: float = 10.0
    read_s: float = 30.0
    write_s: float = 60.0
    pool_s: float = 60.0
    upload_s: float = 120.0
    generate_s: float = 60.0
    download_read_s: float = 60.0

    def as_httpx(self, *, read: float | None = None, write: float | None = None) -> httpx.Timeout:
        """An `httpx.Timeout` with these values, `read`/`write` overridden if given."""
        return httpx.Timeout(
            connect=self.connect_s,
            read=self.read_s if read is None else read,
            write=self.write_s if write is None else write,
            pool=self.pool_s,
        )


@dataclass(frozen=True)
class DownloadResult:
    """What a download wrote: its size and SHA-256 (hex)."""

    bytes: int
    sha256: str


class _Secret:
    """Holds the API key; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling a client (e.g. into a task result) must not write the key to disk.
        raise TypeError("the API key cannot be pickled")


def _read(response: httpx.Response) -> tuple[Any, ErrorPage | None]:
    """The JSON body, or (None, what the page is) when the body is not JSON."""
    try:
        return response.json(), None
    except ValueError:  # UnicodeDecodeError included
        return None, error_page(response.text, response.headers.get("content-type"))


class ApiSession:
    """Connection pools, key and retry policy of one `AtlasClient` (validated there)."""

    def __init__(
        self,
        key: str,
        base_url: str,
        *,
        timeouts: Timeouts,
        retry: RetryPolicy,
        user_agent: str,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None,
        on_rate_limited: Callable[[], None] | None,
        rng: random.Random | None,
    ) -> None:
        self._key = _Secret(key)
        self.base_url = base_url
        self.timeouts = timeouts
        self.retry = retry
        self.user_agent = user_agent
        self._on_rate_limited = on_rate_limited
        self._rng = rng
        self._origin = url_origin(base_url)

        # One pool per kind of request. httpcore's pool does work proportional to its
        # connections (a poll() of every idle socket, a scan of all of them) each time a
        # request starts or ends; when 40 rows finish together, one shared pool of polls,
        # submissions and downloads made that bookkeeping the largest CPU cost of the
        # wave (profiled: ~30% of the event loop). Separate pools keep each scan short.
        def pool() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=base_url,
                timeout=timeouts.as_httpx(),
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
                headers={"User-Agent": user_agent},
                transport=transport,
            )

        self._http = pool()  # uploads, submissions, the model list
        # A test transport sees every request: then one client serves all kinds.
        self._poll_http = pool() if transport is None else self._http
        self._download_http = pool() if transport is None else self._http

    @property
    def http_clients(self) -> tuple[httpx.AsyncClient, ...]:
        """The distinct httpx clients (connection pools)."""
        return tuple(dict.fromkeys((self._http, self._poll_http, self._download_http)))

    def __repr__(self) -> str:
        return f"ApiSession(base_url={self.base_url!r}, api_key={self._key!r})"

    def __reduce__(self) -> Any:
        raise TypeError("an API session cannot be pickled (it holds connections and a key)")

    async def aclose(self) -> None:
        """Close the connection pools."""
        for http in self.http_clients:
            await http.aclose()

    def backoff_s(self, attempt: int) -> float:
        """The policy's delay before retry number `attempt` (0 = the first)."""
        return backoff_delay(attempt, self.retry, self._rng)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key.reveal()}"}

    async def _backoff(self, attempt: int, what: str, reason: str) -> None:
        delay = self.backoff_s(attempt)
        logger.info("%s: %s; retry %d in %.2fs", what, reason, attempt + 1, delay)
        await asyncio.sleep(delay)

    def _rate_limited(self) -> None:
        if self._on_rate_limited is not None:
            self._on_rate_limited()

    async def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        kind: Literal["get", "submit"] = "get",
        auth: bool = True,
        timeouts: httpx.Timeout | None = None,
        json: Any = None,
        files: Any = None,
        poll: bool = False,
    ) -> tuple[Any, str | None]:
        """One API call with retries; returns the JSON body and the X-Request-ID.

        Raises the `classify_status` error for an error answer, `TransportError` when no
        answer came, `ServerError` for a 2xx page that is not JSON (a proxy's or
        Cloudflare's interstitial: retried like a 5xx), and, for `kind="submit"`,
        `AmbiguousSubmissionError` when the request was sent but its answer was lost, was
        a 5xx or was not JSON. `poll` sends it on the pool kept for polls.
        """
        attempts = max(self.retry.max_attempts, 1)
        retry_rule = should_retry_submit if kind == "submit" else should_retry_get
        http = self._poll_http if poll else self._http
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await http.request(
                    method,
                    path,
                    headers=self._auth() if auth else None,
                    timeout=timeouts if timeouts is not None else httpx.USE_CLIENT_DEFAULT,
                    json=json,
                    files=files,
                )
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if retry_rule(None, exc) and not last:
                    await self._backoff(attempt, what, reason)
                    continue
                if kind == "submit" and not isinstance(exc, NOT_SENT_EXCEPTIONS):
                    raise AmbiguousSubmissionError(
                        f"{what}: the request was sent but its answer was lost ({reason}); "
                        "a paid job may exist: check before resubmitting"
                    ) from exc
                raise TransportError(f"{what}: no answer from {self.base_url} ({reason})") from exc

            request_id = response.headers.get("x-request-id")
            body, page = _read(response)
            status = effective_status(response.status_code, body)
            logger.debug("%s %s -> %s (request id %s)", method, path, status, request_id)
            if status < 400:
                if page is None:
                    return body, request_id
                shown = f" {page.title!r}" if page.title else ""
                problem = (
                    f"HTTP {status} with {'an HTML page' if page.html else 'a body'}{shown} "
                    "that is not the API's JSON (a proxy's or Cloudflare's interstitial?)"
                )
                if kind == "submit":
                    raise AmbiguousSubmissionError(
                        f"{what}: the server answered {problem}; a paid job may exist: "
                        "check before resubmitting",
                        status_code=status,
                        request_id=request_id,
                    )
                if not last:
                    await self._backoff(attempt, what, problem)
                    continue
                raise ServerError(
                    f"{what}: {self.base_url} answered {problem}",
                    status_code=status,
                    request_id=request_id,
                )
            if status == 429:
                self._rate_limited()
            message = server_message(body, response.text, response.reason_phrase)
            if retry_rule(status, None) and not last:
                await self._backoff(attempt, what, f"HTTP {status} {message}")
                continue
            if kind == "submit" and status >= 500:
                # A 5xx after the request reached the server proves nothing: the job may
                # have been created before the failure (a 504 is the classic lost answer).
                raise AmbiguousSubmissionError(
                    f"{what}: the server answered HTTP {status} ({message}) after receiving "
                    "the request; a paid job may exist: check before resubmitting",
                    status_code=status,
                    request_id=request_id,
                )
            raise classify_status(
                status, message, request_id, body, page=page, user_agent=self.user_agent
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def download(self, url: str, sink: BinaryIO, *, chunk_size: int) -> DownloadResult:
        """Stream `url` into `sink`, restarting from scratch on transient failures.

        See `AtlasClient.download_output`.
        """
        shown = safe_url(url)
        origin = url_origin(url)
        same_origin = (origin is not None and origin == self._origin) or not urlsplit(url).netloc
        headers = self._auth() if same_origin else None
        timeout = self.timeouts.as_httpx(read=self.timeouts.download_read_s)
        attempts = max(self.retry.max_attempts, 1)
        wrote = False
        for attempt in range(attempts):
            last = attempt == attempts - 1
            if sink.seekable():
                sink.seek(0)
                sink.truncate()
            elif wrote:
                raise OutputError(f"download of {shown} failed midway; the sink cannot rewind")
            digest = hashlib.sha256()
            size = 0
            retry_reason: str | None = None
            try:
                async with self._download_http.stream(
                    "GET", url, headers=headers, timeout=timeout, follow_redirects=True
                ) as response:
                    status = response.status_code
                    if status == 429:
                        self._rate_limited()
                    if status >= 400:
                        if not (should_retry_get(status, None) and not last):
                            raise OutputError(
                                f"download of {shown} failed: HTTP {status}",
                                status_code=status,
                                request_id=response.headers.get("x-request-id"),
                            )
                        retry_reason = f"HTTP {status}"
                    else:
                        async for chunk in response.aiter_bytes(chunk_size):
                            wrote = True
                            sink.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
            except httpx.HTTPError as exc:
                retry_reason = f"{type(exc).__name__}: {exc}"
                if not should_retry_get(None, exc) or last:
                    raise OutputError(f"download of {shown} failed ({retry_reason})") from exc
            if retry_reason is not None:
                # Back off only after the response is closed: no connection held idle.
                await self._backoff(attempt, f"download {shown}", retry_reason)
                continue
            if size == 0:
                raise OutputError(f"download of {shown} returned an empty body")
            sink.flush()
            return DownloadResult(bytes=size, sha256=digest.hexdigest())
        raise AssertionError("unreachable")  # pragma: no cover
