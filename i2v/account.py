"""The Atlas Cloud account's money: its balance (`GET /public/v1/balance`) and daily
usage and costs per model (`/public/v1/model-usage`, `/model-costs`).

These reports cover the whole account, not one DEST. A missing endpoint or a key
without the permission is a note, never an error: nothing here gates a run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from i2v.client import AtlasClient
from i2v.config import BatchOptions
from i2v.doctor import Check
from i2v.errors import AtlasError
from i2v.estimate import Estimate
from i2v.models import get_model

BALANCE_PATH = "/public/v1/balance"
USAGE_PATH = "/public/v1/model-usage"
COSTS_PATH = "/public/v1/model-costs"
_MAX_PAGES = 50


@dataclass(frozen=True)
class Balance:
    """What the account can spend now, and what open jobs hold (frozen)."""

    available_usd: float
    frozen_usd: float | None = None


def _amount(node: Any) -> float | None:
    """`{value, currency}`, or a bare number."""
    if isinstance(node, Mapping):
        node = node.get("value", node.get("amount"))
    try:
        return None if node is None or isinstance(node, bool) else float(node)
    except (TypeError, ValueError):
        return None


def _data(body: Any) -> Any:
    return body.get("data", body) if isinstance(body, Mapping) else body


def parse_balance(body: Any) -> Balance | None:
    """The balance answer, or None when it has no readable `available`."""
    data = _data(body)
    if not isinstance(data, Mapping):
        return None
    available = _amount(data.get("available"))
    if available is None:
        return None
    return Balance(available, _amount(data.get("frozen")))


async def read_balance(client: AtlasClient) -> tuple[Balance | None, str]:
    """The balance, or None and a note saying why it is not known."""
    try:
        body = await client.account_get(BALANCE_PATH, "read the account balance")
    except AtlasError as exc:
        return None, f"balance not known: {BALANCE_PATH} answered {_why(exc)}"
    balance = parse_balance(body)
    if balance is None:
        return None, f"balance not known: {BALANCE_PATH} gave no readable 'available'"
    return balance, ""


def _why(exc: AtlasError) -> str:
    status = getattr(exc, "status_code", None)
    hint = {403: " (this key may not read billing)", 404: " (no such endpoint here)"}
    return f"HTTP {status}{hint.get(status or 0, '')}" if status else str(exc)


@dataclass(frozen=True)
class DayUsage:
    """One day and model of the provider's own report."""

    day: str
    model: str
    jobs: int | None = None  # requests counted
    succeeded: int | None = None
    failed: int | None = None
    cost_usd: float | None = None


def _int(node: Any) -> int | None:
    value = _amount(node)
    return None if value is None else int(value)


def parse_usage(body: Any) -> list[DayUsage]:
    """Rows of a model-usage or model-costs page (fields read leniently)."""
    rows = _data(body)
    out: list[DayUsage] = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, Mapping):
            continue
        day = str(row.get("date") or row.get("day") or "")[:10]
        model = str(row.get("model_id") or row.get("model") or "")
        if not day:
            continue
        jobs = row.get("requests", row.get("count", row.get("jobs")))
        out.append(
            DayUsage(
                day,
                model,
                jobs=_int(jobs),
                succeeded=_int(row.get("succeeded")),
                failed=_int(row.get("failed")),
                cost_usd=_amount(row.get("cost", row.get("amount"))),
            )
        )
    return out


async def read_usage(
    client: AtlasClient, path: str, start: str, end: str, models: Sequence[str]
) -> list[DayUsage]:
    """Every page of one report for days `start` to `end` (exclusive) and `models`.

    Raises `AtlasError` (the caller turns it into a note).
    """
    out: list[DayUsage] = []
    page: Any = None
    for _ in range(_MAX_PAGES):
        query: list[tuple[str, str]] = [("start_date", start), ("end_date", end)]
        query += [("model_ids[]", m) for m in models] + [("group_by[]", "model")]
        if page is not None:
            query.append(("page", str(page)))
        body = await client.account_get(f"{path}?{urlencode(query)}", f"read {path}")
        out += parse_usage(body)
        if not (isinstance(body, Mapping) and body.get("has_more")):
            break
        page = body.get("next_page")
    return out


def balance_note(balance: Balance, est: Estimate) -> str | None:
    """A preflight line when the run's estimate is over the balance, else None."""
    if est.usd <= balance.available_usd + 1e-9:
        return None
    return (
        f"balance ${balance.available_usd:.2f} covers {est.covered_by(balance.available_usd)} "
        f"of the {est.new_inputs} new videos (estimate ${est.usd:.2f}); the run goes on "
        "and stops cleanly when Atlas answers 402"
    )


async def balance_preflight(
    client: AtlasClient, log: logging.Logger | logging.LoggerAdapter[Any], est: Estimate
) -> Balance | None:
    """Before the first payment: warn when the balance can't cover the new videos."""
    if est.new_inputs == 0:
        return None
    balance, note = await read_balance(client)
    if balance is None:
        log.info("%s; going on", note)
        return None
    warning = balance_note(balance, est)
    if warning:
        log.warning("%s", warning)
    else:
        log.info("balance $%.2f covers the estimate $%.2f", balance.available_usd, est.usd)
    return balance


async def check_balance(client: AtlasClient, options: BatchOptions) -> Check:
    """`i2v doctor`: the balance and how many videos of the configured model it pays for.
    Never fails the doctor: a balance not known is a note."""
    balance, note = await read_balance(client)
    if balance is None:
        return Check(True, f"{note} (a note, not an error: runs stop cleanly on 402)")
    models = [str(options.model)]
    covers = []
    for model in models:
        spec = get_model(model)
        price = options.price(spec.default_duration)
        n = math.floor(balance.available_usd / price + 1e-9) if price > 0 else 0
        covers.append(f"{n} videos of {model} at ${price:.2f}")
    frozen = f", ${balance.frozen_usd:.2f} held by jobs in flight" if balance.frozen_usd else ""
    return Check(
        True,
        f"balance: ${balance.available_usd:.2f} available{frozen}; covers " + ", ".join(covers),
    )
