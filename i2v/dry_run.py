"""The dry run's counts: rows by what a run would do next, and dollars, in all and per
model (a bake-off or a manifest with a `model` column prices each model its own way)."""

from __future__ import annotations

from collections.abc import Sequence

from i2v.bakeoff import per_model_totals
from i2v.row_plans import job_price, model_of
from i2v.run import Job, RowPlan, RunContext
from i2v.state import Action


def dry_run_counts(
    ctx: RunContext, plans: Sequence[RowPlan], jobs: Sequence[Job]
) -> tuple[dict[str, int], float]:
    """Rows by what a run would do next, and what the submissions would cost."""
    counts: dict[str, int] = {"rejected": sum(1 for p in plans if p.error)}
    estimate = 0.0
    for job in jobs:
        action = job.action
        counts[str(action)] = counts.get(str(action), 0) + len(job.rows)
        if action is Action.SUBMIT:
            estimate += job_price(ctx.options, job, ctx.catalog_price_usd)
    return counts, round(estimate, 4)


def per_model_lines(ctx: RunContext, plans: Sequence[RowPlan], jobs: Sequence[Job]) -> list[str]:
    """`model: N rows, M new inputs, $X` for each model the rows name (refused rows too)."""
    config_model = ctx.model
    planned: list[tuple[str, bool, float | None]] = []
    for plan in plans:
        if plan.error:
            planned.append((model_of(plan, config_model, ctx.options.catalog_model), False, None))
    for job in jobs:
        new = job.outcome is None and job.action is Action.SUBMIT
        price = job_price(ctx.options, job, ctx.catalog_price_usd)
        model = job.row_model.model if job.row_model else config_model
        planned.append((model, new, price))
        planned += [(model, False, None)] * (len(job.rows) - 1)
    totals = per_model_totals(planned)
    return [
        f"{model}: {rows} rows, {fresh} new inputs, ${usd:.2f}"
        for model, (rows, fresh, usd) in sorted(totals.items())
    ]
