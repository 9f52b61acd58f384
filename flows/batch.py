"""The batch flow: rows in, videos and a results table out, never paying twice.

read rows -> check pictures -> for each distinct input:
    upload -> generate -> poll -> land (+ copies for duplicate rows)
-> results table (DEST/results.parquet, .csv) and artifacts
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows.common import atlas_client, opaque, provider_slot_factory, s3_client_for
from i2v.batching import Batch, MicroBatcher
from i2v.config import BatchOptions
from i2v.errors import AmbiguousSubmissionError, I2VError, InputError
from i2v.pipeline import (
    Action,
    Job,
    JobOutcome,
    NotSubmitted,
    Rejected,
    RowStatus,
    RunAborted,
    RunContext,
    StopReason,
    action_for,
    group_jobs,
    load_records,
    outcome_of,
    place_copies,
    preflight,
    remember_output,
    video_present,
)
from i2v.results import RunSummary
from i2v.state import InputRecord, Phase
from i2v.storage import open_storage
from tasks import (
    land_videos,
    publish_results,
    submit_generations,
    upload_pictures,
    wait_for_videos,
)
from tasks.artifacts import ProgressReporter
from tasks.rows import check_pictures, read_rows

# How long a finished row lets queued submissions go first before it lands.
LAND_YIELD_S = 0.5


def new_run_id() -> str:
    """Sortable and traceable: UTC time plus the Prefect flow run id's prefix."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run = flow_run.get_id()
    return f"{stamp}-{str(run)[:8]}" if run else stamp


def _label(batch: Batch[Any, Any]) -> str:
    """A batch's task-run label: the first row it carried (more rows join later)."""
    first = batch.entries[0].item
    job = first[0] if isinstance(first, tuple) else first
    return str(job.name)


class Steps:
    """The per-row steps as micro-batched Prefect tasks (see `i2v.batching`).

    A task run opens when a row reaches its step and keeps taking the rows that follow
    for up to 2 s (0.5 s without a new row); each row still gets its own result the
    moment it is ready. The run is named after the first row it carried.
    """

    def __init__(self, ctx: RunContext) -> None:
        c = opaque(ctx)
        self.upload: MicroBatcher[Job, str] = MicroBatcher(
            lambda b: upload_pictures(c, opaque(b), _label(b))
        )
        self.submit: MicroBatcher[tuple[Job, str], InputRecord] = MicroBatcher(
            lambda b: submit_generations(c, opaque(b), _label(b))
        )
        self.poll: MicroBatcher[tuple[Job, InputRecord], InputRecord] = MicroBatcher(
            lambda b: wait_for_videos(c, opaque(b), _label(b))
        )
        self.land: MicroBatcher[tuple[Job, InputRecord], InputRecord] = MicroBatcher(
            lambda b: land_videos(c, opaque(b), _label(b))
        )


@flow(name="i2v-batch", log_prints=False)
async def i2v_batch(
    source: str,
    dest: str,
    options: BatchOptions | None = None,
    write_table: bool = True,
    lines: list[int] | None = None,
) -> RunSummary:
    """Turn every row of SOURCE into DEST/videos/<id>.mp4 and DEST/results.{parquet,csv}.

    Args:
        source: A CSV path, `s3://bucket/key.csv`, or an `s3://` prefix of pictures.
        dest: A folder or `s3://bucket/prefix`.
        options: Model, concurrency, budget, polling and API settings.
        write_table: False for fan-out shards: the table goes only to
            DEST/runs/<run-id>/ and the parent writes the merged DEST/results.*.
        lines: Only these manifest lines (a fan-out shard); None for all rows.
    """
    options = options or BatchOptions()
    logger = get_run_logger()
    # State writes (fsync'd), S3 calls and file moves run in threads; the default pool
    # (cores + 4 threads) queues them behind each other when dozens of rows are live.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=min(64, 8 + 2 * options.concurrency))
    )
    s3 = s3_client_for(options) if "s3://" in source + dest else None
    manifest = await asyncio.to_thread(read_rows, source, options, s3)
    if lines is not None:
        wanted = set(lines)
        manifest.rows = [r for r in manifest.rows if r.line in wanted]
    ctx = RunContext(
        options=options,
        dest=open_storage(dest, s3_client=s3),
        run_id=new_run_id(),
        s3_client=s3,
        logger=logger,
    )
    plans = await check_pictures(opaque(manifest), options, opaque(s3))
    jobs = group_jobs(plans, options)
    await load_records(ctx, jobs)
    logger.info(
        "%d rows, %d distinct inputs, %d rejected before any call",
        len(plans),
        len(jobs),
        sum(1 for p in plans if p.error),
    )
    if options.dry_run:
        return dry_run_summary(ctx, source, plans, jobs)

    actions = {job.identity: action_for(ctx, job) for job in jobs}
    needs_api = any(a in (Action.SUBMIT, Action.POLL, Action.LAND) for a in actions.values())
    # A landed input may need re-fetching if its video vanished from DEST: keep a client.
    needs_client = needs_api or Action.DONE in actions.values()
    # Live progress in the UI: rows rejected before any call are done already.
    reporter = ProgressReporter()
    await reporter.start(len(plans), done=len(plans) - sum(len(j.rows) for j in jobs))
    ctx.listeners.append(reporter.listener)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(reporter.finish)
        if needs_client:
            ctx._client = await stack.enter_async_context(atlas_client(options, ctx))
        if needs_api:
            await preflight(ctx.client, ctx.model)
            slot = await provider_slot_factory(options.global_concurrency_limit)
            if slot is not None:
                ctx.provider_slot = slot
        steps = Steps(ctx)
        await asyncio.gather(*(process(ctx, steps, job) for job in jobs))
    summary = await publish_results(
        opaque(ctx),
        opaque(plans),
        opaque(jobs),
        source=source,
        extra_columns=manifest.extra_columns,
        publish=write_table,
    )
    logger.info(
        "done: %s; spent $%.2f; results at %s",
        ", ".join(f"{v} {k}" for k, v in summary.counts.items() if v),
        summary.spent_usd,
        summary.results_uri or "(not written: shard)",
    )
    if ctx.stop_reason in (StopReason.AUTH, StopReason.MODEL):
        raise RunAborted(ctx.stop_message or "run aborted")
    return summary


async def process(ctx: RunContext, steps: Steps, job: Job) -> None:
    """Carry one distinct input as far as it can go in this run."""
    try:
        job.outcome = await _advance(ctx, steps, job)
    except NotSubmitted as exc:
        job.outcome = JobOutcome(RowStatus.NOT_SUBMITTED, error=str(exc))
    except (Rejected, InputError) as exc:
        job.outcome = JobOutcome(RowStatus.REJECTED, error=str(exc))
    except AmbiguousSubmissionError:
        job.outcome = outcome_of(job.record)
    except RunAborted as exc:
        job.outcome = JobOutcome(RowStatus.NOT_SUBMITTED, error=str(exc))
    except I2VError as exc:
        job.outcome = _trouble(job, exc)
    except Exception as exc:  # one row's surprise must never sink the batch
        ctx.log.exception("%s: unexpected error", job.name)
        job.outcome = _trouble(job, exc)
    ctx.log.info("%s: %s%s", job.name, job.outcome.status, _why(job.outcome))
    ctx.emit("outcome", job, job.outcome)


async def _advance(ctx: RunContext, steps: Steps, job: Job) -> JobOutcome:
    action = action_for(ctx, job)
    record = job.record
    if action is Action.DONE:
        assert record is not None
        if await video_present(ctx, record):
            await place_copies(ctx, job, record)
            return outcome_of(record)
        if not record.output_url:
            return JobOutcome(
                RowStatus.FAILED,
                error=f"the landed video {record.video_key} is missing from DEST and no "
                "output URL is known",
                record=record,
            )
        action = Action.LAND  # re-fetch from the provider: still paid, not paid again
        record = record.moved(Phase.SUCCEEDED, ctx.run_id)
    if action is Action.FINAL:
        return outcome_of(record)
    if action is Action.HOLD_AMBIGUOUS:
        return outcome_of(
            record.moved(Phase.AMBIGUOUS, ctx.run_id) if record else record,
        )
    paid = 0.0
    if action is Action.SUBMIT:
        if ctx.stop_reason is not None:
            raise NotSubmitted(ctx.stop_message or "submissions stopped")
        # Upload ahead of the in-flight slot so a slot is only held while the provider
        # works; the prefetch bound keeps temporary upload URLs from going stale.
        async with ctx.prefetch:
            image_url = await steps.upload(job)
            async with ctx.limiter.slot(), ctx.provider_slot():
                record = await steps.submit((job, image_url))
                paid = record.cost_usd or 0.0
                ctx.emit("submitted", job)
                record = await steps.poll((job, record))
    elif action is Action.POLL:
        async with ctx.limiter.slot(), ctx.provider_slot():
            assert record is not None
            record = await steps.poll((job, record))
    assert record is not None
    if record.phase is Phase.SUCCEEDED:
        if ctx.limiter.waiting:
            # Rows are queued for the slot this row just freed, and the provider sits
            # idle until they are sent: let them go first. Landing is not urgent (the
            # output stays downloadable for days) and a wave of landings competes with
            # the next wave's submissions for the CPU (measured: +1 to 2 points of
            # efficiency at 200 rows). The last wave, with nobody waiting, lands at once.
            await asyncio.sleep(LAND_YIELD_S)
        try:
            record = await steps.land((job, record))
        except Exception as exc:
            await remember_output(ctx, job, record)
            return JobOutcome(
                RowStatus.FAILED,
                error=f"landing failed ({exc}); the video is paid for and the next run lands "
                "it without paying again",
                record=record,
                paid_usd=paid,
            )
    outcome = outcome_of(record, paid_usd=paid)
    return outcome


def _trouble(job: Job, exc: BaseException) -> JobOutcome:
    record: InputRecord | None = job.record
    status = RowStatus.FAILED
    if record is not None and record.phase in (Phase.SUBMITTING, Phase.AMBIGUOUS):
        status = RowStatus.AMBIGUOUS
    elif record is None:
        status = RowStatus.NOT_SUBMITTED
    return JobOutcome(status, error=f"{type(exc).__name__}: {exc}", record=record)


def _why(outcome: JobOutcome) -> str:
    return f" ({outcome.error})" if outcome.error and outcome.status != RowStatus.LANDED else ""


def dry_run_summary(ctx: RunContext, source: str, plans: list[Any], jobs: list[Job]) -> RunSummary:
    """Counts and the cost estimate without calling the API or writing anything."""
    counts: dict[str, int] = {"rejected": sum(1 for p in plans if p.error)}
    estimate = 0.0
    for job in jobs:
        action = action_for(ctx, job)
        counts[str(action)] = counts.get(str(action), 0) + len(job.rows)
        if action is Action.SUBMIT:
            estimate += ctx.options.price(job.duration)
    with contextlib.suppress(Exception):
        ctx.log.info("dry run: %s; estimated cost $%.2f", counts, estimate)
    return RunSummary(
        run_id=ctx.run_id,
        source=source,
        dest=ctx.dest.uri,
        rows=len(plans),
        inputs=len(jobs),
        counts=counts,
        estimated_usd=round(estimate, 4),
        dry_run=True,
    )
