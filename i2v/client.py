"""Async client for Atlas Cloud's model API (upload, generate, poll, download).

One `AtlasClient` per run: the seven API calls, each turning answers into results or
errors that say what to do. The HTTP side (key, connection pools, retries, the "was a
paid job created?" rule) is `i2v.session`; reading answers is `i2v.parsing`; the poll
loop is `i2v.polling`.
"""

from __future__ import annotations

import difflib
import logging
import os
import random
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import httpx

from i2v._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_USER_AGENT,
    NOT_VISIBLE_GRACE_S,
    USER_AGENT_ENV,
)
from i2v.errors import (
    AmbiguousSubmissionError,
    AtlasAPIError,
    AtlasError,
    BadRequestError,
    BlockedError,
    ConfigError,
    ModelNotFoundError,
    NotFoundError,
    PredictionNotFoundError,
)
from i2v.parsing import (
    is_known_status,
    model_catalog,
    parse_prediction,
    parse_upload,
    server_message,
)
from i2v.polling import PollSchedule, wait_until_done
from i2v.retry import RetryPolicy
from i2v.session import ApiSession, DownloadResult, Timeouts
from i2v.types import Prediction, PredictionStatus, UploadedMedia

__all__ = ["AtlasClient"]

logger = logging.getLogger("i2v.client")


class AtlasClient:
    """Async Atlas Cloud client. Use as `async with AtlasClient() as client: …`.

    Args:
        api_key: the key; defaults to `$ATLASCLOUD_API_KEY`. Missing or blank raises
            `ConfigError` here, before any request.
        base_url: defaults to `$ATLASCLOUD_BASE_URL`, else `DEFAULT_BASE_URL`.
        timeouts: per-phase timeouts.
        retry: retry policy for every call (how generate POSTs use it: `i2v.session`).
        max_connections: size of each connection pool (≥ the run's concurrency).
        transport: an httpx transport, for tests.
        on_rate_limited: called on every 429 answer, so a caller can lower concurrency.
        rng: random source of the backoff jitter (seed it for reproducible tests).
        user_agent: the User-Agent header; defaults to `$ATLASCLOUD_USER_AGENT`, else
            `DEFAULT_USER_AGENT` (Cloudflare in front of the API refuses some).
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
        user_agent: str | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        if not key or not key.strip():
            raise ConfigError(
                f"{API_KEY_ENV} is not set: export your Atlas Cloud API key "
                f"(export {API_KEY_ENV}=...) or pass api_key"
            )
        url = base_url or os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL
        if not urlsplit(url).scheme or not urlsplit(url).netloc:
            raise ConfigError(f"base URL {url!r} is not an absolute http(s) URL")
        agent = user_agent or os.environ.get(USER_AGENT_ENV, "").strip() or DEFAULT_USER_AGENT
        if any(c in agent for c in "\r\n\x00"):
            raise ConfigError(f"User-Agent {agent!r} must be one line of text")
        self.base_url = url.rstrip("/")
        self.user_agent = agent
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.not_visible_grace_s = NOT_VISIBLE_GRACE_S
        self._warned_statuses: set[str] = set()
        self._session = ApiSession(
            key.strip(),
            self.base_url,
            timeouts=self.timeouts,
            retry=self.retry,
            user_agent=agent,
            max_connections=max_connections,
            transport=transport,
            on_rate_limited=on_rate_limited,
            rng=rng,
        )

    @property
    def http_clients(self) -> tuple[httpx.AsyncClient, ...]:
        """The distinct httpx clients (connection pools) this client uses."""
        return self._session.http_clients

    def __repr__(self) -> str:
        return f"AtlasClient(base_url={self.base_url!r}, api_key='***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("AtlasClient cannot be pickled (it holds a connection pool and a key)")

    async def __aenter__(self) -> AtlasClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pools."""
        await self._session.aclose()

    # ---------------------------------------------------------------- API calls

    async def list_models(self) -> list[str]:
        """Names of the models Atlas Cloud offers (`GET /api/v1/models`, no auth)."""
        return list(await self.model_catalog())

    async def model_catalog(self) -> dict[str, float | None]:
        """The models Atlas Cloud offers, each with its listed price (USD per run)."""
        body, request_id = await self._session.call(
            "GET", "/api/v1/models", what="list models", auth=False
        )
        catalog = model_catalog(body)
        if not catalog and not isinstance(body, Mapping | list):
            raise AtlasAPIError(
                "model list answer is not a JSON object or list",
                status_code=200,
                request_id=request_id,
            )
        return catalog

    async def model_listing(self) -> Any:
        """The raw `GET /api/v1/models` answer (no auth): each entry's `schema` URL,
        price and flags, for `i2v doctor`."""
        body, _ = await self._session.call("GET", "/api/v1/models", what="list models", auth=False)
        return body

    async def published_schema(self, url: str) -> Any:
        """A model's published input schema (an OpenAPI document at its listing entry's
        `schema` URL), fetched without the key: the URL may be on another host."""
        body, _ = await self._session.call(
            "GET", url, what="read the model's input schema", auth=False
        )
        return body

    async def account_get(self, path: str, what: str) -> Any:
        """A `GET /public/v1/...` account report (balance, usage): `i2v.account`."""
        body, _ = await self._session.call("GET", path, what=what)
        return body

    async def check_model(self, model: str) -> float | None:
        """Raise `ModelNotFoundError` if the model list is readable and lacks `model`;
        return the model's listed price, if the list has one.

        If the list cannot be read (or comes back empty), return silently: the generate
        call will tell. A Cloudflare block (`BlockedError`) is raised: nothing will work.
        """
        try:
            catalog = await self.model_catalog()
        except BlockedError:
            raise
        except AtlasError as exc:
            logger.warning("could not read the model list, not checking %r: %s", model, exc)
            return None
        names = list(catalog)
        if not names or model in names:
            return catalog.get(model)
        close = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(f"model {model!r} is not offered by Atlas Cloud{hint}")

    async def upload_media(self, data: bytes, *, filename: str, content_type: str) -> UploadedMedia:
        """Upload one file; returns its temporary URL. Retried like a GET (it is free)."""
        timeout = self.timeouts.as_httpx(read=self.timeouts.upload_s, write=self.timeouts.upload_s)
        body, request_id = await self._session.call(
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
        try:
            body, request_id = await self._session.call(
                "POST",
                "/api/v1/model/generateVideo",
                what=what,
                kind="submit",
                timeouts=timeout,
                json={"model": model, **inputs},
            )
        except NotFoundError as exc:
            detail = server_message(exc.body, "") or exc.message
            raise ModelNotFoundError(
                f"model {model!r} is not offered by Atlas Cloud ({detail}); check the model name",
                status_code=exc.status_code,
                request_id=exc.request_id,
                body=exc.body,
            ) from None
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

        `age_s` is the time since submission: while it is under the not-visible grace
        (30 s), a 400/404 means "not visible yet" and returns a `NOT_VISIBLE` prediction;
        later (or with no age) it raises `PredictionNotFoundError`.
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
            body, request_id = await self._session.call(
                "GET",
                f"/api/v1/model/prediction/{quote(prediction_id, safe='')}",
                what=what,
                poll=True,
            )
        except (BadRequestError, NotFoundError) as exc:
            if exc.status_code not in (400, 404):
                raise
            if age_s is not None and age_s < grace_s:
                return Prediction(
                    id=prediction_id,
                    status=PredictionStatus.NOT_VISIBLE,
                    request_id=exc.request_id,
                )
            detail = server_message(exc.body, "") or exc.message
            when = f"{age_s:.0f} s after its submission" if age_s is not None else "any more"
            raise PredictionNotFoundError(
                f"prediction {prediction_id} is not known to Atlas Cloud {when} ({detail}): "
                "the provider purged or expired its record (its retention is limited), "
                "so its state and output cannot be read through this id",
                prediction_id=prediction_id,
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
        if raw and not is_known_status(raw) and raw not in self._warned_statuses:
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
        """Poll until the prediction succeeded; returns that state (with its outputs).

        Args:
            prediction_id: the id from `generate_video`.
            deadline_s: give up this many seconds from now.
            schedule: when to poll; its estimator learns from each success.
            submitted_monotonic: `time.monotonic()` at submission (default: now), so
                a re-attached or late-started wait knows the job's age.
            on_poll: called with every prediction seen (e.g. to count the polls).

        Raises:
            PredictionFailedError: the provider ended it as failed, cancelled or timed out.
            PredictionTimeoutError: still not done at the deadline (it may finish later).
            PredictionNotFoundError: the id answers 400/404 past the not-visible grace.
            OutputError: the provider finished it without an output URL.
        Rate limits, 5xx, non-JSON pages and dropped connections while polling are
        retried until the deadline; other API errors propagate.
        """
        return await wait_until_done(
            lambda age_s: self._get_prediction(
                prediction_id, age_s=age_s, grace_s=schedule.not_visible_grace_s
            ),
            prediction_id,
            deadline_s=deadline_s,
            schedule=schedule,
            backoff=self._session.backoff_s,
            submitted_monotonic=submitted_monotonic,
            on_poll=on_poll,
        )

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
        return await self._session.download(url, sink, chunk_size=chunk_size)
