"""The fan-out flow: one manifest, many batch flow runs, one results table.

    read rows -> check pictures -> shards (duplicates never split) -> run_deployment per
    shard (the internal i2v-shard/shard deployment: any worker on the pool, on any
    machine, takes it) -> wait -> merge the shards' DEST/runs/<shard-run-id>/results.parquet
    into DEST/results.{parquet,csv}

A lost machine does not leave the fan-out waiting: each shard runs with a heartbeat
every HEARTBEAT_S seconds (the pool's template sets it: deployments/process-pool.json;
a run cannot set job variables of its own there), and a shard
silent for MISSED_BEATS beats is marked Crashed (`flows.lost_runs.mark_lost_runs`); the
parent then ends Failed, naming it, and a rerun finishes its rows.

Shards share DEST: each input's durable record under DEST/_state/ belongs to exactly one
shard (rows with the same input identity always go to the same shard), so shards never
race for an input and a rerun of the fan-out pays nothing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Crashed
from pydantic import Field

from flows.authority import check_worker_settings
from flows.lost_runs import mark_lost_runs
from flows.opening import OpenedRun, dry_run_summary, open_run
from i2v.config import BatchOptions
from i2v.errors import ConfigError, I2VError
from i2v.lifecycle import triage
from i2v.liveness import HEARTBEAT_S
from i2v.results import RunSummary, status_counts, top_errors, write_tables
from i2v.rows import group_jobs
from i2v.run import RowStatus, RunContext
from i2v.shards import STATS, ShardReport, ShardRun, merge_shards, plan_shards
from tasks.artifacts import ProgressReporter, publish_contact_sheet
from tasks.results_artifacts import publish_artifacts

POLL_S = 2.0  # how often the parent reads its shards' states
HEARTBEAT_CHECK_S = 10.0  # how often it reads their heartbeats
NO_WORKER_WARNING_S = 120.0  # shards still waiting after this: say no worker takes them
FANOUT_PROGRESS_KEY = "i2v-fanout-progress"
SHARD_DEPLOYMENT = "i2v-shard/shard"  # flows/batch.py:i2v_shard, deployments/prefect.yaml


class ShardsFailed(I2VError):
    """Some shards did not complete; the merged table says which rows and why."""


class FanoutSummary(RunSummary):
    """The merged run: totals over all shards, plus each shard's report."""

    shards: list[ShardReport] = Field(default_factory=list)


@flow(name="i2v-fanout", log_prints=False)
async def i2v_fanout(
    source: str,
    dest: str,
    shard_size: int = 50,
    options: BatchOptions = BatchOptions(),
    deployment: str = SHARD_DEPLOYMENT,
) -> FanoutSummary:
    """Split SOURCE into shards run by workers of the pool; merge their results.

    Args:
        source: A CSV path, `s3://bucket/key.csv`, or an `s3://` prefix of pictures;
            every worker must be able to read it (use S3 across machines).
        dest: A folder or `s3://bucket/prefix` shared by all shards.
        shard_size: Rows per shard (duplicates of one input always share a shard).
        options: Batch options passed to every shard. Its `concurrency` is per shard;
            the global concurrency limit caps all shards together.
        deployment: The deployment that runs each shard, FLOW/DEPLOYMENT (the internal
            i2v-shard/shard).
    """
    logger = get_run_logger()
    started = time.monotonic()
    await check_worker_settings(options)  # before any read; each shard checks on its worker
    opened = await open_run(source, dest, options)
    plans, storage, run_id = opened.plans, opened.dest, opened.run_id
    shards = plan_shards(plans, shard_size)
    inputs = len({p.identity for p in plans if p.identity and not p.error})
    logger.info(
        "%d shards of at most %d rows via deployment %r", len(shards), shard_size, deployment
    )
    if options.dry_run:
        return await _dry_run(options, opened, source, shards)
    if options.api.simulator:
        raise ConfigError(
            "the in-process simulator runs with the CLI only (`api.simulator`): shards run "
            "on workers from the deployment's form; start `i2v simulate --port P` and set "
            "api.base_url to it instead"
        )

    runs = await _launch(shards, source, dest, options, deployment)
    reporter = ProgressReporter(FANOUT_PROGRESS_KEY, label="rows")
    await reporter.start(len(plans))
    try:
        finished = await _wait(runs, shards, reporter)
    finally:
        await reporter.finish()

    frame, reports = await asyncio.to_thread(
        merge_shards,
        storage,
        plans,
        shards,
        [_shard_run(run) for run in finished],
        options,
        opened.manifest.extra_columns,
    )
    summary = FanoutSummary(
        run_id=run_id,
        source=source,
        dest=storage.uri,
        rows=len(frame),
        inputs=inputs,
        counts=status_counts(frame),
        spent_usd=round(sum(r.spent_usd for r in reports), 4),
        simulated=options.api.simulator,
        elapsed_s=round(time.monotonic() - started, 3),
        top_errors=top_errors(frame),
        shards=reports,
    )
    for name in STATS:
        setattr(summary, name, sum(r.stats.get(name, 0) for r in reports))
    uris = await asyncio.to_thread(write_tables, storage, frame, run_id, summary, publish=True)
    summary.results_uri = uris["parquet"]
    landed = frame.loc[frame["status"] == str(RowStatus.LANDED), "id"]
    sheet_md = await publish_contact_sheet(
        storage, [f"videos/{i}.mp4" for i in landed], run_id, link_hours=options.link_hours
    )
    await publish_artifacts(
        frame,
        summary,
        storage=storage,
        link_hours=options.link_hours,
        title=f"fan-out `{run_id}`",
        facts=[f"- shards: {len(reports)}"],
        sections=_shard_table_md(reports),
        sheet_md=sheet_md,
        summary_key="i2v-fanout-summary",
    )
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
            + "; ".join(
                f"shard {r.index} {r.flow_run_name}: {r.state}"
                + (f" ({r.message})" if r.message else "")
                for r in bad
            )
            + f"); their rows are in {summary.results_uri} with the reason. Run the fan-out "
            "again with the same parameters to finish them: inputs already paid for are "
            "not paid again"
        )
    return summary


async def _launch(
    shards: list[list[int]],
    source: str,
    dest: str,
    options: BatchOptions,
    deployment: str,
) -> list[FlowRun]:
    """One flow run of the shard deployment per shard, linked as subflows of this run."""
    logger = get_run_logger()
    parent = str(runtime_flow_run.get_id() or "local")
    parent_name = runtime_flow_run.get_name() or "i2v-fanout"
    base: dict[str, Any] = {
        "source": source,
        "dest": dest,
        # mode="json": plain JSON values, as the deployment's schema checks them.
        "options": options.model_dump(mode="json"),
    }
    await _check_deployment(deployment)
    runs: list[FlowRun] = []
    for index, lines in enumerate(shards, 1):
        digest = hashlib.sha256(json.dumps(lines).encode()).hexdigest()[:12]
        run = await arun_deployment(
            name=deployment,
            parameters={**base, "lines": lines},
            timeout=0,
            as_subflow=True,
            flow_run_name=f"{parent_name}-shard-{index}-of-{len(shards)}",
            tags=["i2v-shard"],
            # A retried parent finds its shards again instead of starting (and paying
            # for) new ones; a new run of the fan-out has a new id, so new shard runs.
            idempotency_key=f"i2v-fanout:{parent}:{index}:{digest}",
        )
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


async def _check_deployment(deployment: str) -> None:
    """The shard deployment exists (before any shard is created)."""
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ConfigError(
                f"deployment {deployment!r} not found: deploy it with `prefect deploy --all "
                "--prefect-file deployments/prefect.yaml`, or pass `deployment`"
            ) from None


async def _wait(
    runs: list[FlowRun], shards: list[list[int]], reporter: ProgressReporter
) -> list[FlowRun]:
    """Poll the shards' flow runs until each is final; log each state change once.

    A running shard that stops sending heartbeats (its machine or worker was lost) is
    marked Crashed here, so the fan-out never waits for a run nobody runs any more.
    """
    logger = get_run_logger()
    me = runtime_flow_run.get_id()
    next_check = time.monotonic() + HEARTBEAT_CHECK_S
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
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HEARTBEAT_CHECK_S
                live = [latest[r] for r in pending]
                lost = await mark_lost_runs(client, live, HEARTBEAT_S, me=UUID(me) if me else None)
                for run_id, why in (lost or {}).items():
                    logger.warning(
                        "shard %d/%d (%s) marked Crashed: %s; not waiting for it",
                        index[run_id] + 1,
                        len(runs),
                        latest[run_id].name,
                        why,
                    )
                if lost:
                    continue  # read their new state at once
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


def _state_name(run: FlowRun) -> str:
    if run.state is None:
        return "Unknown"
    return run.state.name or run.state.type.value.title()


async def _dry_run(
    options: BatchOptions, opened: OpenedRun, source: str, shards: list[list[int]]
) -> FanoutSummary:
    """Counts, cost estimate and the shard plan; no shard runs, no API, no writes."""
    ctx = RunContext(options=options, dest=opened.dest, run_id=opened.run_id, s3_client=opened.s3)
    jobs = group_jobs(opened.plans, options)
    await triage(ctx, jobs)
    base = dry_run_summary(ctx, source, opened, jobs)
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


def _shard_run(run: FlowRun) -> ShardRun:
    return ShardRun(
        flow_run_id=str(run.id),
        name=run.name,
        state=_state_name(run),
        message=run.state.message if run.state else None,
    )


def _shard_table_md(reports: list[ShardReport]) -> list[str]:
    return [
        "",
        "## Shards",
        "",
        "| shard | lines | flow run | state | landed | spent |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r.index} | {r.first_line}-{r.last_line} ({r.rows}) | {r.flow_run_name} | "
            f"{r.state} | {r.counts.get('landed', 0)} | ${r.spent_usd:.2f} |"
            for r in reports
        ],
    ]
