"""Retry rules, from tables: which answers are retried, how long to wait, which error."""

from __future__ import annotations

import random

import httpx
import pytest

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
from i2v.parsing import error_page
from i2v.retry import (
    NOT_SENT_EXCEPTIONS,
    RetryPolicy,
    backoff_delay,
    classify_status,
    should_retry_get,
    should_retry_submit,
)

REQ = httpx.Request("POST", "https://api.example/api/v1/model/generateVideo")

# status -> (retry a GET?, retry a generate POST?)
STATUS_TABLE = [
    (200, False, False),
    (400, False, False),
    (401, False, False),
    (402, False, False),
    (403, False, False),
    (404, False, False),
    (408, True, False),
    (413, False, False),
    (422, False, False),
    (429, True, True),
    (451, False, False),
    (500, True, False),
    (501, False, False),
    (502, True, False),
    (503, True, False),
    (504, True, False),
]


@pytest.mark.parametrize(("status", "get", "submit"), STATUS_TABLE)
def test_retry_by_status(status: int, get: bool, submit: bool) -> None:
    assert should_retry_get(status, None) is get
    assert should_retry_submit(status, None) is submit


# exception -> (retry a GET?, retry a generate POST?)
EXC_TABLE = [
    (httpx.ConnectError("refused", request=REQ), True, True),
    (httpx.ConnectTimeout("slow connect", request=REQ), True, True),
    (httpx.PoolTimeout("pool full", request=REQ), True, True),
    (httpx.ReadTimeout("slow answer", request=REQ), True, False),
    (httpx.WriteTimeout("slow send", request=REQ), True, False),
    (httpx.ReadError("connection reset by peer", request=REQ), True, False),
    (httpx.WriteError("broken pipe", request=REQ), True, False),
    (httpx.CloseError("close", request=REQ), True, False),
    (httpx.RemoteProtocolError("server disconnected", request=REQ), True, False),
    (httpx.LocalProtocolError("bad header", request=REQ), False, False),
    (httpx.UnsupportedProtocol("ftp://", request=REQ), False, False),
    (httpx.ProxyError("proxy refused", request=REQ), False, False),
    (httpx.InvalidURL("bad url"), False, False),
    (httpx.DecodingError("bad gzip", request=REQ), False, False),
    (ValueError("not a transport error"), False, False),
]


@pytest.mark.parametrize(
    ("exc", "get", "submit"), EXC_TABLE, ids=[type(e).__name__ for e, _, _ in EXC_TABLE]
)
def test_retry_by_exception(exc: BaseException, get: bool, submit: bool) -> None:
    assert should_retry_get(None, exc) is get
    assert should_retry_submit(None, exc) is submit


@pytest.mark.parametrize(
    ("exc", "not_sent"),
    [
        (httpx.ConnectError("refused", request=REQ), True),
        (httpx.ConnectTimeout("slow connect", request=REQ), True),
        (httpx.PoolTimeout("pool full", request=REQ), True),
        (httpx.LocalProtocolError("bad header", request=REQ), True),
        (httpx.UnsupportedProtocol("ftp://", request=REQ), True),
        (httpx.ProxyError("proxy refused", request=REQ), True),
        (httpx.InvalidURL("bad url"), True),
        (httpx.ReadTimeout("slow answer", request=REQ), False),
        (httpx.WriteTimeout("slow send", request=REQ), False),
        (httpx.ReadError("reset", request=REQ), False),
        (httpx.RemoteProtocolError("server disconnected", request=REQ), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_not_sent_means_no_job_whether_or_not_it_is_retried(
    exc: BaseException, not_sent: bool
) -> None:
    # One tuple decides "no job was created" (TransportError, never ambiguous); of those
    # only the ones that may pass on another try are resent.
    assert isinstance(exc, NOT_SENT_EXCEPTIONS) is not_sent
    if should_retry_submit(None, exc):
        assert not_sent


def test_exception_wins_over_status_and_nothing_is_not_retried() -> None:
    # A read timeout on a submit stays ambiguous even if a status was somehow recorded.
    assert should_retry_submit(429, httpx.ReadTimeout("x", request=REQ)) is False
    assert should_retry_get(None, None) is False
    assert should_retry_submit(None, None) is False


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (50, 8.0), (5000, 8.0)],
)
def test_backoff_without_jitter_doubles_up_to_the_cap(attempt: int, expected: float) -> None:
    policy = RetryPolicy(jitter=0.0)
    assert backoff_delay(attempt, policy) == pytest.approx(expected)


def test_backoff_jitter_stays_in_bounds_and_varies() -> None:
    policy = RetryPolicy()  # base 0.5, max 8, jitter 0.25
    rng = random.Random(7)
    for attempt in range(8):
        nominal = min(0.5 * 2**attempt, 8.0)
        delays = [backoff_delay(attempt, policy, rng) for _ in range(200)]
        assert min(delays) >= nominal * 0.75 - 1e-9
        assert max(delays) <= nominal * 1.25 + 1e-9
        assert len({round(d, 6) for d in delays}) > 100  # spread, not lockstep
        # Both sides of the nominal are used.
        assert min(delays) < nominal < max(delays)


def test_backoff_seeded_rng_is_reproducible() -> None:
    policy = RetryPolicy()
    a = [backoff_delay(i, policy, random.Random(3)) for i in range(5)]
    b = [backoff_delay(i, policy, random.Random(3)) for i in range(5)]
    assert a == b


def test_backoff_never_negative() -> None:
    # A jitter over 100 % could push the factor below zero; the delay is clamped.
    policy = RetryPolicy(jitter=3.0)
    rng = random.Random(1)
    assert all(backoff_delay(a, policy, rng) >= 0.0 for a in range(10) for _ in range(50))
    assert backoff_delay(-3, RetryPolicy(jitter=0.0)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthError),
        (402, InsufficientBalanceError),
        (403, AuthError),
        (404, NotFoundError),
        (413, BadRequestError),
        (422, BadRequestError),
        (429, RateLimitedError),
        (451, RegionBlockedError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (418, AtlasAPIError),
        (302, AtlasAPIError),
    ],
)
def test_classify_status(status: int, cls: type[AtlasAPIError]) -> None:
    body = {"code": status, "msg": "the server's own words"}
    err = classify_status(status, "the server's own words", "req-123", body)
    assert type(err) is cls
    assert err.status_code == status
    assert err.request_id == "req-123"
    assert err.body is body
    assert "the server's own words" in err.message
    assert "req-123" in str(err) and f"HTTP {status}" in str(err)


def test_auth_error_names_the_env_var_and_empty_message_is_said() -> None:
    err = classify_status(401, "", None, None)
    assert "ATLASCLOUD_API_KEY" in str(err)
    assert "no message" in str(err)
    assert "base64" in classify_status(413, "too big", None, None).message


def test_404_is_neutral_the_caller_says_what_was_not_found() -> None:
    err = classify_status(404, "prediction not found", None, None)
    assert type(err) is NotFoundError and "model" not in err.message


@pytest.mark.parametrize(
    ("status", "message", "cls"),
    [
        (400, "Insufficient balance", InsufficientBalanceError),
        (403, "account balance is empty", InsufficientBalanceError),
        (400, "monthly quota used up", InsufficientBalanceError),
        (400, "please top up", InsufficientBalanceError),
        (422, "insufficient funds", InsufficientBalanceError),
        (402, "whatever", InsufficientBalanceError),
        (429, "quota exceeded, slow down", RateLimitedError),  # rate limiting
        (503, "balance service down", ServerError),  # server trouble: retried
        (400, "duration must be 6 or 10", BadRequestError),
        (403, "insufficient permissions for this model", AuthError),
    ],
)
def test_balance_words_on_other_statuses_mean_balance(
    status: int, message: str, cls: type[AtlasAPIError]
) -> None:
    err = classify_status(status, message, "r", {"code": status, "msg": message})
    assert type(err) is cls and err.status_code == status and message in err.message


CLOUDFLARE_1020 = (
    "<!DOCTYPE html><html><head><title>Access denied | api.atlascloud.ai used Cloudflare "
    'to restrict access</title></head><body><span class="cf-error-code">1020</span>'
    "</body></html>"
)


@pytest.mark.parametrize(
    ("status", "text", "content_type", "cls", "needle"),
    [
        (403, "error code: 1010", "text/plain", BlockedError, "error code 1010"),
        (403, CLOUDFLARE_1020, "text/html", BlockedError, "error code 1020"),
        (401, "<html><body>Forbidden</body></html>", None, BlockedError, "HTML error page"),
        (503, "error code: 1020", "text/plain", BlockedError, "error code 1020"),
        (
            502,
            "<html><head><title>502 Bad Gateway</title></head></html>",
            "text/html",
            ServerError,
            "an HTML error page, not the API's JSON: 502 Bad Gateway",
        ),
        (404, "<html><title>Not Found</title></html>", "text/html", NotFoundError, "HTML"),
        (429, "error code: 1015", "text/plain", RateLimitedError, "1015"),
        (400, "plain words", "text/plain", BadRequestError, "plain words"),
    ],
)
def test_error_pages_that_are_not_the_apis_json(
    status: int, text: str, content_type: str | None, cls: type[AtlasAPIError], needle: str
) -> None:
    from i2v.parsing import server_message

    page = error_page(text, content_type)
    message = server_message(None, text)
    err = classify_status(status, message, "r", None, page=page, user_agent="i2v-pipeline/0.1")
    assert type(err) is cls and err.status_code == status
    assert needle in str(err)
    if cls is BlockedError:
        assert "not a bad API key" in str(err) and "'i2v-pipeline/0.1'" in str(err)
        assert "ATLASCLOUD_USER_AGENT" in str(err)
