"""Async client for Atlas Cloud's model API (upload, generate, poll, download).

One `AtlasClient` per run: it holds an `httpx.AsyncClient` connection pool, the retry
policy and the API key. Every call that costs nothing (GETs, uploads, downloads) is
retried on transient failures; a generate POST is resent only when the failure proves no
job was created (see `i2v.retry`), and an answer lost after sending becomes an
`AmbiguousSubmissionError`, never a silent second paid job.

The key is sent only as `Authorization: Bearer …` to `base_url`'s origin and is kept out
of every repr, message and log line.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, BinaryIO, Literal, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from i2v import __version__
from i2v.errors import (
    AmbiguousSubmissionError,
    AtlasAPIError,
    AtlasError,
    BadRequestError,
    ConfigError,
    ModelNotFoundError,
    OutputError,
    PredictionFailedError,
    PredictionTimeoutError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from i2v.polling import PollSchedule
from i2v.retry import (
    RetryPolicy,
    backoff_delay,
    classify_status,
    should_retry_get,
    should_retry_submit,
)
from i2v.types import Prediction, PredictionStatus, UploadedMedia

__all__ = [
    "DEFAULT_BASE_URL",
    "AtlasClient",
    "DownloadResult",
    "SyncAtlasClient",
    "Timeouts",
    "parse_prediction",
    "parse_upload",
]

DEFAULT_BASE_URL = "https://api.atlascloud.ai"
API_KEY_ENV = "ATLASCLOUD_API_KEY"
BASE_URL_ENV = "ATLASCLOUD_BASE_URL"
# Right after creation a prediction GET may answer 400/404 for a few seconds.
NOT_VISIBLE_GRACE_S = 30.0
# A poll may overrun the wait's deadline by this much before it is abandoned.
_LAST_POLL_ALLOWANCE_S = 2.0
# A long first wait is re-planned this often (the shared estimator may have learned).
_REPLAN_EVERY_S = 1.0

logger = logging.getLogger("i2v.client")

_T = TypeVar("_T")

# Exceptions raised before the request left the machine: a generate POST that failed
# this way created no job (even after the retries ran out).
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
    httpx.InvalidURL,
)

_STATUS_MAP: dict[str, PredictionStatus] = {
    **dict.fromkeys(
        ("processing", "starting", "created", "queued", "in_progress", "pending", "running"),
        PredictionStatus.RUNNING,
    ),
    **dict.fromkeys(("completed", "succeeded", "success"), PredictionStatus.SUCCEEDED),
    **dict.fromkeys(("failed", "canceled", "cancelled", "error"), PredictionStatus.FAILED),
    **dict.fromkeys(("timed_out", "timeout", "timedout"), PredictionStatus.TIMED_OUT),
}


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


# --------------------------------------------------------------------------- parsing


def _normalize_status(raw: object) -> str:
    return str(raw).strip().lower().replace("-", "_").replace(" ", "_")


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _opt_float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _envelope(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    data = payload.get("data")
    return data if isinstance(data, Mapping) else payload


def _outputs(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str | Mapping) else value
    if not isinstance(items, list | tuple):
        return ()
    urls: list[str] = []
    for item in items:
        # Entries are URLs; tolerate {"url": …} objects some endpoints use.
        url = item.get("url") if isinstance(item, Mapping) else item
        if isinstance(url, str) and url.strip():
            urls.append(url.strip())
    return tuple(urls)


def parse_prediction(
    payload: Mapping[str, Any],
    *,
    request_id: str | None = None,
    fallback_id: str | None = None,
) -> Prediction:
    """A `Prediction` from a generate or prediction answer, tolerant of its variants.

    The id comes from `data.id` or a top-level `id` (or `fallback_id`, the id that was
    asked for); `outputs` may be a list or a single string; statuses are normalised
    (unknown ones count as still running); `error_code` becomes a string.
    Raises `AtlasError` if no id can be found at all.
    """
    if not isinstance(payload, Mapping):
        raise AtlasError(f"prediction answer is not a JSON object: {type(payload).__name__}")
    data = _envelope(payload)
    pred_id = _opt_str(data.get("id")) or _opt_str(payload.get("id")) or fallback_id
    if not pred_id:
        raise AtlasError("prediction answer has no id", request_id=request_id)
    raw_status = _opt_str(data.get("status") or payload.get("status"))
    status = (
        _STATUS_MAP.get(_normalize_status(raw_status), PredictionStatus.RUNNING)
        if raw_status
        else PredictionStatus.RUNNING
    )
    metrics = data.get("metrics")
    predict_time = _opt_float(metrics.get("predict_time")) if isinstance(metrics, Mapping) else None
    outputs = data.get("outputs")
    if outputs is None:
        outputs = data.get("output")
    return Prediction(
        id=pred_id,
        status=status,
        raw_status=raw_status,
        outputs=_outputs(outputs),
        error=_opt_str(data.get("error")),
        error_code=_opt_str(data.get("error_code")),
        predict_time_s=predict_time,
        created_at=_opt_str(data.get("created_at")),
        completed_at=_opt_str(data.get("completed_at")),
        request_id=request_id,
        raw=dict(payload),
    )


def parse_upload(payload: Mapping[str, Any]) -> UploadedMedia:
    """An `UploadedMedia` from an uploadMedia answer; `AtlasError` if it has no URL."""
    if not isinstance(payload, Mapping):
        raise AtlasError(f"upload answer is not a JSON object: {type(payload).__name__}")
    data = _envelope(payload)
    url = _opt_str(data.get("download_url")) or _opt_str(data.get("url"))
    if not url:
        raise AtlasError("upload answer has no download_url")
    size = data.get("size")
    return UploadedMedia(
        download_url=url,
        file_name=_opt_str(data.get("file_name")),
        content_type=_opt_str(data.get("content_type")),
        size=int(size) if isinstance(size, int | float) and not isinstance(size, bool) else None,
    )


def _model_names(payload: object) -> list[str]:
    """Model names from a /models answer: a list of names or of objects naming one."""
    data: object = payload
    if isinstance(payload, Mapping):
        data = payload.get("data", payload.get("models", []))
        if isinstance(data, Mapping):
            data = data.get("models", data.get("items", []))
    names: list[str] = []
    if isinstance(data, list):
        for entry in data:
            if isinstance(entry, str):
                names.append(entry)
            elif isinstance(entry, Mapping):
                for key in ("model", "id", "name", "model_name"):
                    if isinstance(entry.get(key), str):
                        names.append(entry[key])
                        break
    return names


def _server_message(body: object, response: httpx.Response) -> str:
    if isinstance(body, Mapping):
        for key in ("msg", "message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    try:
        text = response.text.strip()
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        text = ""
    return text[:200] or (response.reason_phrase or "")


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _effective_status(http_status: int, body: object) -> int:
    """The HTTP status, unless a 2xx answer carries an error `code` in its envelope."""
    if 200 <= http_status < 300 and isinstance(body, Mapping):
        code = body.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            return code
    return http_status


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    number = _opt_float(value)
    if number is not None:
        return number / 1000.0 if number > 1e11 else number  # epoch ms or s
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _safe_url(url: str) -> str:
    """The URL without its query: presigned URLs carry signatures in it."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else parts.path


# ---------------------------------------------------------------------------- client


class AtlasClient:
    """Async Atlas Cloud client. Use as `async with AtlasClient() as client: …`.

    Args:
        api_key: the key; defaults to `$ATLASCLOUD_API_KEY`. Missing or blank raises
            `ConfigError` here, before any request.
        base_url: defaults to `$ATLASCLOUD_BASE_URL`, else `DEFAULT_BASE_URL`.
        timeouts: per-phase timeouts.
        retry: retry policy for every call (how generate POSTs use it: see module doc).
        max_connections: size of each connection pool (≥ the run's concurrency).
        transport: an httpx transport, for tests.
        on_rate_limited: called on every 429 answer, so a caller can lower concurrency.
        rng: random source of the backoff jitter (seed it for reproducible tests).
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int = 256,
        transport: httpx.AsyncBaseTransport | None = None,
        on_rate_limited: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        if not key or not key.strip():
            raise ConfigError(
                f"{API_KEY_ENV} is not set: export your Atlas Cloud API key "
                f"(export {API_KEY_ENV}=...) or pass api_key"
            )
        self._key = _Secret(key.strip())
        url = base_url or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
        if not urlsplit(url).scheme or not urlsplit(url).netloc:
            raise ConfigError(f"base URL {url!r} is not an absolute http(s) URL")
        self.base_url = url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.not_visible_grace_s = NOT_VISIBLE_GRACE_S
        self._on_rate_limited = on_rate_limited
        self._rng = rng
        self._warned_statuses: set[str] = set()
        self._origin = self._origin_of(self.base_url)

        # One pool per kind of request. httpcore's pool does work proportional to its
        # connections (a poll() of every idle socket, a scan of all of them) each time a
        # request starts or ends; when 40 rows finish together, one shared pool of polls,
        # submissions and downloads made that bookkeeping the largest CPU cost of the
        # wave (profiled: ~30% of the event loop). Separate pools keep each scan short.
        def pool() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.timeouts.as_httpx(),
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
                headers={"User-Agent": f"i2v-pipeline/{__version__}"},
                transport=transport,
            )

        self._http = pool()  # uploads, submissions, the model list
        # A test transport sees every request: then one client serves all kinds.
        self._poll_http = pool() if transport is None else self._http
        self._download_http = pool() if transport is None else self._http

    @property
    def http_clients(self) -> tuple[httpx.AsyncClient, ...]:
        """The distinct httpx clients (connection pools) this client uses."""
        return tuple(dict.fromkeys((self._http, self._poll_http, self._download_http)))

    def __repr__(self) -> str:
        return f"AtlasClient(base_url={self.base_url!r}, api_key={self._key!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("AtlasClient cannot be pickled (it holds a connection pool and a key)")

    async def __aenter__(self) -> AtlasClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pools."""
        for http in self.http_clients:
            await http.aclose()

    # ---------------------------------------------------------------- plumbing

    @staticmethod
    def _origin_of(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        return (parts.scheme, (parts.hostname or "").lower(), parts.port or default_port)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key.reveal()}"}

    async def _backoff(self, attempt: int, what: str, reason: str) -> None:
        delay = backoff_delay(attempt, self.retry, self._rng)
        logger.info("%s: %s; retry %d in %.2fs", what, reason, attempt + 1, delay)
        await asyncio.sleep(delay)

    def _rate_limited(self) -> None:
        if self._on_rate_limited is not None:
            self._on_rate_limited()

    async def _call(
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
        http: httpx.AsyncClient | None = None,
    ) -> tuple[Any, str | None]:
        """One API call with retries; returns the JSON body and the X-Request-ID.

        Raises the `classify_status` error for an error answer, `TransportError` when no
        answer came, and, for `kind="submit"`, `AmbiguousSubmissionError` when the
        request was sent but its answer was lost or was a 5xx.
        """
        attempts = max(self.retry.max_attempts, 1)
        retry_rule = should_retry_submit if kind == "submit" else should_retry_get
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await (http or self._http).request(
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
                if kind == "submit" and not isinstance(exc, _NOT_SENT):
                    raise AmbiguousSubmissionError(
                        f"{what}: the request was sent but its answer was lost ({reason}); "
                        "a paid job may exist: check before resubmitting"
                    ) from exc
                raise TransportError(f"{what}: no answer from {self.base_url} ({reason})") from exc

            request_id = response.headers.get("x-request-id")
            body = _json_or_none(response)
            status = _effective_status(response.status_code, body)
            logger.debug("%s %s -> %s (request id %s)", method, path, status, request_id)
            if status < 400:
                return body, request_id
            if status == 429:
                self._rate_limited()
            message = _server_message(body, response)
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
            raise classify_status(status, message, request_id, body)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- API calls

    async def list_models(self) -> list[str]:
        """Names of the models Atlas Cloud offers (`GET /api/v1/models`, no auth)."""
        body, request_id = await self._call("GET", "/api/v1/models", what="list models", auth=False)
        names = _model_names(body)
        if not names and not isinstance(body, Mapping | list):
            raise AtlasAPIError(
                "model list answer is not JSON", status_code=200, request_id=request_id
            )
        return names

    async def check_model(self, model: str) -> None:
        """Raise `ModelNotFoundError` if the model list is readable and lacks `model`.

        If the list cannot be read (or comes back empty), return silently: the generate
        call will tell.
        """
        try:
            names = await self.list_models()
        except AtlasError as exc:
            logger.warning("could not read the model list, not checking %r: %s", model, exc)
            return
        if not names or model in names:
            return
        close = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(f"model {model!r} is not offered by Atlas Cloud{hint}")

    async def upload_media(self, data: bytes, *, filename: str, content_type: str) -> UploadedMedia:
        """Upload one file; returns its temporary URL. Retried like a GET (it is free)."""
        timeout = self.timeouts.as_httpx(read=self.timeouts.upload_s, write=self.timeouts.upload_s)
        body, request_id = await self._call(
            "POST",
            "/api/v1/model/uploadMedia",
            what=f"upload {filename}",
            timeouts=timeout,
            files={"file": (filename, data, content_type)},
        )
        try:
            return parse_upload(body)
        except AtlasError as exc:
            raise AtlasAPIError(
                str(exc), status_code=200, request_id=request_id, body=body
            ) from None

    async def generate_video(self, model: str, inputs: Mapping[str, Any]) -> Prediction:
        """Submit one generation; returns the new prediction (usually still running).

        Resent only on a 429 or a connection that failed before sending. If the request
        went out and its answer was lost (read timeout, reset, 5xx, an answer without an
        id) raises `AmbiguousSubmissionError`: a paid job may exist.
        """
        if "model" in inputs:
            raise ConfigError("inputs must not contain 'model'; pass it as the model argument")
        timeout = self.timeouts.as_httpx(read=self.timeouts.generate_s)
        what = f"generate with {model}"
        body, request_id = await self._call(
            "POST",
            "/api/v1/model/generateVideo",
            what=what,
            kind="submit",
            timeouts=timeout,
            json={"model": model, **inputs},
        )
        try:
            return parse_prediction(body, request_id=request_id)
        except AtlasError:
            # A 2xx arrived, so the job was probably created, but we cannot name it.
            raise AmbiguousSubmissionError(
                f"{what}: the answer has no prediction id; a paid job may exist",
                status_code=200,
                request_id=request_id,
            ) from None

    async def get_prediction(self, prediction_id: str, *, age_s: float | None = None) -> Prediction:
        """The prediction's current state (a retried GET).

        `age_s` is the time since submission: while it is under 30 s, a 400/404 means
        "not visible yet" and returns a `NOT_VISIBLE` prediction instead of raising.
        """
        return await self._get_prediction(
            prediction_id, age_s=age_s, grace_s=self.not_visible_grace_s
        )

    async def _get_prediction(
        self, prediction_id: str, *, age_s: float | None, grace_s: float
    ) -> Prediction:
        if not prediction_id:
            raise ValueError("prediction_id is empty")
        what = f"poll {prediction_id}"
        try:
            body, request_id = await self._call(
                "GET",
                f"/api/v1/model/prediction/{quote(prediction_id, safe='')}",
                what=what,
                http=self._poll_http,
            )
        except (BadRequestError, ModelNotFoundError) as exc:
            if exc.status_code not in (400, 404):
                raise
            if age_s is not None and age_s < grace_s:
                return Prediction(
                    id=prediction_id,
                    status=PredictionStatus.NOT_VISIBLE,
                    request_id=exc.request_id,
                )
            # Not a model problem: the id is unknown (expired, or never created).
            raise AtlasAPIError(
                f"prediction {prediction_id} is unknown to Atlas Cloud ({exc.message})",
                status_code=exc.status_code,
                request_id=exc.request_id,
                body=exc.body,
            ) from None
        if not isinstance(body, Mapping):
            raise AtlasAPIError(
                f"{what}: answer is not a JSON object", status_code=200, request_id=request_id
            )
        prediction = parse_prediction(body, request_id=request_id, fallback_id=prediction_id)
        raw = prediction.raw_status
        if raw and _normalize_status(raw) not in _STATUS_MAP and raw not in self._warned_statuses:
            self._warned_statuses.add(raw)
            logger.warning("unknown prediction status %r: treated as still running", raw)
        return prediction

    async def wait_for_prediction(
        self,
        prediction_id: str,
        *,
        deadline_s: float,
        schedule: PollSchedule,
        submitted_monotonic: float | None = None,
        on_poll: Callable[[Prediction], None] | None = None,
    ) -> Prediction:
        """Poll until the prediction is done; returns it (SUCCEEDED, `.polls` set).

        Args:
            prediction_id: the id from `generate_video`.
            deadline_s: give up this many seconds from now.
            schedule: when to poll; its estimator learns from each success.
            submitted_monotonic: `time.monotonic()` at submission (default: now), so
                a re-attached or late-started wait knows the job's age.
            on_poll: called with every prediction seen (e.g. to record the status).

        Raises:
            PredictionFailedError: the provider ended it as failed or timed out.
            PredictionTimeoutError: still not done at the deadline (it may finish later).
            OutputError: it succeeded but lists no output.
        Rate limits, 5xx and dropped connections while polling are retried until the
        deadline; other API errors propagate.
        """
        start = time.monotonic()
        deadline_at = start + deadline_s
        origin = submitted_monotonic if submitted_monotonic is not None else start
        polls = 0
        failures = 0
        last_running_at: float | None = None  # job age at the last poll that saw it running
        last: Prediction | None = None

        def timed_out(cause: str) -> PredictionTimeoutError:
            return PredictionTimeoutError(
                f"prediction {prediction_id} not done after {deadline_s:.0f}s ({cause}); "
                "it may still finish: re-attach with its id",
                prediction_id=prediction_id,
            )

        while True:
            await self._sleep_before_poll(schedule, origin, polls, failures, deadline_at)
            try:
                # Bound the poll itself too, so retries inside it cannot outlive the
                # deadline by more than a moment.
                budget = max(deadline_at - time.monotonic(), 0.0) + _LAST_POLL_ALLOWANCE_S
                async with asyncio.timeout(budget):
                    prediction = await self._get_prediction(
                        prediction_id,
                        age_s=time.monotonic() - origin,
                        grace_s=schedule.not_visible_grace_s,
                    )
            except TimeoutError:
                raise timed_out("a poll was still pending at the deadline") from None
            except (RateLimitedError, ServerError, TransportError) as exc:
                failures += 1
                logger.warning("poll %s failed (%s); backing off", prediction_id, exc)
                if time.monotonic() >= deadline_at:
                    raise timed_out(f"last poll failed: {exc}") from exc
                continue
            failures = 0
            polls += 1
            last = prediction
            if on_poll is not None:
                on_poll(prediction)
            age = time.monotonic() - origin
            if prediction.status is PredictionStatus.SUCCEEDED:
                schedule.estimator.observe(_duration(prediction, last_running_at, age))
                if not prediction.outputs:
                    raise OutputError(
                        f"prediction {prediction_id} succeeded but lists no output",
                        request_id=prediction.request_id,
                    )
                return replace(prediction, polls=polls)
            if prediction.status in (PredictionStatus.FAILED, PredictionStatus.TIMED_OUT):
                kind = "timed out" if prediction.status is PredictionStatus.TIMED_OUT else "failed"
                detail = prediction.error or "no reason given"
                code = f" (error code {prediction.error_code})" if prediction.error_code else ""
                raise PredictionFailedError(
                    f"prediction {prediction_id} {kind}: {detail}{code}",
                    prediction_id=prediction_id,
                    error=prediction.error,
                    error_code=prediction.error_code,
                    request_id=prediction.request_id,
                )
            if prediction.status is PredictionStatus.RUNNING:
                last_running_at = age
            if time.monotonic() >= deadline_at:
                raise timed_out(f"last status {last.raw_status or last.status.value}")

    async def _sleep_before_poll(
        self,
        schedule: PollSchedule,
        origin: float,
        polls: int,
        failures: int,
        deadline_at: float,
    ) -> None:
        now = time.monotonic()
        delay = schedule.next_delay(now - origin, polls)
        if failures:
            delay = max(delay, backoff_delay(failures - 1, self.retry, self._rng))
        wake_at = min(now + delay, deadline_at)
        # Sleep in slices and re-plan: while this job sleeps toward the expected end, other
        # rows may teach the estimator that jobs are much shorter. Only ever earlier: the
        # schedule's delays never shrink as time passes unless the estimate did.
        while (now := time.monotonic()) < wake_at:
            await asyncio.sleep(min(wake_at - now, _REPLAN_EVERY_S))
            if not failures:
                now = time.monotonic()
                wake_at = min(wake_at, now + schedule.next_delay(now - origin, polls))

    async def download_output(
        self, url: str, sink: BinaryIO, *, chunk_size: int = 256 << 10
    ) -> DownloadResult:
        """Stream an output file into `sink` (rewound and truncated first, when it is
        seekable); returns size and SHA-256. Nothing is held in memory but one chunk.

        A transport error, 429 or 5xx (even mid-stream) restarts the download from
        scratch, per the retry policy. The Atlas key is sent only if the URL is on
        `base_url`'s origin: output URLs may be presigned CDN URLs.
        Raises `OutputError` when all attempts failed, on a 4xx, or on an empty body.
        """
        shown = _safe_url(url)
        same_origin = self._origin_of(url) == self._origin or not urlsplit(url).netloc
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


def _duration(prediction: Prediction, running_at: float | None, seen_done_at: float) -> float:
    """How long the job took, for the estimator, on the caller's clock.

    The job ended between the last poll that saw it running and this one. The
    provider's own timing (predict_time, or completed_at - created_at) is precise, so it
    is used, clamped into that window (queueing can make the wall time longer). Without
    it, the time it was seen done is an upper bound: conservative, polls a little late.
    """
    low = running_at if running_at is not None else 0.0
    server = prediction.predict_time_s
    if server is None:
        created = _parse_time(prediction.created_at)
        completed = _parse_time(prediction.completed_at)
        if created is not None and completed is not None and completed > created:
            server = completed - created
    if server is None or server <= 0:
        return seen_done_at
    return min(max(server, low), seen_done_at)


# ------------------------------------------------------------------ sync wrapper


class SyncAtlasClient:
    """Blocking wrapper for scripts: each method runs the async one on a private loop.

    The loop lives in a background thread (an anyio blocking portal), so this also works
    where an event loop is already running (a notebook). Close it, or use `with`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from anyio.from_thread import start_blocking_portal

        # Build the async client first: a missing key raises before a thread starts.
        self._client = AtlasClient(*args, **kwargs)
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._closed = False

    def __repr__(self) -> str:
        return f"Sync{self._client!r}"

    __str__ = __repr__

    def __enter__(self) -> SyncAtlasClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, fn: Callable[..., Coroutine[Any, Any, _T]], /, *args: Any, **kwargs: Any) -> _T:
        if self._closed:
            raise RuntimeError("SyncAtlasClient is closed")
        return self._portal.call(functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Close the connections and stop the background loop."""
        if self._closed:
            return
        try:
            self._portal.call(self._client.aclose)
        finally:
            self._closed = True
            self._portal_cm.__exit__(None, None, None)

    @property
    def client(self) -> AtlasClient:
        """The wrapped async client."""
        return self._client

    def list_models(self) -> list[str]:
        return self._run(self._client.list_models)

    def check_model(self, model: str) -> None:
        self._run(self._client.check_model, model)

    def upload_media(self, data: bytes, *, filename: str, content_type: str) -> UploadedMedia:
        return self._run(
            self._client.upload_media, data, filename=filename, content_type=content_type
        )

    def generate_video(self, model: str, inputs: Mapping[str, Any]) -> Prediction:
        return self._run(self._client.generate_video, model, inputs)

    def get_prediction(self, prediction_id: str, *, age_s: float | None = None) -> Prediction:
        return self._run(self._client.get_prediction, prediction_id, age_s=age_s)

    def wait_for_prediction(
        self,
        prediction_id: str,
        *,
        deadline_s: float,
        schedule: PollSchedule,
        submitted_monotonic: float | None = None,
        on_poll: Callable[[Prediction], None] | None = None,
    ) -> Prediction:
        return self._run(
            self._client.wait_for_prediction,
            prediction_id,
            deadline_s=deadline_s,
            schedule=schedule,
            submitted_monotonic=submitted_monotonic,
            on_poll=on_poll,
        )

    def download_output(
        self, url: str, sink: BinaryIO, *, chunk_size: int = 256 << 10
    ) -> DownloadResult:
        return self._run(self._client.download_output, url, sink, chunk_size=chunk_size)
