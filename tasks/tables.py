"""Tables step: the results table in DEST and the run's artifacts in the Prefect UI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, cast

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from i2v import pipeline
from i2v.errors import StorageError
from i2v.results import (
    RunSummary,
    result_rows,
    status_counts,
    top_errors,
    write_tables,
)
from tasks._retry import retry_on
from tasks.artifacts import publish_contact_sheet, summary_tail

TABLE_ARTIFACT_COLUMNS = ["id", "status", "error", "error_code", "prediction_id", "video_uri"]


@task(
    name="results-table",
    retries=2,
    retry_delay_seconds=[2, 8],
    retry_condition_fn=retry_on(StorageError, OSError),
    cache_policy=NO_CACHE,
)
async def publish_results(
    ctx: pipeline.RunContext,
    plans: Sequence[pipeline.RowPlan],
    jobs: Sequence[pipeline.Job],
    *,
    source: str,
    extra_columns: Sequence[str],
    publish: bool = True,
) -> RunSummary:
    """Write DEST/runs/<run-id>/results.* and (unless a shard) DEST/results.*, then
    the UI artifacts.

    Shards (`publish=False`) leave DEST/results.* to their fan-out parent, which merges
    the shards' run tables into the one current table.
    """
    frame = result_rows(plans, jobs, model=ctx.model, dest=ctx.dest, extra_columns=extra_columns)
    summary = RunSummary(
        run_id=ctx.run_id,
        source=source,
        dest=ctx.dest.uri,
        rows=len(frame),
        inputs=len(jobs),
        counts=status_counts(frame),
        spent_usd=round(ctx.budget.spent_usd, 4),
        submissions=ctx.stats.submissions,
        uploads=ctx.stats.uploads,
        polls=ctx.stats.polls,
        downloads=ctx.stats.downloads,
        elapsed_s=round(time.monotonic() - ctx.stats.started_monotonic, 3),
        stop_reason=str(ctx.stop_reason) if ctx.stop_reason else None,
        stop_message=ctx.stop_message,
        top_errors=top_errors(frame),
    )
    uris = await asyncio.to_thread(
        write_tables, ctx.dest, frame, ctx.run_id, summary, publish=publish
    )
    summary.results_uri = uris["parquet"]
    sheet = ""
    if publish:  # a fan-out parent makes one sheet for all its shards
        landed = frame.loc[frame["status"] == str(pipeline.RowStatus.LANDED), "id"]
        sheet = await publish_contact_sheet(
            ctx.dest, [f"videos/{i}.mp4" for i in landed], ctx.run_id
        )
    await _artifacts(frame, summary, sheet)
    return summary


async def _artifacts(frame: object, summary: RunSummary, sheet: str = "") -> None:
    import pandas as pd

    assert isinstance(frame, pd.DataFrame)
    table = (
        frame[TABLE_ARTIFACT_COLUMNS]
        .astype(object)
        .where(frame[TABLE_ARTIFACT_COLUMNS].notna(), "")
    )
    await create_table_artifact(  # type: ignore[misc]
        key="i2v-results",
        table=cast(list[dict[str, Any]], table.to_dict(orient="records")),
        description=f"Results of run {summary.run_id} into {summary.dest}",
    )
    lines = [
        f"# i2v run `{summary.run_id}`",
        "",
        f"- source: `{summary.source}`",
        f"- dest: `{summary.dest}`",
        f"- rows: {summary.rows} ({summary.inputs} distinct inputs)",
        f"- spent this run: ${summary.spent_usd:.2f} over {summary.submissions} submissions",
        f"- time: {summary.elapsed_s:.1f} s, polls: {summary.polls}",
        "",
        "| status | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary.counts.items() if v],
    ]
    if summary.stop_message:
        lines += ["", f"**Stopped:** {summary.stop_message}"]
    lines += summary_tail(summary.top_errors, summary.results_uri, sheet)
    await create_markdown_artifact(  # type: ignore[misc]
        key="i2v-summary", markdown="\n".join(lines), description="i2v run summary"
    )
