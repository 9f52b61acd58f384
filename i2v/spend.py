"""Money as the provider bills it: one home for what an input's record means for the bill.

Atlas reserves a video's price when the job is submitted, charges it when the video is
made and refunds it when the job fails (its own timeouts included). So an input is:

- `reserved`: submitted, not finished (in flight, or our deadline passed first);
- `charged`: the video was made (landed, or made and not landed yet);
- `refunded`: the provider said failed;
- `maybe`: the POST's answer was lost (`ambiguous`): a paid job may exist.

"Spent" is charged plus reserved; refunds are listed as refunds; `maybe` is listed
apart until a person resolves it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import BaseModel, Field

from i2v.state import NO_OUTPUT, PURGED, InputRecord, Phase

Billing = Literal["reserved", "charged", "refunded", "maybe"]

# Failures the provider did not refund: it made the job (no output listed) or forgot it.
_NOT_REFUNDED = frozenset({NO_OUTPUT, PURGED})


def billing_of(
    phase: Phase | str | None,
    prediction_id: str | None,
    cost_usd: float | None,
    error_code: str | None = None,
) -> Billing | None:
    """Where an input's price stands with the provider; None when nothing was paid."""
    if not cost_usd or phase is None:
        return None
    phase = Phase(phase)
    if phase in (Phase.AMBIGUOUS, Phase.SUBMITTING):
        return "maybe"
    if not prediction_id:
        return None
    if phase in (Phase.SUBMITTED, Phase.TIMED_OUT):
        return "reserved"
    if phase is Phase.FAILED and (error_code or "") not in _NOT_REFUNDED:
        return "refunded"
    return "charged"


def billing_facts(
    rec: InputRecord,
) -> tuple[Phase, str | None, float | None, str | None]:
    """A record's arguments for `billing_of`."""
    return rec.phase, rec.prediction_id, rec.cost_usd, rec.error_code


class Bill(BaseModel):
    """Dollars (and inputs) by billing state, e.g. for one run, one day or one model."""

    charged_usd: float = 0.0
    reserved_usd: float = 0.0
    refunded_usd: float = 0.0
    maybe_usd: float = 0.0
    charged: int = 0
    reserved: int = 0
    refunded: int = 0
    maybe: int = 0

    @property
    def spent_usd(self) -> float:
        """Videos made plus reservations still open."""
        return round(self.charged_usd + self.reserved_usd, 4)

    def add(self, billing: Billing | None, usd: float) -> None:
        if billing is None or not usd:
            return
        setattr(self, f"{billing}_usd", round(getattr(self, f"{billing}_usd") + usd, 4))
        setattr(self, billing, getattr(self, billing) + 1)


class Bills(BaseModel):
    """A DEST's bill in total, by UTC day (of submission) and by model."""

    total: Bill = Field(default_factory=Bill)
    by_day: dict[str, Bill] = Field(default_factory=dict)
    by_model: dict[str, Bill] = Field(default_factory=dict)
    cells: dict[str, Bill] = Field(default_factory=dict)  # "DAY MODEL": for reconciling

    def add(self, billing: Billing | None, usd: float, day: str | None, model: str) -> None:
        if billing is None:
            return
        self.total.add(billing, usd)
        if day:
            self.by_day.setdefault(day, Bill()).add(billing, usd)
            self.cells.setdefault(f"{day} {model}", Bill()).add(billing, usd)
        self.by_model.setdefault(model, Bill()).add(billing, usd)


def tally(items: Iterable[tuple[Billing | None, float]]) -> Bill:
    """One bill over (billing, dollars) pairs."""
    bill = Bill()
    for billing, usd in items:
        bill.add(billing, usd)
    return bill


def by_day_usd(bills: Bills) -> dict[str, float]:
    """Dollars spent (charged plus reserved) per day, for the plain listing."""
    days: dict[str, float] = defaultdict(float)
    for day, bill in bills.by_day.items():
        days[day] += bill.spent_usd
    return {d: round(v, 4) for d, v in sorted(days.items())}


def bill_lines(
    charged: tuple[float, int],
    reserved: tuple[float, int],
    refunded: tuple[float, int],
    money: Callable[[float], str],
) -> list[str]:
    """The bill's parts in words, e.g. ["2 charged $0.56", "1 refunded ... $0.28"]."""
    parts = [
        (charged, "charged"),
        (reserved, "reserved (in flight)"),
        (refunded, "refunded (failed at the provider)"),
    ]
    return [f"{n} {what} {money(usd)}" for (usd, n), what in parts if n]


def bill_summary(bill: Bill, money: Callable[[float], str]) -> str:
    """One bill in a line: spent, then its parts."""
    parts = bill_lines(
        (bill.charged_usd, bill.charged),
        (bill.reserved_usd, bill.reserved),
        (bill.refunded_usd, bill.refunded),
        money,
    )
    if bill.maybe:
        parts.append(f"{bill.maybe} ambiguous, may have been paid {money(bill.maybe_usd)}")
    return f"spent {money(bill.spent_usd)}" + (f" ({'; '.join(parts)})" if parts else "")


def money_note(charged: float, reserved: float, refunded: float, maybe: float) -> str:
    """A run's bill after its spent figure: " (charged $1.12; refunded $0.56)", or ""."""
    parts = [
        f"{what} ${usd:.2f}"
        for what, usd in (
            ("charged", charged),
            ("reserved in flight", reserved),
            ("refunded", refunded),
            ("may have been paid (ambiguous)", maybe),
        )
        if usd
    ]
    return f" ({'; '.join(parts)})" if parts else ""
