"""The batch flow: rows in, videos and a results table out, never paying twice.

read rows -> check pictures -> for each distinct input (`i2v.lifecycle.advance`):
    upload -> generate -> poll -> land (+ copies for duplicate rows)
-> results table (DEST/results.parquet, .csv) and artifacts
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from uuid import UUID, uuid4

from prefect import flow
from prefect.logging import get_run_logger

from flows.announce import announced
from flows.approval import before_paying
from flows.authority import check_worker_settings
from flows.clients import atlas_client
from flows.control import current_control, stop_on_signals
from flows.opening import OpenedRun, dry_run_summary, open_run
from flows.provider_cap import provider_cap
from flows.task_runs import opaque, run_task_after, untagged_task_runs
from i2v.batching import Batch, MicroBatcher
from i2v.claims import Records
from i2v.concurrency import AdaptiveLimiter
from i2v.config import BatchOptions
from i2v.errors import DestUnreachable
from i2v.journal import adopt
from i2v.lifecycle import run_jobs, triage
from i2v.memory import limit_malloc_arenas
from i2v.models import get_model
from i2v.preflight import preflight
from i2v.results import RunSummary, qc_flags, result_rows, status_counts, top_errors
from i2v.rows import group_jobs
from i2v.run import Job, RowStatus, RunAborted, RunContext, RunControl, StopReason
from i2v.sheet import SheetFrames
from i2v.state import Action, InputRecord, StateStore
from tasks.artifacts import ProgressReporter, kept_message, publish_contact_sheet, publish_kept
from tasks.comparison import publish_comparison
from tasks.generate import GenerateItem, generate
from tasks.land import LandItem, land
from tasks.poll import PollItem, poll
from tasks.results_artifacts import publish_artifacts
from tasks.tables import results_table
from tasks.upload import upload

I = TypeVar("I")  # noqa: E741 - a step's item type, as in i2v.batching
R = TypeVar("R")


def _job(item: Any) -> Job:
    return item[0] if isinstance(item, tuple) else item


class PrefectSteps:
    """The steps as micro-batched Prefect tasks (see `i2v.batching`).

    A task run opens when a row reaches its step and keeps taking the rows that follow
    for up to 2 s (0.5 s without a new row); each row still gets its own result the
    moment it is ready. Task runs are numbered per step (`poll #2`) and renamed with
    their row count once they stop taking rows (`poll #2 · 25 rows`, `tasks._batch`).
    In the run's graph each task run follows the one that handed it its first row
    (the first uploads follow check-pictures), so the step order shows.
    """

    def __init__(self, ctx: RunContext, *, after: UUID | None = None) -> None:
        self._ctx = opaque(ctx)
        self._start = after
        # Each live batch's task run; a batch (and the records its rows carried) is let
        # go once its rows have moved on.
        self._run_of: weakref.WeakKeyDictionary[Batch[Any, Any], UUID] = weakref.WeakKeyDictionary()
        self._last: dict[str, UUID] = {}  # each live input's latest task run
        self._ended: set[UUID] = set()  # the task runs where settled rows ended
        self._upload: MicroBatcher[Job, str] = self._batcher(upload)
        self._generate: MicroBatcher[GenerateItem, InputRecord] = self._batcher(generate)
        self._poll: MicroBatcher[PollItem, InputRecord] = self._batcher(poll)
        self._land: MicroBatcher[LandItem, InputRecord] = self._batcher(land)

    def _batcher(self, step: Any) -> MicroBatcher[Any, Any]:
        batcher: MicroBatcher[Any, Any]

        def run(batch: Batch[Any, Any]) -> Awaitable[Any]:
            run_id = self._run_of[batch] = uuid4()
            first = _job(batch.entries[0].item)
            return run_task_after(
                step,
                [self._last.get(first.identity, self._start)],
                edge="entries",
                task_run_id=run_id,
                ctx=self._ctx,
                entries=opaque(batch),
                batch=batcher.batches,
            )

        batcher = MicroBatcher(run)
        return batcher

    async def _through(self, batcher: MicroBatcher[I, R], job: Job, item: I) -> R:
        entry = batcher.enter(item)
        try:
            return await entry.future
        finally:
            run_id = self._run_of.get(entry.batch) if entry.batch is not None else None
            if run_id is not None:
                self._last[job.identity] = run_id

    async def upload(self, job: Job) -> str:
        return await self._through(self._upload, job, job)

    async def generate(self, job: Job, record: InputRecord | None, image_url: str) -> InputRecord:
        return await self._through(self._generate, job, (job, record, image_url))

    async def poll(self, job: Job, record: InputRecord) -> InputRecord:
        return await self._through(self._poll, job, (job, record))

    async def land(self, job: Job, record: InputRecord) -> InputRecord:
        return await self._through(self._land, job, (job, record))

    def settled(self, job: Job) -> None:
        """The row is done: keep only where it ended (for the graph), not the row."""
        last = self._last.pop(job.identity, None)
        if last is not None:
            self._ended.add(last)

    def last_runs(self) -> list[UUID]:
        """The task runs where rows ended: what the results table follows in the graph."""
        ended = self._ended | set(self._last.values())
        return sorted(ended, key=str) or ([self._start] if self._start else [])

    async def close(self) -> None:
        """Close every open batch and wait for its task run to end.

        A batch keeps taking rows for up to `idle_s` after its last one; a flow run
        that ended first would leave it to be cancelled by the runtime (a Crashed task
        run in a run whose rows all landed).
        """
        for batcher in (self._upload, self._generate, self._poll, self._land):
            await batcher.close()


@flow(name="i2v-batch", log_prints=False)
async def i2v_batch(source: str, dest: str, options: BatchOptions = BatchOptions()) -> RunSummary:
    """Turn every row of SOURCE into DEST/videos/ID.mp4 and DEST/results.parquet (.csv).

    Args:
        source: A CSV, Parquet or JSON Lines manifest (a path or s3://), or an `s3://` prefix.
        dest: A folder or `s3://bucket/prefix`.
        options: Model, concurrency, budget, polling and API settings.
    """
    control = current_control()
    with stop_on_signals(control), untagged_task_runs():
        run = _batch(source, dest, options, control, True, None)
        return await announced(run, source, dest)  # one event per run: flows.announce


@flow(name="i2v-shard", log_prints=False)
async def i2v_shard(
    source: str, dest: str, lines: list[int], options: BatchOptions = BatchOptions()
) -> RunSummary:
    """One shard of an i2v-fanout run (the fan-out starts these; not meant for people).

    Args:
        source: The fan-out's manifest.
        dest: The fan-out's DEST.
        lines: The manifest lines of this shard.
        options: The fan-out's options.

    The shard's table goes only to DEST/runs/RUN_ID/: the fan-out merges its shards'
    tables into DEST/results.parquet (.csv) and makes one contact sheet.
    """
    control = current_control()
    with stop_on_signals(control), untagged_task_runs():
        return await _batch(source, dest, options, control, False, lines)


async def _batch(
    source: str,
    dest: str,
    options: BatchOptions,
    control: RunControl,
    write_table: bool,
    lines: Sequence[int] | None,
) -> RunSummary:
    logger = get_run_logger()
    started = time.monotonic()
    await check_worker_settings(options)  # before any request
    limit_malloc_arenas()  # before the run's threads start
    # State writes (fsync'd), S3 calls and file moves run in threads; the default pool
    # (cores + 4 threads) queues them behind each other when dozens of rows are live.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=min(64, 8 + 2 * options.concurrency))
    )
    control.phase("checking pictures")
    opened = await open_run(source, dest, options, lines=lines)
    records = Records(StateStore(opened.dest))
    if not options.dry_run:
        # What an earlier run on this machine paid for and could not record: first.
        _, conflicts = await asyncio.to_thread(adopt, records, opened.dest.uri)
        for conflict in conflicts:
            logger.warning("journal: %s", conflict)
    jobs = group_jobs(opened.plans, options)
    limiter = AdaptiveLimiter(options.concurrency)

    def context(**more: Any) -> RunContext:
        return RunContext(
            options=options,
            dest=opened.dest,
            run_id=opened.run_id,
            limiter=limiter,
            records=records,
            s3_client=opened.s3,
            logger=logger,
            simulated=options.api.simulator,
            **more,
        )

    deciding = context()
    await triage(deciding, jobs)
    control.phase(
        "rows checked",
        rows=len(opened.plans),
        rejected=sum(1 for p in opened.plans if p.error),
        inputs=len(jobs),
    )
    if options.dry_run:
        return dry_run_summary(deciding, source, opened, jobs)
    actions = {job.action for job in jobs if job.outcome is None}
    needs_api = bool(actions & {Action.SUBMIT, Action.POLL, Action.LAND, Action.FOLLOW})
    # A landed input whose video vanished from DEST is fetched again: keep a client.
    needs_client = needs_api or Action.DONE in actions
    # Live progress in the UI: rows rejected before any call are done already.
    reporter = ProgressReporter()
    plans = opened.plans
    await reporter.start(len(plans), done=len(plans) - sum(len(j.rows) for j in jobs))
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(reporter.finish)
        client = (
            await stack.enter_async_context(atlas_client(options, limiter))
            if (needs_client)
            else None
        )
        catalog_price = None
        slot = None
        if needs_api and client is not None:
            catalog_price = await preflight(client, str(options.model))
            _log_prices(logger, options, catalog_price)
            await before_paying(control, client, logger, options, jobs, catalog_price)
            cap = await provider_cap(options.global_concurrency_limit, options.concurrency)
            if cap is not None:
                slot = cap.slot
                stack.push_async_callback(cap.aclose)
        ctx = context(
            client=client,
            listeners=(*control.listeners, reporter.listener),
            catalog_price_usd=catalog_price,
            frames=SheetFrames() if write_table else None,
            **({"provider_slot": slot} if slot is not None else {}),
        )
        control.attach(ctx)
        stack.push_async_callback(ctx.kept.close)
        steps = PrefectSteps(ctx, after=opened.checked_by)
        rows = asyncio.ensure_future(run_jobs(ctx, steps, jobs, on_settled=steps.settled))
        try:
            await asyncio.shield(rows)
            await steps.close()
        except asyncio.CancelledError:
            # Cancelled (a flow run cancelled from the UI or by its worker): the same
            # wind-down as a stop signal, then the table, then the cancellation.
            control.request_stop("cancellation")
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(rows), _wind_down_s(options))
                await asyncio.wait_for(steps.close(), 5.0)
            if ctx.kept.pending:
                await publish_kept(ctx)
            else:
                await publish_run(
                    ctx, opened, jobs, source, started, publish=write_table, after=steps.last_runs()
                )
            raise
    control.phase("writing results")
    if ctx.kept.pending:  # DEST never took them back: no table either, but nothing lost
        await publish_kept(ctx)
        raise DestUnreachable(kept_message(ctx))
    summary = await publish_run(
        ctx, opened, jobs, source, started, publish=write_table, after=steps.last_runs()
    )
    control.phase("done")
    if ctx.stop_reason in (StopReason.AUTH, StopReason.MODEL):
        raise RunAborted(ctx.stop_message or "run aborted")
    return summary


def _wind_down_s(options: BatchOptions) -> float:
    """How long a stopped run waits for its rows: POSTs on the wire get their answers."""
    return options.api.generate_timeout_s + 5.0


def _log_prices(logger: Any, options: BatchOptions, catalog_usd: float | None) -> None:
    default = get_model(str(options.model)).default_duration
    configured = options.price(default)
    budgeted = options.price(default, catalog_usd=catalog_usd)
    if catalog_usd is None:
        logger.info("price: $%.2f per video as configured (the catalog lists none)", configured)
        return
    logger.info(
        "price: the catalog says $%.2f per video, configured $%.2f: budgeting with $%.2f",
        catalog_usd,
        configured,
        budgeted,
    )


async def publish_run(
    ctx: RunContext,
    opened: OpenedRun,
    jobs: Sequence[Job],
    source: str,
    started: float,
    *,
    publish: bool,
    after: Sequence[UUID] = (),
) -> RunSummary:
    """The results table, the summary, the contact sheet and the artifacts; in the
    graph, the results table follows the task runs `after` (where the rows ended)."""
    frame = result_rows(
        opened.plans,
        jobs,
        model=ctx.model,
        dest=ctx.dest,
        extra_columns=opened.manifest.extra_columns,
        extra_types=opened.manifest.extra_types,
        catalog_model=ctx.options.catalog_model,
    )
    summary = RunSummary(
        run_id=ctx.run_id,
        source=source,
        dest=ctx.dest.uri,
        rows=len(frame),
        inputs=len(jobs),
        counts=status_counts(frame),
        **RunSummary.money_of(jobs),
        submissions=ctx.stats.submissions,
        uploads=ctx.stats.uploads,
        polls=ctx.stats.polls,
        downloads=ctx.stats.downloads,
        elapsed_s=round(time.monotonic() - started, 3),
        stop_reason=str(ctx.stop_reason) if ctx.stop_reason else None,
        stop_message=ctx.stop_message,
        stopped_by=current_control().signal,
        simulated=ctx.simulated,
        top_errors=top_errors(frame),
        qc_flagged=qc_flags(frame),
        command=current_control().command,
    )

    async def contact_sheet() -> str:
        if not publish:  # a fan-out parent makes one sheet for all its shards
            return ""
        landed = frame.loc[frame["status"] == str(RowStatus.LANDED), "id"]
        hours = ctx.options.link_hours
        return await publish_contact_sheet(
            ctx.dest,
            [f"videos/{i}.mp4" for i in landed],
            ctx.run_id,
            link_hours=hours,
            frames=ctx.frames,
        ) + await publish_comparison(
            ctx.dest, frame, ctx.options.models, ctx.run_id, link_hours=hours
        )

    # Independent: the sheet's PNG is encoded in a thread while the table is written.
    sheet: str
    summary.results_uri, sheet = await asyncio.gather(
        run_task_after(
            results_table,
            after or [opened.checked_by],
            edge="frame",
            storage=ctx.dest,
            frame=opaque(frame),
            summary=summary,
            publish=publish,
            records=opaque(ctx.records),
            watch=opaque(ctx.watch),
        ),
        contact_sheet(),
    )
    await publish_artifacts(
        frame,
        summary,
        title=f"run `{ctx.run_id}`",
        sheet_md=sheet,
        storage=ctx.dest,
        link_hours=ctx.options.link_hours,
    )
    get_run_logger().info(
        "done: %s; spent $%.2f%s; results at %s",
        ", ".join(f"{v} {k}" for k, v in summary.counts.items() if v),
        summary.spent_usd,
        " (simulated)" if summary.simulated else "",
        summary.results_uri,
    )
    return summary
