"""`i2v status` shown: plain text for the terminal (`render_text`) and markdown for the
i2v-status flow's artifact (`render_markdown`)."""

from __future__ import annotations

from collections.abc import Callable

from i2v.spend import bill_lines, bill_summary
from i2v.status_model import DestStatus, Group, Item, Spend

SHOWN_PER_GROUP = 10  # items per group in the text and markdown (the JSON has all)


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _money(usd: float, simulated: bool) -> str:
    return f"${usd:.2f}" + (" (simulated)" if simulated else "")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none"


def _when(stamp: str | None) -> str:
    return stamp.replace("T", " ")[:19] + " UTC" if stamp else "?"


def _item_text(group: Group, item: Item) -> str:
    name = ", ".join(item.ids) if item.ids else f"input {(item.identity or '?')[:12]}"
    if group.kind == "ambiguous":
        which = f" (input {(item.identity or '?')[:12]})" if item.ids else ""
        return f"{name}: submit began {_when(item.at)}{which}"
    if group.kind == "timed_out":
        return f"{name}: prediction {item.prediction_id}"
    if group.kind == "qc":
        return f"{name}: {item.qc}  {item.video_uri or ''}".rstrip()
    if group.kind == "failed" and item.prediction_id:
        detail = f": {item.error[:120]}" if item.error and not group.key else ""
        return f"{name}: prediction {item.prediction_id}{detail}"
    return f"{name}: {item.error[:160]}" if item.error else name


def render_text(status: DestStatus) -> str:
    """The status as `i2v status` prints it: plain lines, at most 10 items a group."""
    spend = status.spent
    lines = [f"DEST {status.dest}  (read in {status.read_s:.1f} s; no API call)"]
    if status.rows is None:
        lines.append("rows: no results table yet")
    else:
        lines.append(f"rows: {status.rows} in the current table: {_counts(status.rows_by_status)}")
    lines.append(f"inputs: {status.inputs} with a record: {_counts(status.inputs_by_status)}")
    spent = f"spent: {_money(spend.usd, spend.simulated)} on {spend.inputs} paid inputs"
    if spend.first_at:
        spent += f", {_when(spend.first_at)} to {_when(spend.last_at)}"
    lines.append(spent)
    if spend.maybe_inputs:
        lines.append(
            f"  and up to {_money(spend.maybe_usd, spend.simulated)} more: "
            f"{spend.maybe_inputs} ambiguous submissions may have been paid"
        )
    lines += spend_detail(spend, lambda usd: _money(usd, spend.simulated), "  ")
    if status.runs:
        shown = len(status.runs)
        lines.append(f"last runs ({shown} of {status.runs_total}, newest first):")
        for run in status.runs:
            extras = [
                f"{_money(run.spent_usd, run.simulated)}, {run.elapsed_s:.0f} s",
                *(["dry run"] if run.dry_run else []),
                *([f"stopped: {run.stop_reason}"] if run.stop_reason else []),
                *([f"{run.qc_flagged} flagged by QC"] if run.qc_flagged else []),
            ]
            lines.append(
                f"  {run.run_id}  {run.rows} rows: {_counts(run.counts)}; " + "; ".join(extras)
            )
            lines.append(f"      source {run.source}")
    if status.unreadable:
        lines.append(f"unreadable records ({len(status.unreadable)}): inspect or remove them")
        lines += [f"  {uri}" for uri in status.unreadable[:SHOWN_PER_GROUP]]
    if not status.needs_person:
        lines.append("nothing needs a person.")
        return "\n".join(lines)
    lines.append(f"needs a person ({_rows(status.needs_person_rows)}):")
    for group in status.needs_person:
        lines.append(f"  {group.title} ({_rows(group.rows)})")
        lines.append(f"    what to do: {group.what_to_do}")
        if group.command:
            lines.append(f"    command: {group.command}")
        for item in group.items[:SHOWN_PER_GROUP]:
            lines.append(f"    - {_item_text(group, item)}")
        if len(group.items) > SHOWN_PER_GROUP:
            more = len(group.items) - SHOWN_PER_GROUP
            lines.append(f"    ... and {more} more (--json lists all)")
    return "\n".join(lines)


def render_markdown(status: DestStatus) -> str:
    """The status as the i2v-status flow's markdown artifact."""
    spend = status.spent

    def cell(text: str) -> str:
        return text.replace("|", "/").replace("\n", " ")

    lines = [
        f"# i2v status of `{status.dest}`",
        "",
        f"- rows: {status.rows if status.rows is not None else 'no results table yet'}"
        + (f" ({_counts(status.rows_by_status)})" if status.rows else ""),
        f"- inputs with a record: {status.inputs} ({_counts(status.inputs_by_status)})",
        f"- spent: {_money(spend.usd, spend.simulated)} on {spend.inputs} paid inputs"
        + (f", {_when(spend.first_at)} to {_when(spend.last_at)}" if spend.first_at else ""),
    ]
    if spend.maybe_inputs:
        lines.append(
            f"- up to {_money(spend.maybe_usd, spend.simulated)} more on "
            f"{spend.maybe_inputs} ambiguous submissions"
        )
    lines += spend_detail(spend, lambda usd: _money(usd, spend.simulated), "- ")
    lines.append(
        f"- needs a person: {_rows(status.needs_person_rows)}"
        if status.needs_person
        else "- **nothing needs a person**"
    )
    if status.runs:
        lines += ["", "## Last runs", "", "| run | rows | statuses | spent | time |"]
        lines.append("|---|---|---|---|---|")
        for run in status.runs:
            lines.append(
                f"| `{run.run_id}` | {run.rows} | {cell(_counts(run.counts))} | "
                f"{_money(run.spent_usd, run.simulated)} | {run.elapsed_s:.0f} s |"
            )
    for group in status.needs_person:
        lines += ["", f"## {cell(group.title)} ({_rows(group.rows)})", "", group.what_to_do]
        if group.command:
            lines += ["", "```", group.command, "```"]
        lines += [""]
        lines += [f"- {cell(_item_text(group, i))}" for i in group.items[:50]]
        if len(group.items) > 50:
            lines.append(f"- … and {len(group.items) - 50} more")
    if status.unreadable:
        lines += ["", "## Unreadable records", ""]
        lines += [f"- `{u}`" for u in status.unreadable[:50]]
    return "\n".join(lines)


def spend_detail(spend: Spend, money: Callable[[float], str], lead: str) -> list[str]:
    """The bill's parts, refunds, and the bill by day and by model (`i2v.spend`)."""
    parts = bill_lines(
        (spend.charged_usd, spend.inputs - spend.reserved_inputs),
        (spend.reserved_usd, spend.reserved_inputs),
        (spend.refunded_usd, spend.refunded_inputs),
        money,
    )
    lines = [f"{lead}of which: " + "; ".join(parts)] if parts else []
    for title, bills in (("by day", spend.days), ("by model", spend.by_model)):
        if bills:
            lines.append(f"{lead}{title}:")
            lines += [f"{lead}  {k}: {bill_summary(b, money)}" for k, b in bills.items()]
    return lines
