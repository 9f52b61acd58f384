"""Retry rules for the Atlas Cloud client, as small pure functions.

Two rules, because the two kinds of call differ in what a retry can cost:

* GETs and uploads cost nothing, so any transient failure (429, 5xx, a dropped or slow
  connection) is retried with exponential backoff.
* A generate POST creates a paid job and the API has no idempotency key. It is retried
  only when the failure proves the server never created a job: a 429, or a connection
  that failed before the request was sent. Anything after sending (a read timeout, a
  reset, a 5xx) is ambiguous and is never retried blindly.

`NOT_SENT_EXCEPTIONS` is the one list of failures that prove no job was created, and
`classify_status` names the error an error answer means.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import httpx

from i2v._constants import USER_AGENT_ENV
from i2v.errors import (
    AtlasAPIError,
    AuthError,
    BadRequestError,
    BlockedError,
    InsufficientBalanceError,
    NotFoundError,
    RateLimitedError,
    RegionBlockedError,
    ServerError,
)
from i2v.parsing import ErrorPage

# Statuses worth another try of an idempotent call. 501/505 and friends are permanent.
# 408 means the server gave up waiting for our request: harmless to resend a GET.
RETRYABLE_GET_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# Transport errors after which resending a GET is safe: timeouts, refused or reset
# connections, a peer that hung up mid-answer. Local protocol errors and unsupported
# URLs are our own bugs and would only fail again.
_RETRYABLE_GET_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,  # connect, read, write, pool
    httpx.NetworkError,  # connect, read, write, close errors (resets included)
    httpx.RemoteProtocolError,  # server closed the connection without an answer
)

# Raised before a single byte of the request went out, so no job can exist: no
# connection (refused, slow, pool full), or a request that never left this machine (a
# local protocol error, an unsupported scheme, a proxy refusing it, an invalid URL).
# Only the first three are worth retrying; all of them are "not sent", never ambiguous.
NOT_SENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
    httpx.InvalidURL,
)

# Atlas's own MCP server treats these words in any error message as an empty balance.
# 429s ("quota exceeded" is rate limiting) and 5xx (retried) are left to their status.
_BALANCE_WORDS = re.compile(
    r"balance|quota|top[\s-]?up|insufficient\s+(?:funds|credits?)", re.IGNORECASE
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried.

    `max_attempts` counts the first try: 5 means one try and up to four retries.
    Delays follow `min(base_delay_s * 2**attempt, max_delay_s)`, spread by +-`jitter`
    (a fraction) so that many rows hit by the same 429 do not come back in lockstep.
    """

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    jitter: float = 0.25


def should_retry_get(status_code: int | None, exc: BaseException | None) -> bool:
    """Whether an idempotent call (GET, upload) that got this answer is worth retrying."""
    if exc is not None:
        return isinstance(exc, _RETRYABLE_GET_EXCEPTIONS)
    if status_code is None:
        return False
    return status_code in RETRYABLE_GET_STATUSES


def should_retry_submit(status_code: int | None, exc: BaseException | None) -> bool:
    """Whether a generate POST may be resent: only if no job can have been created.

    A 429 is the rate limiter refusing the call before it reaches the model. Connect and
    pool errors happen before the request is written (and may pass); the other
    NOT_SENT_EXCEPTIONS would only fail again. Read timeouts, resets and 5xx come after
    the request was sent, when a paid job may already exist.
    """
    if exc is not None:
        return isinstance(exc, NOT_SENT_EXCEPTIONS) and should_retry_get(None, exc)
    return status_code == 429


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0 = the first retry).

    `min(base * 2**attempt, max)` multiplied by a random factor in
    `[1 - jitter, 1 + jitter]`; never negative.
    """
    # Cap the exponent: 2**2000 would overflow a float long before the min() applies.
    exponent = min(max(attempt, 0), 62)
    delay = min(policy.base_delay_s * (2.0**exponent), policy.max_delay_s)
    if policy.jitter > 0:
        r = rng if rng is not None else random
        delay *= 1.0 + r.uniform(-policy.jitter, policy.jitter)
    return max(delay, 0.0)


def classify_status(
    status_code: int,
    message: str,
    request_id: str | None,
    body: object,
    *,
    page: ErrorPage | None = None,
    user_agent: str | None = None,
) -> AtlasAPIError:
    """The error for an HTTP error answer, with a message that says what to do.

    `message` is the server's own `msg`; it is kept verbatim inside the new message.
    `page` describes a body that was not JSON (an error page from Cloudflare or a proxy
    in front of the API); `user_agent` is the one sent, named when Cloudflare blocked it.
    """
    detail = message.strip() if message and message.strip() else "no message"
    if page is not None:
        if page.blocked_by_cloudflare or (page.html and status_code in (401, 403)):
            return _blocked(status_code, page, request_id, user_agent)
        if page.html:
            detail = f"an HTML error page, not the API's JSON: {detail}"
    cls: type[AtlasAPIError]
    if status_code == 402 or (
        page is None
        and 400 <= status_code < 500
        and status_code != 429
        and _BALANCE_WORDS.search(detail)
    ):
        cls = InsufficientBalanceError
        text = f"insufficient balance on the Atlas Cloud account ({detail}); top up to go on"
    elif status_code == 401:
        # Atlas authenticates before routing, so a wrong URL path also answers 401.
        cls = AuthError
        text = (
            f"Atlas Cloud rejected the API key ({detail}); check ATLASCLOUD_API_KEY "
            "(a wrong ATLASCLOUD_BASE_URL also answers 401)"
        )
    elif status_code == 403:
        cls = AuthError
        text = f"the API key is not allowed this call ({detail}); check ATLASCLOUD_API_KEY"
    elif status_code == 404:
        # Which thing was not found is for the caller to say (model, prediction).
        cls = NotFoundError
        text = f"not found ({detail})"
    elif status_code == 413:
        cls = BadRequestError
        text = f"request body too large ({detail}); send the picture as a URL, not base64"
    elif status_code in (400, 422):
        cls = BadRequestError
        text = f"request refused: {detail}"
    elif status_code == 451:
        cls = RegionBlockedError
        text = f"Atlas Cloud is not available from this region ({detail})"
    elif status_code == 429:
        cls = RateLimitedError
        text = f"rate limited by Atlas Cloud ({detail}); lower the concurrency"
    elif 500 <= status_code <= 599:
        cls = ServerError
        text = f"Atlas Cloud server error ({detail})"
    else:
        cls = AtlasAPIError
        text = f"unexpected answer from Atlas Cloud ({detail})"
    return cls(text, status_code=status_code, request_id=request_id, body=body)


def _blocked(
    status_code: int, page: ErrorPage, request_id: str | None, user_agent: str | None
) -> BlockedError:
    if page.cloudflare_code:
        where = f"by Cloudflare in front of Atlas Cloud (error code {page.cloudflare_code})"
    else:
        title = f" {page.title!r}" if page.title else ""
        where = (
            "in front of Atlas Cloud (by Cloudflare or a proxy): the answer is an HTML "
            f"error page{title}, not the API's JSON"
        )
    sent = f"this client sent {user_agent!r}" if user_agent else "check the one sent"
    return BlockedError(
        f"the request was blocked {where}; not a bad API key. Cloudflare refuses some "
        f"User-Agents ({sent}): set another with {USER_AGENT_ENV} or `api.user_agent` in "
        "the config",
        status_code=status_code,
        request_id=request_id,
    )
