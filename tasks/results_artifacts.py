"""What the Prefect UI shows of a run's results once it ends: the table artifact
(key `i2v-results`), the markdown summary, and a link artifact to the run's table.

The table's videos and the link are presigned URLs for an S3 DEST and paths for a
folder DEST (`tasks.artifacts.web_link`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_table_artifact,
)

from i2v.results import RunSummary, qc_flags, qc_section
from i2v.run import RowStatus
from i2v.storage import Storage
from tasks.artifacts import link_or_path, web_link

log = logging.getLogger("i2v.artifacts")

RESULTS_LINK_KEY = "i2v-results-table"
TABLE_ARTIFACT_COLUMNS = ["id", "status", "error", "error_code", "prediction_id", "video_uri"]
# Rows in the table artifact: Prefect keeps it in its database and sends it whole to each
# browser that opens the run; the results table in DEST has every row.
TABLE_ARTIFACT_ROWS = 1000


async def publish_artifacts(
    frame: Any,
    summary: RunSummary,
    *,
    title: str,
    facts: Sequence[str] = (),
    sections: Sequence[str] = (),
    sheet_md: str = "",
    summary_key: str = "i2v-summary",
    storage: Storage | None = None,
    link_hours: float = 24.0,
) -> None:
    """The run's table artifact (key `i2v-results`), its markdown summary and, given
    DEST's `storage`, a link artifact to the run's table (`publish_results_link`).

    The table's `video_uri` cells are links a browser opens for an S3 DEST (presigned,
    valid `link_hours`); a folder DEST's are paths (no URL reaches them from the UI).
    """
    cols = TABLE_ARTIFACT_COLUMNS
    shown = artifact_rows(frame)
    table = shown[cols].astype(object).where(shown[cols].notna(), "")
    if storage is not None:
        table["video_uri"] = await asyncio.to_thread(
            video_links, storage, list(table["video_uri"]), link_hours
        )
        await publish_results_link(storage, summary.run_id, link_hours=link_hours)
    await acreate_table_artifact(
        key="i2v-results",
        table=[{str(k): v for k, v in row.items()} for row in table.to_dict(orient="records")],
        description=f"Results of {title} into {summary.dest}"
        + (
            ""
            if len(shown) == len(frame)
            else f" ({len(shown)} of {len(frame)} rows: every row that did not land first; "
            f"all of them in {summary.results_uri or 'DEST/results.csv'})"
        ),
    )
    spend = f"${summary.spent_usd:.2f}" + (" (simulated)" if summary.simulated else "")
    spend += summary.bill_note
    lines = [
        f"# i2v {title}",
        "",
        f"- source: `{summary.source}`",
        f"- dest: `{summary.dest}`",
        f"- rows: {summary.rows} ({summary.inputs} distinct inputs)",
        *facts,
        f"- spent this run: {spend} over {summary.submissions} submissions",
        f"- time: {summary.elapsed_s:.1f} s, polls: {summary.polls}",
        "",
        "| status | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary.counts.items() if v],
        *sections,
    ]
    if summary.stop_message:
        lines += ["", f"**Stopped:** {summary.stop_message}"]
    lines += qc_section(summary.qc_flagged or qc_flags(frame))
    lines += summary_tail(summary.top_errors, summary.results_uri, sheet_md)
    await acreate_markdown_artifact(
        key=summary_key, markdown="\n".join(lines), description=f"i2v {title}"
    )


def artifact_rows(frame: Any, limit: int = TABLE_ARTIFACT_ROWS) -> Any:
    """At most `limit` rows of the table, in table order: the rows that did not land
    (those need a person) before the landed ones."""
    if len(frame) <= limit:
        return frame
    # Plain numpy booleans: the table's string columns compare to pyarrow booleans,
    # which have no cumsum.
    landed = (frame["status"] == str(RowStatus.LANDED)).to_numpy(dtype=bool, na_value=False)
    room = max(0, limit - int((~landed).sum()))
    return frame[~landed | (landed.cumsum() <= room)].head(limit)


async def publish_results_link(storage: Storage, run_id: str, *, link_hours: float = 24.0) -> None:
    """A link artifact (key RESULTS_LINK_KEY) to this run's results table,
    DEST/runs/RUN_ID/results.csv: presigned on S3, the file's path for a folder DEST."""
    key = f"runs/{run_id}/results.csv"
    link = await asyncio.to_thread(link_or_path, storage, key, link_hours)
    where = storage.key_uri(key)
    try:
        await acreate_link_artifact(
            link=link,
            link_text=f"results table of run {run_id} (CSV)"
            + ("" if link.startswith("http") else f": {where}"),
            key=RESULTS_LINK_KEY,
            description=f"This run's table, one row per manifest row: {where}",
        )
    except Exception as exc:  # a view, never a reason for the run to fail
        log.debug("results link artifact not created: %s", exc)


def video_links(storage: Storage, video_uris: Sequence[str | None], hours: float) -> list[str]:
    """For the table artifact: each landed video as a link a browser opens (presigned,
    S3), or its path (folder DEST); "" where there is no video."""
    base = storage.key_uri("")
    out = []
    for uri in video_uris:
        if not uri:
            out.append("")
            continue
        key = uri[len(base) :].lstrip("/") if uri.startswith(base) else None
        out.append((web_link(storage, key, hours) if key else None) or uri)
    return out


def summary_tail(
    top_errors: Sequence[tuple[str, int]], results_uri: str | None, sheet_md: str
) -> list[str]:
    """The closing markdown lines of a run summary: common errors, table, contact sheet."""
    lines: list[str] = []
    if top_errors:
        lines += ["", "## Most common errors", "", "| error | rows |", "|---|---|"]
        lines += [f"| {e.replace('|', '/')} | {n} |" for e, n in top_errors]
    if results_uri:
        lines += ["", f"Results table: `{results_uri}`"]
    if sheet_md:
        lines += ["", sheet_md]
    return lines
