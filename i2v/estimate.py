"""What a run's new inputs would cost, before anything is paid: for the balance note
(`i2v.account`) and approval (`flows/approval.py`)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel, Field

from i2v.config import BatchOptions
from i2v.row_plans import job_price
from i2v.run import Job
from i2v.state import Action


class Estimate(BaseModel):
    """The submissions a run would pay for: rows, new inputs, dollars per model."""

    rows: int = 0
    new_inputs: int = 0
    new_rows: int = 0
    usd: float = 0.0
    by_model: dict[str, float] = Field(default_factory=dict)
    price_usd: float = 0.0  # the dearest single video, for "covers N of M"

    def covered_by(self, available_usd: float) -> int:
        """How many of the new videos `available_usd` pays for (dearest first: a floor)."""
        if self.price_usd <= 0:
            return self.new_inputs
        return min(self.new_inputs, math.floor(available_usd / self.price_usd + 1e-9))


def estimate(
    options: BatchOptions, jobs: Iterable[Job], *, catalog_usd: float | None = None
) -> Estimate:
    """The cost of every input this run would submit (one price rule: `job_price`)."""
    out = Estimate()
    for job in jobs:
        out.rows += len(job.rows)
        if job.outcome is not None or job.action is not Action.SUBMIT:
            continue
        model = job.row_model.model if job.row_model else str(options.model)
        price = job_price(options, job, catalog_usd)
        out.new_inputs += 1
        out.new_rows += len(job.rows)
        out.usd = round(out.usd + price, 4)
        out.by_model[model] = round(out.by_model.get(model, 0.0) + price, 4)
        out.price_usd = max(out.price_usd, price)
    return out


def describe(est: Estimate, available_usd: float | None) -> str:
    """The estimate in a few lines of markdown, e.g. for an approval form."""
    lines = [
        f"- rows: {est.rows}; new inputs to pay for: {est.new_inputs} ({est.new_rows} rows)",
        f"- estimate: ${est.usd:.2f}",
        *[f"  - {model}: ${usd:.2f}" for model, usd in est.by_model.items()],
    ]
    if available_usd is not None:
        lines.append(
            f"- balance: ${available_usd:.2f}, covers {est.covered_by(available_usd)} of "
            f"the {est.new_inputs} new videos"
        )
    else:
        lines.append("- balance: not known (the account endpoint did not answer)")
    return "\n".join(lines)
