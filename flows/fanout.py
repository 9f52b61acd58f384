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
import contextlib
import time
from typing import Annotated

from prefect import flow
from prefect.client.schemas.objects import FlowRun
from prefect.logging import get_run_logger
from pydantic import Field

from flows.announce import announced
from flows.approval import approve_parent
from flows.authority import check_worker_settings
from flows.helping import help_waiting, run_here
from flows.opening import OpenedRun, dry_run_summary, open_run
from flows.shard_runs import (
    ShardLauncher,
    auto_size,
    check_deployment,
    shard_name,
    shard_run,
    watch,
)
from i2v.config import BatchOptions
from i2v.errors import ConfigError, I2VError
from i2v.lifecycle import triage
from i2v.results import RunSummary, qc_flags, status_counts, top_errors, write_tables
from i2v.rows import group_jobs
from i2v.run import RowStatus, RunContext
from i2v.shards import MONEY, STATS, ShardReport, helper_reports, merge_shards, plan_shards
from tasks.artifacts import ProgressReporter, publish_contact_sheet
from tasks.comparison import publish_comparison
from tasks.results_artifacts import publish_artifacts

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
    shard_size: Annotated[int | None, Field(ge=1)] = None,
    options: BatchOptions = BatchOptions(),
    deployment: str = SHARD_DEPLOYMENT,
    shard_in_parent: bool = True,
) -> FanoutSummary:
    """Split SOURCE into shards run by workers of the pool; merge their results.

    Args:
        source: A CSV, Parquet or JSON Lines manifest (a path or s3://), or an s3:// prefix;
            every worker must be able to read it (use S3 across machines).
        dest: A folder or `s3://bucket/prefix` shared by all shards.
        shard_size: Rows per shard (duplicates of one input always share a shard). Empty:
            one shard per online worker of the pool, and at least enough to fill the
            global concurrency limit at `concurrency` per shard.
        options: Batch options passed to every shard. Its `concurrency` is per shard;
            the global concurrency limit caps all shards together.
        deployment: The deployment that runs each shard, FLOW/DEPLOYMENT (the internal
            i2v-shard/shard).
        shard_in_parent: Run the first shard in this flow run, as a subflow, while the
            workers pick up the others: the provider's slots fill from the start.
    """
    run = _fanout(source, dest, shard_size, options, deployment, shard_in_parent)
    return await announced(run, source, dest)  # one event for all shards: flows.announce


async def _fanout(
    source: str,
    dest: str,
    shard_size: int | None,
    options: BatchOptions,
    deployment: str,
    shard_in_parent: bool,
) -> FanoutSummary:
    logger = get_run_logger()
    started = time.monotonic()
    await check_worker_settings(options)  # before any read; each shard checks on its worker
    opened = await open_run(source, dest, options)
    plans, storage, run_id = opened.plans, opened.dest, opened.run_id
    how, pool = "", None
    if shard_size is None:
        pool = await check_deployment(deployment)
        shard_size, workers = await auto_size(pool, len(plans), options)
        how = f" (one per online worker: {workers})"
    shards = plan_shards(plans, shard_size)
    inputs = len({p.identity for p in plans if p.identity and not p.error})
    logger.info(
        "%d shards of at most %d rows%s via deployment %r",
        len(shards),
        shard_size,
        how,
        deployment,
    )
    if options.dry_run:
        return await _dry_run(options, opened, source, shards)
    if options.api.simulator:
        raise ConfigError(
            "the in-process simulator runs with the CLI only (`api.simulator`): shards run "
            "on workers from the deployment's form; start `i2v simulate --port P` and set "
            "api.base_url to it instead"
        )

    pool = pool or await check_deployment(deployment)  # read once
    options, budgets = await _approved(options, opened)
    launcher = ShardLauncher(source, dest, options, deployment, pool, len(shards), budgets)
    reporter = ProgressReporter(FANOUT_PROGRESS_KEY, label="rows")
    await reporter.start(len(plans))
    try:
        finished, helped = await _run_shards(launcher, shards, reporter, in_parent=shard_in_parent)
    finally:
        await reporter.finish()

    frame, reports = await asyncio.to_thread(
        merge_shards,
        storage,
        plans,
        shards,
        [shard_run(run) for run in finished],
        options,
        opened.manifest.extra_columns,
        opened.manifest.extra_types,
    )
    helpers = await asyncio.to_thread(helper_reports, storage, [shard_run(run) for run in helped])
    paying = reports + helpers
    summary = FanoutSummary(
        run_id=run_id,
        source=source,
        dest=storage.uri,
        rows=len(frame),
        inputs=inputs,
        counts=status_counts(frame),
        spent_usd=round(sum(r.spent_usd for r in paying), 4),
        simulated=options.api.simulator,
        elapsed_s=round(time.monotonic() - started, 3),
        top_errors=top_errors(frame),
        qc_flagged=qc_flags(frame),
        shards=reports,
    )
    for name in STATS:
        setattr(summary, name, sum(r.stats.get(name, 0) for r in paying))
    for name in MONEY:
        setattr(summary, name, round(sum(r.money.get(name, 0.0) for r in paying), 4))
    uris = await asyncio.to_thread(write_tables, storage, frame, run_id, summary, publish=True)
    summary.results_uri = uris["parquet"]
    landed = frame.loc[frame["status"] == str(RowStatus.LANDED), "id"]
    sheet_md = await publish_contact_sheet(
        storage, [f"videos/{i}.mp4" for i in landed], run_id, link_hours=options.link_hours
    ) + await publish_comparison(
        storage, frame, options.models, run_id, link_hours=options.link_hours
    )
    await publish_artifacts(
        frame,
        summary,
        storage=storage,
        link_hours=options.link_hours,
        title=f"fan-out `{run_id}`",
        facts=[f"- shards: {len(reports)}", *_helped_md(helpers)],
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


async def _approved(
    options: BatchOptions, opened: OpenedRun
) -> tuple[BatchOptions, dict[int, float] | None]:
    """Over `approve_over_usd`: ask once here, for every shard (`flows/approval.py`)."""
    if options.approve_over_usd is None:
        return options, None
    ctx = RunContext(options=options, dest=opened.dest, run_id=opened.run_id, s3_client=opened.s3)
    jobs = group_jobs(opened.plans, options)
    await triage(ctx, jobs)
    return await approve_parent(options, jobs, get_run_logger())


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


async def _run_shards(
    launcher: ShardLauncher,
    shards: list[list[int]],
    reporter: ProgressReporter,
    *,
    in_parent: bool,
) -> tuple[list[FlowRun], list[FlowRun]]:
    """Every shard to a final state: the first here (when `in_parent`), the others on
    the workers, and, while they wait for a worker, their rows here too
    (`flows/helping.py`). Returns their flow runs in shard order, and the runs this
    made of waiting shards' rows."""
    numbered = dict(enumerate(shards, 1))
    own = numbered.pop(1) if in_parent else None
    started: set[int] = set()
    # The shard runs first: creating them takes a second on an idle event loop, but
    # many seconds beside the parent's own rows, and every second they wait to be
    # created is a second later that their workers start their processes.
    runs = await launcher.launch(numbered) if numbered else {}
    here = (
        asyncio.create_task(_parent_work(launcher, own, numbered, started))
        if own is not None
        else None
    )
    try:
        finished = await watch(launcher, numbered, runs, reporter, started) if runs else {}
    except BaseException:
        if here is not None:  # the shard here winds down with its bookkeeping done
            here.cancel()
            with contextlib.suppress(BaseException):
                await here
        raise
    helped: list[FlowRun] = []
    if here is not None:
        mine, helped = await here
        finished[1] = mine
        reporter.advance(len(shards[0]), status=shard_run(mine).state.lower())
    return [finished[i] for i in sorted(finished)], helped


async def _parent_work(
    launcher: ShardLauncher,
    own: list[int],
    others: dict[int, list[int]],
    started: set[int],
) -> tuple[FlowRun, list[FlowRun]]:
    """Shard 1, and beside it the rows of shards still waiting for a worker: the
    global limit shares the provider's slots between them."""
    mine, helped = await asyncio.gather(
        _mine(launcher, own), help_waiting(launcher, others, started)
    )
    return mine, helped


async def _mine(launcher: ShardLauncher, lines: list[int]) -> FlowRun:
    """Shard 1, in this process."""
    run, _ = await run_here(launcher, lines, shard_name(1, launcher.total))
    return run


def _helped_md(helpers: list[ShardReport]) -> list[str]:
    if not helpers:
        return []
    paid = sum(r.stats.get("submissions", 0) for r in helpers)
    spent = sum(r.spent_usd for r in helpers)
    return [
        f"- the parent worked on {len(helpers)} shards while they waited for a worker: "
        f"{paid} submissions, ${spent:.2f} (in the totals; their rows are in their shards)"
    ]


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
