"""The simulator bills as Atlas does: reserve at submit, charge on success, refund on
failure; the balance and the daily usage/costs endpoints, and their error knobs."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from i2v.models import DEFAULT_MODEL
from tests.test_simulator import client, generate, job_id, upload, wait_done

KEY = os.environ.get("ATLASCLOUD_API_KEY", "sk-test")


def _days() -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {"start_date": today.isoformat(), "end_date": (today + timedelta(days=1)).isoformat()}


def test_reserve_charge_refund_and_402_when_the_balance_cannot_pay(
    make_simulator: Callable[..., Any],
) -> None:
    sim = make_simulator(latency_s=0.3, balance_usd=1.0)
    with client(sim) as c:
        image = upload(c)
        ok = job_id(generate(c, image, prompt="a calm scene"))
        bad = job_id(generate(c, image, prompt="nsfw scene"))
        stats = c.get("/_sim/stats").json()
        assert stats["reserved_usd"] == 0.56 and stats["charged_usd"] == 0.0
        frozen = c.get("/public/v1/balance").json()["data"]
        assert frozen["available"]["value"] == 0.44 and frozen["frozen"]["value"] == 0.56
        # $0.44 left pays a third $0.28 video, not a fourth.
        third = job_id(generate(c, image, prompt="a third scene"))
        r = generate(c, image, prompt="a fourth scene")
        assert r.status_code == 402, r.text
        for pid in (ok, bad, third):
            wait_done(c, pid)
        stats = c.get("/_sim/stats").json()
        assert (stats["charged_usd"], stats["refunded_usd"], stats["reserved_usd"]) == (
            0.56,
            0.28,
            0.0,
        )
        # The refund came back: the fourth video can go now.
        assert c.get("/public/v1/balance").json()["data"]["available"]["value"] == 0.44
        assert generate(c, image, prompt="a fourth scene").status_code == 200


def test_usage_and_costs_per_day_and_model(make_simulator: Callable[..., Any]) -> None:
    sim = make_simulator(latency_s=0.1)
    with client(sim) as c:
        image = upload(c)
        pids = [job_id(generate(c, image, prompt=p)) for p in ("one", "two", "nsfw three")]
        for pid in pids:
            wait_done(c, pid)
        usage = c.get("/public/v1/model-usage", params=_days()).json()
        assert usage["has_more"] is False
        [row] = usage["data"]
        assert row["model_id"] == DEFAULT_MODEL
        assert (row["requests"], row["succeeded"], row["failed"]) == (3, 2, 1)
        [cost] = c.get("/public/v1/model-costs", params=_days()).json()["data"]
        assert cost["cost"] == {"value": 0.56, "currency": "USD"}
        other = c.get("/public/v1/model-usage", params={**_days(), "model_ids[]": "x/y"})
        assert other.json()["data"] == []
        assert c.get("/public/v1/model-usage").status_code == 400


def test_account_endpoints_error_knob_and_key(make_simulator: Callable[..., Any]) -> None:
    sim = make_simulator(api_key=KEY)
    with client(sim, key="sk-wrong") as c:
        r = c.get("/public/v1/balance")
        assert r.status_code == 401 and KEY not in r.text and "sk-wrong" not in r.text
    for status in (403, 404, 500):
        sim.config.account_api_status = status
        with client(sim) as c:
            r = c.get("/public/v1/balance")
            assert r.status_code == status
            assert r.json()["error"]["code"] == status
            assert c.get("/public/v1/model-costs", params=_days()).status_code == status
    sim.config.account_api_status = None
    assert (
        httpx.get(
            f"{sim.url}/public/v1/balance", headers={"Authorization": f"Bearer {KEY}"}
        ).status_code
        == 200
    )
