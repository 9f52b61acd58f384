"""Retry rules, from tables: which answers are retried, how long to wait, which error."""

from __future__ import annotations

import random

import httpx
import pytest

from i2v.errors import (
    AtlasAPIError,
    AuthError,
    BadRequestError,
    InsufficientBalanceError,
    ModelNotFoundError,
    RateLimitedError,
    RegionBlockedError,
    ServerError,
)
from i2v.retry import (
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
    (httpx.DecodingError("bad gzip", request=REQ), False, False),
    (ValueError("not a transport error"), False, False),
]


@pytest.mark.parametrize(
    ("exc", "get", "submit"), EXC_TABLE, ids=[type(e).__name__ for e, _, _ in EXC_TABLE]
)
def test_retry_by_exception(exc: BaseException, get: bool, submit: bool) -> None:
    assert should_retry_get(None, exc) is get
    assert should_retry_submit(None, exc) is submit


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
        (404, ModelNotFoundError),
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
