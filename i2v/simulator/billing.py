"""The simulated account's money, billed as Atlas bills: a video's price is reserved
when its job is created, charged when it completes and refunded when it fails.

A job's bill follows from its status (which follows from the clock), so nothing here
runs on a timer. Serves `/public/v1/balance`, `/public/v1/model-usage` and
`/public/v1/model-costs` (daily, per model), each of which a knob can make answer an
error, as a key without the permission or an API without the endpoint would.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from i2v.simulator.config import SimulatorConfig
from i2v.simulator.gate import bearer_problem
from i2v.simulator.jobs import Job

BILLING_STATES = ("reserved", "charged", "refunded")


def price_of(cfg: SimulatorConfig, model: str, duration_s: int) -> float:
    """What one video costs the simulated account: `prices_usd` (`MODEL:DURATION`, then
    `MODEL`), the catalog's price, else $0.28 (twice that for 10 s)."""
    for key in (f"{model}:{duration_s}", model):
        if key in cfg.prices_usd:
            return float(cfg.prices_usd[key])
    if model in cfg.catalog_prices:
        return float(cfg.catalog_prices[model])
    return 0.56 if duration_s == 10 else 0.28


def bill_of(job: Job, now: float) -> str:
    """A job's bill: reserved while it runs, charged once made, refunded once failed."""
    status = job.status(now)
    if status == "completed":
        return "charged"
    return "refunded" if status == "failed" else "reserved"


def totals(jobs: dict[str, Job], cfg: SimulatorConfig, now: float) -> dict[str, float]:
    """Reserved, charged and refunded dollars over every job the account made."""
    out = dict.fromkeys(BILLING_STATES, 0.0)
    for job in jobs.values():
        out[bill_of(job, now)] += price_of(cfg, job.model, job.duration_s)
    return {k: round(v, 4) for k, v in out.items()}


def available_usd(jobs: dict[str, Job], cfg: SimulatorConfig, now: float) -> float | None:
    """What the account can still spend (None: no balance knob, unlimited)."""
    if cfg.balance_usd is None:
        return None
    t = totals(jobs, cfg, now)
    return round(cfg.balance_usd - t["charged"] - t["reserved"], 4)


def _money(value: float) -> dict[str, Any]:
    return {"value": round(value, 4), "currency": "USD"}


def _openai_error(status: int, message: str) -> JSONResponse:
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
    body = {"type": kind.get(status, "api_error"), "code": status, "message": message}
    return JSONResponse({"error": {**body, "param": None}}, status_code=status)


def _refusal(request: Request, cfg: SimulatorConfig) -> Response | None:
    problem = bearer_problem(request.scope, cfg.api_key)
    if problem:
        return _openai_error(401, problem)
    if cfg.account_api_status is not None:
        status = cfg.account_api_status
        message = {
            403: "this key may not read the account's billing",
            404: "not found",
        }.get(status, "internal server error")
        return _openai_error(status, message)
    return None


def balance_response(request: Request, jobs: dict[str, Job], cfg: SimulatorConfig) -> Response:
    """`GET /public/v1/balance`: available, cash, bonus, frozen (reserved), credit_grant."""
    refused = _refusal(request, cfg)
    if refused is not None:
        return refused
    now = time.monotonic()
    t = totals(jobs, cfg, now)
    available = available_usd(jobs, cfg, now)
    # Without a balance knob the account is rich: say so with a large round figure.
    shown = 1000.0 if available is None else available
    data = {
        "available": _money(shown),
        "cash": _money(shown),
        "bonus": _money(0.0),
        "frozen": _money(t["reserved"]),
        "credit_grant": _money(0.0),
    }
    return JSONResponse({"data": data, "request_id": "sim"})


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def usage_response(
    request: Request, jobs: dict[str, Job], cfg: SimulatorConfig, *, costs: bool
) -> Response:
    """`GET /public/v1/model-usage` (job counts) or `/model-costs` (dollars charged),
    per day and model, `start_date` inclusive to `end_date` exclusive."""
    refused = _refusal(request, cfg)
    if refused is not None:
        return refused
    q = request.query_params
    try:
        start = date.fromisoformat(q["start_date"])
        end = date.fromisoformat(q["end_date"])
    except (KeyError, ValueError):
        return _openai_error(400, "start_date and end_date (YYYY-MM-DD) are required")
    wanted = set(q.getlist("model_ids[]") + q.getlist("model_ids"))
    now = time.monotonic()
    rows: dict[tuple[str, str], dict[str, float]] = defaultdict(
        lambda: {"requests": 0, "succeeded": 0, "failed": 0, "cost": 0.0}
    )
    for job in jobs.values():
        day = _day(job.created_wall)
        if not start.isoformat() <= day < end.isoformat() or (wanted and job.model not in wanted):
            continue
        row = rows[(day, job.model)]
        row["requests"] += 1
        bill = bill_of(job, now)
        if bill == "charged":
            row["succeeded"] += 1
            row["cost"] += price_of(cfg, job.model, job.duration_s)
        elif bill == "refunded":
            row["failed"] += 1
    data: list[dict[str, Any]] = []
    for (day, model), row in sorted(rows.items()):
        entry: dict[str, Any] = {"date": day, "model_id": model}
        if costs:
            entry["cost"] = _money(row["cost"])
        else:
            entry.update(
                requests=int(row["requests"]),
                succeeded=int(row["succeeded"]),
                failed=int(row["failed"]),
            )
        data.append(entry)
    return JSONResponse({"data": data, "has_more": False, "next_page": None})
