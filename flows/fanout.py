"""The fan-out flow: one manifest, many batch flow runs, one results table.

    read rows -> check pictures -> shards (duplicates never split) -> run_deployment per
    shard (any worker on the pool, on any machine, takes it) -> wait -> merge the shards'
    DEST/runs/<shard-run-id>/results.parquet into DEST/results.{parquet,csv}

Shards share DEST: each input's durable record under DEST/_state/ belongs to exactly one
shard (rows with the same input identity always go to the same shard), so shards never
race for an input and a rerun of the fan-out pays nothing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pandas as pd
from prefect import flow
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Crashed
from pydantic import BaseModel, Field

from flows.batch import dry_run_summary, new_run_id
from flows.common import opaque, s3_client_for
from i2v.config import BatchOptions
from i2v.errors import ConfigError, I2VError
from i2v.pipeline import RowPlan, RowStatus, RunContext, group_jobs, load_records
from i2v.results import (
    COLUMNS,
    DTYPES,
    RunSummary,
    result_rows,
    status_counts,
    top_errors,
    write_tables,
)
from i2v.storage import Storage, open_storage
from tasks.artifacts import ProgressReporter, publish_contact_sheet, summary_tail
from tasks.rows import check_pictures, read_rows
from tasks.tables import TABLE_ARTIFACT_COLUMNS

POLL_S = 2.0  # how often the parent reads its shards' states
NO_WORKER_WARNING_S = 120.0  # shards still waiting after this: say no worker takes them
FANOUT_PROGRESS_KEY = "i2v-fanout-progress"
_STATS = ("submissions", "uploads", "polls", "downloads")


class ShardsFailed(I2VError):
    """Some shards did not complete; the merged table says which rows and why."""


class ShardReport(BaseModel):
    """One shard's flow run and what it did."""

    index: int
    rows: int
    first_line: int | None = None
    last_line: int | None = None
    flow_run_id: str
    flow_run_name: str
    state: str = "Unknown"
    message: str | None = None
    run_id: str | None = None  # the shard's i2v run id (its DEST/runs/<run-id>/ folder)
    counts: dict[str, int] = Field(default_factory=dict)
    spent_usd: float = 0.0
    stats: dict[str, int] = Field(default_factory=dict)  # submissions, uploads, polls, ...


class FanoutSummary(RunSummary):
    """The merged run: totals over all shards, plus each shard's report."""

    shards: list[ShardReport] = Field(default_factory=list)


def plan_shards(plans: Sequence[RowPlan], shard_size: int) -> list[list[int]]:
    """Manifest line numbers per shard, in manifest order, at most `shard_size` rows each.

    Rows with the same input identity form one group that is never split (two shards
    holding the same input could both pay for it); a group bigger than `shard_size`
    becomes a shard of its own. Rows rejected by the checks are single-row groups.
    """
    if shard_size < 1:
        raise ConfigError(f"shard_size must be at least 1, not {shard_size}")
    groups: dict[str, list[int]] = {}
    for plan in plans:
        key = plan.identity if plan.identity and not plan.error else f"line:{plan.row.line}"
        groups.setdefault(key, []).append(plan.row.line)
    shards: list[list[int]] = []
    current: list[int] = []
    for lines in groups.values():  # dicts keep first-seen (manifest) order
        if current and len(current) + len(lines) > shard_size:
            shards.append(current)
            current = []
        current.extend(lines)
    if current:
        shards.append(current)
    return [sorted(s) for s in shards]


@flow(name="i2v-fanout", log_prints=False)
async def i2v_fanout(
    source: str,
    dest: str,
    shard_size: int = 50,
    options: BatchOptions | None = None,
    deployment: str = "i2v-batch/batch",
) -> FanoutSummary:
    """Split SOURCE into shards run by the batch deployment's workers; merge the results.

    Args:
        source: A CSV path, `s3://bucket/key.csv`, or an `s3://` prefix of pictures;
            every worker must be able to read it (use S3 across machines).
        dest: A folder or `s3://bucket/prefix` shared by all shards.
        shard_size: Rows per shard (duplicates of one input always share a shard).
        options: Batch options passed to every shard. Its `concurrency` is per shard;
            the global concurrency limit caps all shards together.
        deployment: The batch deployment that runs each shard ("flow/deployment").
    """
    options = options or BatchOptions.model_validate({})
    logger = get_run_logger()
    started = time.monotonic()
    s3 = s3_client_for(options) if "s3://" in source + dest else None
    manifest = await asyncio.to_thread(read_rows, source, options, s3)
    plans = await check_pictures(opaque(manifest), options, opaque(s3))
    storage = open_storage(dest, s3_client=s3)
    run_id = new_run_id()
    shards = plan_shards(plans, shard_size)
    inputs = len({p.identity for p in plans if p.identity and not p.error})
    logger.info(
        "%d rows, %d distinct inputs, %d rejected before any call: %d shards of at most "
        "%d rows via deployment %r",
        len(plans),
        inputs,
        sum(1 for p in plans if p.error),
        len(shards),
        shard_size,
        deployment,
    )
    if options.dry_run:
        return await _dry_run(options, storage, run_id, s3, source, plans, shards)

    runs = await _launch(shards, source, dest, options, deployment)
    reporter = ProgressReporter(FANOUT_PROGRESS_KEY, label="rows")
    await reporter.start(len(plans))
    try:
        finished = await _wait(runs, shards, reporter)
    finally:
        await reporter.finish()

    frame, reports = await asyncio.to_thread(
        _merge, storage, plans, shards, finished, str(options.model), manifest.extra_columns
    )
    summary = FanoutSummary(
        run_id=run_id,
        source=source,
        dest=storage.uri,
        rows=len(frame),
        inputs=inputs,
        counts=status_counts(frame),
        spent_usd=round(sum(r.spent_usd for r in reports), 4),
        elapsed_s=round(time.monotonic() - started, 3),
        top_errors=top_errors(frame),
        shards=reports,
    )
    for name in _STATS:
        setattr(summary, name, sum(r.stats.get(name, 0) for r in reports))
    uris = await asyncio.to_thread(write_tables, storage, frame, run_id, summary, publish=True)
    summary.results_uri = uris["parquet"]
    landed = frame.loc[frame["status"] == str(RowStatus.LANDED), "id"]
    sheet_md = await publish_contact_sheet(storage, [f"videos/{i}.mp4" for i in landed], run_id)
    await _artifacts(frame, summary, sheet_md)
    logger.info(
        "done: %s; spent $%.2f over %d shards; results at %s",
        ", ".join(f"{v} {k}" for k, v in summary.counts.items() if v),
        summary.spent_usd,
        len(reports),
        summary.results_uri,
    )
    bad = [r for r in reports if r.state != "Completed"]
    if bad:
        raise ShardsFailed(
            f"{len(bad)} of {len(reports)} shards did not complete ("
            + "; ".join(f"shard {r.index} {r.flow_run_name}: {r.state}" for r in bad)
            + f"); their rows are in {summary.results_uri} with the reason. Rerun the "
            "fan-out: inputs already paid for are not paid again"
        )
    return summary


async def _launch(
    shards: list[list[int]],
    source: str,
    dest: str,
    options: BatchOptions,
    deployment: str,
) -> list[FlowRun]:
    """One flow run of the batch deployment per shard, linked as subflows of this run."""
    logger = get_run_logger()
    parent = str(runtime_flow_run.get_id() or "local")
    parent_name = runtime_flow_run.get_name() or "i2v-fanout"
    base: dict[str, Any] = {
        "source": source,
        "dest": dest,
        # mode="json": the model name is a StrEnum; the API wants plain JSON values.
        "options": options.model_dump(mode="json"),
        "write_table": False,
    }
    runs: list[FlowRun] = []
    for index, lines in enumerate(shards, 1):
        digest = hashlib.sha256(json.dumps(lines).encode()).hexdigest()[:12]
        try:
            run = await arun_deployment(
                name=deployment,
                parameters={**base, "lines": lines},
                timeout=0,
                as_subflow=True,
                flow_run_name=f"{parent_name}-shard-{index}-of-{len(shards)}",
                tags=["i2v-shard"],
                # A retried parent finds its shards again instead of starting (and
                # paying for) new ones.
                idempotency_key=f"i2v-fanout:{parent}:{index}:{digest}",
            )
        except ObjectNotFound:
            raise ConfigError(
                f"deployment {deployment!r} not found: deploy it with `prefect deploy --all "
                "--prefect-file deployments/prefect.yaml`, or pass `deployment`"
            ) from None
        runs.append(run)
        logger.info(
            "shard %d/%d: %d rows (lines %d-%d) as flow run %s",
            index,
            len(shards),
            len(lines),
            lines[0],
            lines[-1],
            run.name,
        )
    return runs


async def _wait(
    runs: list[FlowRun], shards: list[list[int]], reporter: ProgressReporter
) -> list[FlowRun]:
    """Poll the shards' flow runs until each is final; log each state change once."""
    logger = get_run_logger()
    latest: dict[UUID, FlowRun] = {run.id: run for run in runs}
    index = {run.id: i for i, run in enumerate(runs)}
    seen: dict[UUID, str] = {}
    pending = set(latest)
    waited_since = time.monotonic()
    warned = False
    async with get_client() as client:
        while pending:
            fresh = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(pending)))
            )
            for gone in pending - {run.id for run in fresh}:  # deleted by someone
                logger.warning("shard flow run %s no longer exists", latest[gone].name)
                pending.discard(gone)
                latest[gone] = latest[gone].model_copy(
                    update={"state": Crashed(message="the shard's flow run was deleted")}
                )
            for run in fresh:
                latest[run.id] = run
                name = _state_name(run)
                i = index[run.id]
                if seen.get(run.id) != name:
                    seen[run.id] = name
                    logger.info("shard %d/%d (%s): %s", i + 1, len(runs), run.name, name)
                if run.state is not None and run.state.is_final():
                    pending.discard(run.id)
                    reporter.advance(len(shards[i]), status=name.lower())
            if not pending:
                break
            started = any(seen.get(r) not in ("Scheduled", "Late", "Pending") for r in pending)
            if not warned and not started and time.monotonic() - waited_since > NO_WORKER_WARNING_S:
                warned = True
                logger.warning(
                    "%d shards are still waiting for a worker after %.0f s: is a worker "
                    "running on the deployment's work pool (`prefect worker start --pool "
                    "<pool>`)?",
                    len(pending),
                    NO_WORKER_WARNING_S,
                )
            await asyncio.sleep(POLL_S)
    return [latest[run.id] for run in runs]


def _merge(
    storage: Storage,
    plans: Sequence[RowPlan],
    shards: list[list[int]],
    runs: list[FlowRun],
    model: str,
    extra_columns: Sequence[str],
) -> tuple[pd.DataFrame, list[ShardReport]]:
    """One table in manifest order from the shards' run tables; rows of a shard that left
    no table come back as not_submitted with the shard's fate as the error."""
    by_line = {p.row.line: p for p in plans}
    run_dirs = sorted({k.split("/")[1] for k in storage.list("runs/") if k.count("/") >= 2})
    frames: list[pd.DataFrame] = []
    reports: list[ShardReport] = []
    for i, (lines, run) in enumerate(zip(shards, runs, strict=True), 1):
        state = _state_name(run)
        report = ShardReport(
            index=i,
            rows=len(lines),
            first_line=lines[0],
            last_line=lines[-1],
            flow_run_id=str(run.id),
            flow_run_name=run.name,
            state=state,
            message=(run.state.message if run.state else None) or None,
        )
        wanted = set(lines)
        found = _shard_table(storage, run_dirs, str(run.id), wanted)
        table = found[1] if found else None
        if found is not None and table is not None:
            report.run_id = found[0]
            table = table[table["line"].isin(wanted)]
            raw = storage.read_bytes(f"runs/{found[0]}/summary.json")
            if raw:
                shard_summary = RunSummary.model_validate(json.loads(raw))
                report.spent_usd = shard_summary.spent_usd
                report.counts = {k: v for k, v in shard_summary.counts.items() if v}
                report.stats = {k: int(getattr(shard_summary, k)) for k in _STATS}
            frames.append(table)
        covered = set(table["line"].dropna().astype(int)) if table is not None else set()
        missing = [by_line[n] for n in lines if n not in covered and n in by_line]
        if missing:
            why = (
                f"shard {i}/{len(shards)} (flow run {run.name}) ended {state}"
                + (f": {report.message}" if report.message else "")
                + " without a result for this row; it was not processed. Rerun the fan-out: "
                "inputs already paid for are not paid again"
            )
            lost = result_rows(missing, [], model=model, dest=storage, extra_columns=extra_columns)
            lost.loc[lost["status"] == str(RowStatus.NOT_SUBMITTED), "error"] = why
            frames.append(lost)
        reports.append(report)
    columns = COLUMNS + [c for c in extra_columns if c not in COLUMNS]
    if frames:
        frame = pd.concat([f.reindex(columns=columns) for f in frames], ignore_index=True)
    else:
        frame = result_rows([], [], model=model, dest=storage, extra_columns=extra_columns)
    frame = frame.sort_values("line", kind="stable").reset_index(drop=True)
    for col in columns:
        frame[col] = frame[col].astype(DTYPES.get(col, "string"))  # type: ignore[call-overload]
    return frame, reports


def _state_name(run: FlowRun) -> str:
    if run.state is None:
        return "Unknown"
    return run.state.name or run.state.type.value.title()


def _shard_table(
    storage: Storage, run_dirs: list[str], flow_run_id: str, lines: set[int]
) -> tuple[str, pd.DataFrame] | None:
    """The shard's run folder and table: named <UTC stamp>-<flow run id[:8]>, newest
    first (a retried shard writes one per attempt), and holding only this shard's lines
    (a guard should two flow run ids ever share their first 8 characters)."""
    suffix = f"-{flow_run_id[:8]}"
    for run_dir in reversed([d for d in run_dirs if d.endswith(suffix)]):
        raw = storage.read_bytes(f"runs/{run_dir}/results.parquet")
        if raw is None:
            continue
        table = pd.read_parquet(io.BytesIO(raw))
        got = set(table["line"].dropna().astype(int))
        if got and got <= lines:
            return run_dir, table
    return None


async def _dry_run(
    options: BatchOptions,
    storage: Storage,
    run_id: str,
    s3: Any,
    source: str,
    plans: list[RowPlan],
    shards: list[list[int]],
) -> FanoutSummary:
    """Counts, cost estimate and the shard plan; no shard runs, no API, no writes."""
    ctx = RunContext(options=options, dest=storage, run_id=run_id, s3_client=s3)
    jobs = group_jobs(plans, options)
    await load_records(ctx, jobs)
    base = dry_run_summary(ctx, source, plans, jobs)
    get_run_logger().info(
        "dry run: %s; estimated cost $%.2f in %d shards",
        base.counts,
        base.estimated_usd,
        len(shards),
    )
    return FanoutSummary(
        **base.model_dump(),
        shards=[
            ShardReport(
                index=i,
                rows=len(lines),
                first_line=lines[0],
                last_line=lines[-1],
                flow_run_id="",
                flow_run_name="(dry run)",
                state="NotRun",
            )
            for i, lines in enumerate(shards, 1)
        ],
    )


async def _artifacts(frame: pd.DataFrame, summary: FanoutSummary, sheet_md: str) -> None:
    cols = TABLE_ARTIFACT_COLUMNS
    table = frame[cols].astype(object).where(frame[cols].notna(), "")
    await acreate_table_artifact(
        key="i2v-results",
        table=[{str(k): v for k, v in row.items()} for row in table.to_dict(orient="records")],
        description=f"Merged results of fan-out {summary.run_id} into {summary.dest}",
    )
    lines = [
        f"# i2v fan-out `{summary.run_id}`",
        "",
        f"- source: `{summary.source}`",
        f"- dest: `{summary.dest}`",
        f"- rows: {summary.rows} ({summary.inputs} distinct inputs) in {len(summary.shards)}"
        " shards",
        f"- spent this run: ${summary.spent_usd:.2f} over {summary.submissions} submissions",
        f"- time: {summary.elapsed_s:.1f} s",
        "",
        "| status | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary.counts.items() if v],
        "",
        "## Shards",
        "",
        "| shard | lines | flow run | state | landed | spent |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r.index} | {r.first_line}-{r.last_line} ({r.rows}) | {r.flow_run_name} | "
            f"{r.state} | {r.counts.get('landed', 0)} | ${r.spent_usd:.2f} |"
            for r in summary.shards
        ],
    ]
    lines += summary_tail(summary.top_errors, summary.results_uri, sheet_md)
    await acreate_markdown_artifact(
        key="i2v-fanout-summary",
        markdown="\n".join(lines),
        description="i2v fan-out summary",
    )
