"""What in a DEST needs a person: its records and table rows grouped by the action they
need (most costly first), each group with its advice and exact command
(`i2v.status_advice`); with the counts and the money spent. Pure: `i2v.status` reads.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from i2v.qc import is_flagged
from i2v.results import RunSummary
from i2v.run import RowStatus
from i2v.spend import Bills, billing_facts, billing_of, by_day_usd
from i2v.state import NO_OUTPUT, InputRecord, Phase, claim_is_live
from i2v.status_advice import LANDING, Commands, advice
from i2v.status_model import KINDS, DestStatus, Group, GroupKind, Item, RunLine, Spend
from i2v.storage import Storage


def build_status(
    storage: Storage,
    records: Sequence[InputRecord],
    table: Any,
    runs: Sequence[RunSummary],
    *,
    runs_total: int | None = None,
    unreadable: Sequence[str] = (),
    claim_ttl_s: float = 120.0,
    now: datetime | None = None,
    summary_of: Callable[[str], RunSummary | None] | None = None,
) -> DestStatus:
    """The status from what was read (pure: `dest_status` does the reading)."""
    ids_of: dict[str, list[str]] = defaultdict(list)
    status = DestStatus(
        dest=storage.uri,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        runs_total=runs_total if runs_total is not None else len(runs),
        unreadable=list(unreadable),
    )
    if table is not None:
        status.table_uri = storage.key_uri("results.parquet")
        status.rows = len(table)
        counts = Counter(str(s) for s in table["status"].dropna())
        status.rows_by_status = {str(s): counts[str(s)] for s in RowStatus if counts[str(s)]}
        for row_id, identity in zip(table["id"], table["input_identity"], strict=True):
            if isinstance(identity, str):
                ids_of[identity].append(str(row_id))
    status.runs = [_run_line(s) for s in runs]
    commands = Commands(storage.uri, runs, summary_of)

    groups: dict[tuple[GroupKind, str], Group] = {}

    def add(kind: GroupKind, key: str, item: Item, rows: int | None = None) -> None:
        group = groups.get((kind, key))
        if group is None:
            title, todo = advice(kind, key)
            group = groups[(kind, key)] = Group(kind=kind, key=key, title=title, what_to_do=todo)
        group.items.append(item)
        group.rows += rows if rows is not None else max(1, len(item.ids))

    by_input: Counter[str] = Counter()
    spend = status.spent
    bills = Bills()
    ambiguous_runs: list[str | None] = []
    # Identity breaks ties so the index and a full read list a group in one order.
    for rec in sorted(
        records, key=lambda r: (r.submit_started_at or r.updated_at or "", r.identity)
    ):
        ids = ids_of.get(rec.identity, [])
        kind = _input_status(rec, claim_ttl_s, now)
        by_input[kind] += 1
        bill = "maybe" if kind == "ambiguous" else billing_of(*billing_facts(rec))
        when = rec.submitted_at or rec.submit_started_at
        bills.add(bill, rec.cost_usd or 0.0, when[:10] if when else None, rec.model)
        if bill in ("charged", "reserved") and when:
            spend.first_at = min(spend.first_at or when, when)
            spend.last_at = max(spend.last_at or when, when)
        base = Item(ids=ids, identity=rec.identity, prediction_id=rec.prediction_id)
        if kind == "ambiguous":
            ambiguous_runs.append(rec.owner_run)
            add("ambiguous", "", base.model_copy(update={"at": rec.submit_started_at}))
        elif kind == "timed_out":
            add("timed_out", "", base.model_copy(update={"at": rec.submitted_at}))
        elif kind == "failed":
            key = LANDING if rec.phase is Phase.SUCCEEDED else (rec.error_code or "")
            add("failed", key, base.model_copy(update={"error": rec.error}))
        elif kind == "landed" and is_flagged(rec.qc):
            uri = storage.key_uri(rec.video_key) if rec.video_key else None
            add("qc", "", base.model_copy(update={"qc": rec.qc, "video_uri": uri}))
    status.inputs = len(records)
    status.inputs_by_status = dict(by_input.most_common())
    fill_spend(spend, bills)
    spend.simulated = bool(runs) and all(r.simulated for r in runs if not r.dry_run)

    # Rows never paid have no record: the table says why.
    if table is not None:
        known = {r.identity for r in records}
        for row in table.itertuples(index=False):
            row_status, identity = str(row.status), row.input_identity
            if isinstance(identity, str) and identity in known:
                continue
            error = row.error if isinstance(row.error, str) else None  # NA: no error
            item = Item(ids=[str(row.id)], identity=identity if isinstance(identity, str) else None)
            item.error = error
            if row_status == RowStatus.NOT_SUBMITTED:
                add("not_submitted", _not_submitted_reason(error), item, 1)
            elif row_status == RowStatus.REJECTED:
                add("rejected", "", item, 1)
            elif row_status in _TABLE_ONLY:
                add(_TABLE_ONLY[row_status], "", item, 1)

    for (kind, key), group in groups.items():
        if kind == "ambiguous":
            group.command = commands.resubmit(ambiguous_runs)
        elif (kind == "timed_out" or (kind == "failed" and key in (NO_OUTPUT, LANDING))) or (
            kind == "not_submitted" and key not in ("another_run",)
        ):
            group.command = commands.rerun(new_budget=key == "budget")
    status.needs_person = sorted(
        groups.values(), key=lambda g: (KINDS.index(g.kind), -g.rows, g.key)
    )
    return status


# Rows whose input has no record (an error before its first write): the table tells.
_TABLE_ONLY: dict[str, GroupKind] = {
    RowStatus.FAILED: "failed",
    RowStatus.TIMED_OUT: "timed_out",
    RowStatus.AMBIGUOUS: "ambiguous",
}


def _input_status(rec: InputRecord, claim_ttl_s: float, now: datetime | None) -> str:
    phase = rec.phase
    if phase is Phase.LANDED:
        return "landed"
    if phase in (Phase.FAILED, Phase.SUCCEEDED):
        return "failed"
    if phase in (Phase.SUBMITTED, Phase.TIMED_OUT):
        return "timed_out" if rec.prediction_id else "ambiguous"
    if phase is Phase.SUBMITTING and claim_is_live(rec, ttl_s=claim_ttl_s, now=now):
        return "in_flight"
    return "ambiguous"


def _run_line(s: RunSummary) -> RunLine:
    return RunLine(
        run_id=s.run_id,
        source=s.source,
        rows=s.rows,
        counts={k: v for k, v in s.counts.items() if v},
        spent_usd=s.spent_usd,
        elapsed_s=s.elapsed_s,
        simulated=s.simulated,
        dry_run=s.dry_run,
        stop_reason=s.stop_reason,
        qc_flagged=len(s.qc_flagged),
    )


_NOT_SUBMITTED_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("budget", ("budget",)),
    ("balance", ("balance", "top up", "quota")),
    ("stopped", ("stopped by", "stopped while", "cancellation")),
    ("rate_limited", ("rate limited",)),
    ("another_run", ("another run",)),
    ("key", ("api key", "user-agent", "block", "region")),
    ("model", ("model",)),
    ("not_processed", ("not processed",)),
)


def _not_submitted_reason(error: str | None) -> str:
    text = (error or "").lower()
    for reason, words in _NOT_SUBMITTED_REASONS:
        if any(w in text for w in words):
            return reason
    return "other"


def fill_spend(spend: Spend, bills: Bills) -> None:
    """The status's money from the records' bill (`i2v.spend`)."""
    t = bills.total
    spend.usd, spend.inputs = t.spent_usd, t.charged + t.reserved
    spend.charged_usd, spend.reserved_usd = t.charged_usd, t.reserved_usd
    spend.reserved_inputs = t.reserved
    spend.refunded_usd, spend.refunded_inputs = t.refunded_usd, t.refunded
    spend.maybe_usd, spend.maybe_inputs = t.maybe_usd, t.maybe
    spend.by_day = by_day_usd(bills)
    spend.days = dict(sorted(bills.by_day.items()))
    spend.by_model = dict(sorted(bills.by_model.items()))
    spend.cells = dict(sorted(bills.cells.items()))
