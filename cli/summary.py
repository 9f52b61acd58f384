"""The table and lines `i2v run` prints when the run is over."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from cli.common import out


def print_summary(summary: Any, dest: str) -> None:
    table = Table(title="dry run" if summary.dry_run else "rows")
    table.add_column("status")
    table.add_column("rows", justify="right")
    for key, value in summary.counts.items():
        if value:
            table.add_row(key, str(value))
    out.print(table)
    if summary.dry_run:
        out.print(
            f"{summary.rows} rows, {summary.inputs} distinct inputs; estimated cost "
            f"${summary.estimated_usd:.2f}. Nothing was submitted."
        )
        for line in getattr(summary, "by_model", []):
            out.print(f"  {line}")
        return
    out.print(
        f"run {summary.run_id}: spent ${summary.spent_usd:.2f}"
        f"{' (simulated)' if summary.simulated else ''}{getattr(summary, 'bill_note', '')} on "
        f"{summary.submissions} "
        f"submissions; {summary.polls} polls; {summary.elapsed_s:.1f} s"
    )
    if summary.stop_message:
        out.print(f"[yellow]stopped:[/yellow] {summary.stop_message}")
    if summary.stopped_by:
        out.print(
            f"[yellow]stopped by {summary.stopped_by}:[/yellow] every prediction id is "
            "recorded; rerun the same command to go on"
        )
    for message, n in summary.top_errors[:3]:
        out.print(f"  {n} x {message}")
    flagged = getattr(summary, "qc_flagged", None) or []
    if flagged:
        out.print(
            f"[yellow]quality check:[/yellow] {len(flagged)} landed video(s) flagged; they "
            "stay landed and paid (the table's qc column):",
            highlight=False,
        )
        for row_id, reasons in flagged[:10]:
            out.print(f"  {row_id}: {reasons}", highlight=False)
        if len(flagged) > 10:
            out.print(f"  ... and {len(flagged) - 10} more")
    sep = "" if dest.endswith("/") else "/"
    out.print(f"videos: {dest}{sep}videos/   table: {summary.results_uri}")
