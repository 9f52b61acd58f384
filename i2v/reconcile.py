"""`i2v status DEST --reconcile`: the provider's daily usage and costs per model beside
this DEST's own records, and where they differ.

The provider's figures cover the whole account (every DEST, every tool using the key),
so "the provider counts more" is expected on a shared key; "the provider counts fewer"
is worth a look. On a day with ambiguous submissions, the provider's job count tells
whether those jobs exist.
"""

from __future__ import annotations

from datetime import date, timedelta

from pydantic import BaseModel

from i2v.account import COSTS_PATH, USAGE_PATH, DayUsage, read_usage
from i2v.client import AtlasClient
from i2v.errors import AtlasError
from i2v.spend import Bill


class DayCheck(BaseModel):
    """One day and model: our counts, the provider's, and what that means."""

    day: str
    model: str
    ours_jobs: int  # submissions with a prediction id (+ ambiguous ones, in ours_maybe)
    ours_maybe: int
    ours_charged_usd: float
    theirs_jobs: int | None = None
    theirs_usd: float | None = None
    matches: bool = False
    says: str = ""


class Reconciliation(BaseModel):
    days: list[DayCheck]
    note: str = ""  # why the provider's figures are missing, when they are

    @property
    def differing(self) -> list[DayCheck]:
        return [d for d in self.days if not d.matches]


def judge(
    day: str, model: str, ours: Bill, usage: DayUsage | None, cost: DayUsage | None
) -> DayCheck:
    """Our bill for one day and model against the provider's report of it."""
    known = ours.charged + ours.reserved + ours.refunded
    check = DayCheck(
        day=day,
        model=model,
        ours_jobs=known,
        ours_maybe=ours.maybe,
        ours_charged_usd=ours.charged_usd,
        theirs_jobs=usage.jobs if usage else None,
        theirs_usd=cost.cost_usd if cost else None,
    )
    theirs = check.theirs_jobs
    said: list[str] = []
    if theirs is None:
        said.append("the provider reports no jobs of this model that day")
        theirs = 0
    jobs_ok = theirs == known
    if ours.maybe:
        extra = theirs - known
        if extra <= 0:
            said.append(
                f"the provider counts {theirs} jobs, our {known} known ones: the "
                f"{ours.maybe} ambiguous submissions made no job; resubmitting them "
                "(--resubmit-ambiguous) pays once"
            )
        elif extra >= ours.maybe:
            said.append(
                f"the provider counts {theirs} jobs, {extra} more than our {known} known "
                f"ones: the {ours.maybe} ambiguous submissions likely exist as paid jobs "
                "(unless other work used the key that day); do not resubmit them"
            )
        else:
            said.append(
                f"the provider counts {extra} jobs beyond our {known} known ones: "
                f"{extra} of the {ours.maybe} ambiguous submissions may exist"
            )
    elif theirs > known:
        said.append(
            f"the provider counts {theirs} jobs, we hold {known}: other work on this "
            "account (another DEST or tool) or a record lost"
        )
    elif theirs < known:
        said.append(f"the provider counts {theirs} jobs, fewer than our {known}: look closer")
    usd_ok = check.theirs_usd is None or abs(check.theirs_usd - ours.charged_usd) < 0.005
    if not usd_ok:
        said.append(
            f"the provider charged ${check.theirs_usd:.2f}, our records ${ours.charged_usd:.2f}"
        )
    check.matches = jobs_ok and usd_ok and not ours.maybe
    check.says = "; ".join(said) or "matches"
    return check


async def reconcile(client: AtlasClient, cells: dict[str, Bill]) -> Reconciliation:
    """Read the provider's reports for the days and models `cells` cover, and compare."""
    if not cells:
        return Reconciliation(days=[], note="no paid submissions in this DEST's records")
    keys = [tuple(k.split(" ", 1)) for k in cells]
    days = sorted({d for d, _ in keys})
    models = sorted({m for _, m in keys})
    end = (date.fromisoformat(days[-1]) + timedelta(days=1)).isoformat()
    try:
        usage = await read_usage(client, USAGE_PATH, days[0], end, models)
    except AtlasError as exc:
        note = f"the provider's usage is not readable ({exc}); nothing to compare"
        return Reconciliation(days=[], note=note)
    try:
        costs = await read_usage(client, COSTS_PATH, days[0], end, models)
    except AtlasError:
        costs = []
    by_usage = {(u.day, u.model): u for u in usage}
    by_cost = {(c.day, c.model): c for c in costs}
    checks = [
        judge(
            day,
            model,
            cells[f"{day} {model}"],
            by_usage.get((day, model)),
            by_cost.get((day, model)),
        )
        for day, model in sorted(keys)
    ]
    return Reconciliation(days=checks)


def render_reconciliation(rec: Reconciliation) -> str:
    """The comparison as `i2v status --reconcile` prints it."""
    lines = [
        "reconcile with the provider (its figures cover the whole account, not only this DEST):"
    ]
    if rec.note:
        lines.append(f"  {rec.note}")
    for d in rec.days:
        mark = "matches" if d.matches else "DIFFERS"
        theirs = "?" if d.theirs_jobs is None else str(d.theirs_jobs)
        usd = "" if d.theirs_usd is None else f", provider ${d.theirs_usd:.2f}"
        lines.append(
            f"  {d.day} {d.model}: {mark}: ours {d.ours_jobs} jobs"
            + (f" + {d.ours_maybe} ambiguous" if d.ours_maybe else "")
            + f" (${d.ours_charged_usd:.2f} charged), provider {theirs} jobs{usd}"
        )
        if not d.matches:
            lines.append(f"    {d.says}")
    return "\n".join(lines)
