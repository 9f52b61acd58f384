"""Before a run's first paid call: the balance note (`i2v.account`) on the estimate of
its new inputs (`i2v.estimate`), and, over `options.approve_over_usd`, a person's OK:
the flow run pauses with an input form (or the CLI asks, `RunControl.approver`).
One call from `flows/batch.py`; the inbox and the fan-out ask in the parent run only."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from i2v.account import balance_preflight
from i2v.client import AtlasClient
from i2v.config import BatchOptions
from i2v.estimate import Estimate, describe, estimate
from i2v.row_plans import job_price
from i2v.run import RunAborted, RunControl
from i2v.state import Action


class Approval(RunInput):
    """The pause's form: approve the run, optionally with a budget (USD)."""

    approve: bool = False
    budget_usd: float | None = None


def needs_approval(options: BatchOptions, est: Estimate) -> bool:
    """Over the threshold (new inputs only: a rerun that pays nothing never asks)."""
    limit = options.approve_over_usd
    return limit is not None and est.new_inputs > 0 and est.usd > limit + 1e-9


async def before_paying(
    control: RunControl,
    client: AtlasClient,
    log: logging.Logger | logging.LoggerAdapter[Any],
    options: BatchOptions,
    jobs: Sequence[Any],
    catalog_usd: float | None,
) -> None:
    """The balance against what this run's new inputs would cost, then approval; a
    refusal goes to `control`, which stops the run's context before its first call."""
    est = estimate(options, jobs, catalog_usd=catalog_usd)
    balance = await balance_preflight(client, log, est)
    if not needs_approval(options, est):
        return
    summary = describe(est, balance.available_usd if balance else None)
    head = (
        f"This run would pay about ${est.usd:.2f}, over approve_over_usd "
        f"${options.approve_over_usd:.2f}. Approve it?"
    )
    budget = await _ask(control, options, est.usd, f"{head}\n\n{summary}", log)
    if budget is None:
        control.refused = (
            "not submitted: the run's estimate is over approve_over_usd and it was not "
            "approved; rerun (and approve) to go on"
        )
        log.warning("not approved: nothing is paid; rows stay not_submitted")
        return
    # Approved: the budget given, else the estimate, caps what the run may pay.
    options.budget_usd = budget if options.budget_usd is None else min(budget, options.budget_usd)
    log.info("approved: budget $%.2f", options.budget_usd)


async def _ask(
    control: RunControl,
    options: BatchOptions,
    est_usd: float,
    description: str,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> float | None:
    """The approved budget, or None when refused or unanswered."""
    if control.approver is not None:  # the CLI, in this process
        return est_usd if control.approver(description) else None
    log.warning("waiting for approval (up to %d s): %s", options.approve_timeout_s, description)
    form = Approval.with_initial_data(description=description, approve=False)
    try:
        # sync_compatible: a coroutine in a flow's event loop (its stub says otherwise).
        pause: Any = pause_flow_run
        answer = await pause(
            wait_for_input=form, timeout=options.approve_timeout_s, poll_interval=2
        )
    except FlowPauseTimeout:
        log.warning("no answer within %d s", options.approve_timeout_s)
        return None
    if answer is None or not answer.approve:
        return None
    return answer.budget_usd if answer.budget_usd is not None else est_usd


async def approve_parent(
    options: BatchOptions, jobs: Sequence[Any], log: logging.Logger | logging.LoggerAdapter[Any]
) -> tuple[BatchOptions, dict[int, float] | None]:
    """The fan-out's one question for all its shards (`jobs` triaged by the parent).

    Returns the shards' options (they never ask again) and, when approved over the
    threshold, each manifest line's share of the approved budget (by its input's price),
    so every shard is capped at its share. Refused or unanswered: `RunAborted`, before
    any shard starts, so nothing is paid."""
    shard_options = options.model_copy(update={"approve_over_usd": None})
    est = estimate(options, jobs)
    if not needs_approval(options, est):
        return shard_options, None
    head = (
        f"This fan-out would pay about ${est.usd:.2f}, over approve_over_usd "
        f"${options.approve_over_usd:.2f}. Approve it?"
    )
    budget = await _ask(RunControl(), options, est.usd, f"{head}\n\n{describe(est, None)}", log)
    if budget is None:
        raise RunAborted("not approved (approve_over_usd): no shard started, nothing paid")
    if options.budget_usd is not None:
        budget = min(budget, options.budget_usd)
    scale = budget / est.usd if est.usd else 0.0
    shares: dict[int, float] = {}
    for job in jobs:
        if job.outcome is None and job.action is Action.SUBMIT:
            price = job_price(options, job)
            line = job.primary.row.line  # a bake-off's pairs share it: add them up
            shares[line] = shares.get(line, 0.0) + price * scale
    log.info("approved: budget $%.2f over the shards", budget)
    return shard_options, shares
