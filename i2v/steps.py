"""The steps of a row's life up to a finished prediction, as plain async functions:
upload, generate, poll (the fourth, land, is `i2v.landing`); and `put`, how each step
makes its new record durable.

Each takes the run context, the job and the record it starts from, and returns the new
record (already durable when it matters); none changes the job or anything else the
caller holds. `i2v.lifecycle.advance` decides which step runs next; the flow layer runs
them as micro-batched Prefect tasks (`flows.batch.PrefectSteps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from i2v.errors import (
    AmbiguousSubmissionError,
    AtlasError,
    AuthError,
    BadRequestError,
    BlockedError,
    DestUnreachable,
    InputError,
    InsufficientBalanceError,
    ModelNotFoundError,
    OutputError,
    PredictionFailedError,
    PredictionNotFoundError,
    PredictionTimeoutError,
    RateLimitedError,
    RegionBlockedError,
    StorageError,
    StorageUnavailable,
)
from i2v.locations import presign_location, read_location
from i2v.media import MAX_IMAGE_BYTES, ImageInfo
from i2v.netguard import provider_fetches
from i2v.private_hosts import worker_allowance
from i2v.row_plans import job_price, request_of
from i2v.run import Job, NotSubmitted, Rejected, RunAborted, RunContext, StopReason
from i2v.state import HOST, NO_OUTPUT, PURGED, InputRecord, Phase, age_s, utcnow

# ------------------------------------------------------------------------------ upload


async def upload(ctx: RunContext, job: Job) -> str:
    """The URL the provider reads the picture from: as given, presigned, or uploaded.

    A picture URL goes as given only when the provider can fetch it too: https on a
    host the worker's allowance does not cover (`i2v.netguard.provider_fetches`);
    pictures from allowed internal hosts go up as bytes, like local files. A row's end
    picture goes up here too (`end_url` then finds it done).
    """
    url = await _picture_url(ctx, job.image_location, job.picture, job.primary.row.image)
    await end_url(ctx, job)
    return url


async def end_url(ctx: RunContext, job: Job) -> str | None:
    """The end picture's URL (uploaded once per run, like every picture), if any."""
    if job.end_location is None or job.end_picture is None:
        return None
    return await _picture_url(ctx, job.end_location, job.end_picture, "end_image")


async def _picture_url(ctx: RunContext, location: str, picture: ImageInfo, shown: str) -> str:
    if location.startswith(("https://", "http://")) and await asyncio.to_thread(
        provider_fetches, location, worker_allowance()
    ):
        return location
    if location.startswith("s3://") and ctx.options.s3_pictures == "presign":
        return await asyncio.to_thread(presign_location, location, s3_client=ctx.s3_client)
    # Rows with different prompts often share a picture: upload each picture once per
    # run, and let concurrent jobs wait for the same upload.
    pending = ctx.uploads.get(picture.sha256)
    if pending is None:
        pending = asyncio.ensure_future(_upload_once(ctx, location, picture, shown))
        ctx.uploads[picture.sha256] = pending
    try:
        return await asyncio.shield(pending)
    except BaseException:
        if pending.done() and ctx.uploads.get(picture.sha256) is pending:
            del ctx.uploads[picture.sha256]  # a failed upload may be retried
        raise


async def _upload_once(ctx: RunContext, location: str, picture: ImageInfo, shown: str) -> str:
    async with ctx.upload_gate:
        data = await asyncio.to_thread(
            read_location, location, s3_client=ctx.s3_client, max_bytes=MAX_IMAGE_BYTES
        )
        # The bytes were decoded and checked when the rows were read; a matching digest
        # proves these are the same checked bytes, and never uploads anything else.
        if hashlib.sha256(data).hexdigest() != picture.sha256:
            raise InputError(f"{shown} changed while the run was going on")
        web = location.startswith(("https://", "http://"))
        name = Path(urlsplit(location).path if web else location).name
        uploaded = await ctx.client.upload_media(
            data, filename=name or "picture", content_type=picture.content_type
        )
        ctx.stats.uploads += 1
        return uploaded.download_url


# ---------------------------------------------------------------------------- generate


async def generate(
    ctx: RunContext, job: Job, record: InputRecord | None, image_url: str
) -> InputRecord:
    """Pay for one prediction: claim the input, POST, record the id right after.

    Returns this run's SUBMITTED (or AMBIGUOUS) record, or, when another run holds the
    input's claim, that run's current record (nothing paid here). Raises NotSubmitted
    (resumable), Rejected (the body was refused) or RunAborted.
    """
    if ctx.stop_reason is not None:
        raise NotSubmitted(ctx.stop_message or "submissions stopped")
    cost = job_price(ctx.options, job, ctx.catalog_price_usd)
    model, inputs = request_of(ctx, job, image_url, await end_url(ctx, job))
    if not ctx.budget.reserve(cost):
        raise NotSubmitted(
            f"not submitted: the budget of ${ctx.options.budget_usd:.2f} would be exceeded "
            f"(spent ${ctx.budget.spent_usd:.2f}, next video ${cost:.2f}); raise --budget-usd "
            "and rerun"
        )
    base = record or InputRecord(
        identity=job.identity,
        model=model,
        picture_sha256=job.picture.sha256,
        prompt=job.prompt,
        duration=job.duration,
        phase=Phase.SUBMITTING,
    )
    intent = base.moved(
        Phase.SUBMITTING,
        ctx.run_id,
        attempts=base.attempts + 1,
        schema_version=job.row_model.schema_version if job.row_model else None,
        submit_started_at=utcnow(),
        owner_run=ctx.run_id,
        owner_host=HOST,
        owner_pid=os.getpid(),
        prediction_id=None,
        output_url=None,
        error=None,
        error_code=None,
    )
    try:
        # Write-ahead and atomic: no POST unless this run alone holds the input's claim.
        # While DEST does not answer the claim waits with it: nothing is paid unrecorded.
        other = await ctx.watch.call(ctx.records.claim, intent)
    except StorageError as exc:
        ctx.budget.release(cost)
        if isinstance(exc, DestUnreachable):
            # The claim may have reached DEST unanswered: the next run withdraws it.
            await ctx.kept.keep_claim(intent, record)
            ctx.stop(StopReason.DEST, f"not submitted: {exc}; rerun when DEST answers")
            raise NotSubmitted(ctx.stop_message or str(exc)) from None
        raise NotSubmitted(f"not submitted: DEST did not take the claim ({exc})") from None
    except BaseException:
        ctx.budget.release(cost)
        raise
    if other is not None:
        ctx.budget.release(cost)
        ctx.log.info("%s: another run holds this input (%s); following it", job.name, other.phase)
        return other
    try:
        prediction = await ctx.client.generate_video(model, inputs)
    except AmbiguousSubmissionError as exc:
        ctx.budget.commit(cost)  # a paid job may exist
        lost = intent.moved(
            Phase.AMBIGUOUS, ctx.run_id, cost_usd=cost, error=ambiguous_message(str(exc))
        )
        return await put(ctx, lost)
    except (InsufficientBalanceError, AuthError, BlockedError, RegionBlockedError) as exc:
        await _withdraw(ctx, intent, record, cost)
        if isinstance(exc, InsufficientBalanceError):
            ctx.stop(
                StopReason.BALANCE,
                "not submitted: Atlas Cloud says the balance is insufficient "
                f"(HTTP {exc.status_code}); top up and rerun: rows already paid for will not "
                "be paid again",
            )
            raise NotSubmitted(ctx.stop_message or "") from None
        ctx.stop(StopReason.AUTH, auth_message(exc))
        raise RunAborted(ctx.stop_message or str(exc)) from None
    except ModelNotFoundError as exc:
        await _withdraw(ctx, intent, record, cost)
        if job.row_model is not None:  # the row's own model: the row's problem alone
            raise Rejected(f"model {model!r} is unknown to Atlas Cloud ({exc})") from None
        ctx.stop(StopReason.MODEL, f"model {model!r} is unknown to Atlas Cloud ({exc})")
        raise RunAborted(ctx.stop_message or str(exc)) from None
    except (BadRequestError, RateLimitedError) as exc:
        await _withdraw(ctx, intent, record, cost)
        if isinstance(exc, BadRequestError):
            raise Rejected(f"the provider refused the request: {exc}") from None
        raise NotSubmitted(f"not submitted: rate limited by Atlas Cloud ({exc}); rerun") from None
    ctx.budget.commit(cost)
    ctx.limiter.on_success()
    ctx.stats.submissions += 1
    submitted = intent.moved(
        Phase.SUBMITTED,
        ctx.run_id,
        prediction_id=prediction.id,
        submitted_at=utcnow(),
        cost_usd=cost,
    )
    # The id is the only way back to a paid job: log it before trying to persist it.
    ctx.log.info("%s: submitted as prediction %s", job.name, prediction.id)
    return await put(ctx, submitted)


def auth_message(exc: AtlasError) -> str:
    if isinstance(exc, BlockedError):
        return str(exc)
    return (
        f"Atlas Cloud refused the API key (HTTP {exc.status_code}): check ATLASCLOUD_API_KEY"
        " (or the Secret block named in the config)"
    )


def ambiguous_message(detail: str) -> str:
    return (
        f"the submission's answer was lost ({detail}); a paid job may exist. Not resubmitted: "
        "check the Atlas Cloud console, then rerun with --resubmit-ambiguous to pay again"
    )


async def _withdraw(
    ctx: RunContext, intent: InputRecord, before: InputRecord | None, cost: float
) -> None:
    """The POST provably created no job: give back the budget and the claim."""
    ctx.budget.release(cost)
    try:
        await asyncio.to_thread(ctx.records.withdraw, intent, before)
    except StorageError:  # a claim left in DEST would read as ambiguous: the next run withdraws it
        await ctx.kept.keep_claim(intent, before)


async def put(ctx: RunContext, record: InputRecord) -> InputRecord:
    """Persist `record` (compare-and-swap); returns what DEST now holds for the input.

    Every record written after a claim is paid for. One DEST does not take is kept
    (`i2v.outage.Kept`: in memory, the local journal, written when DEST answers) and
    the row goes on: its prediction id is never dropped for want of a write.
    """
    async with ctx.kept.guard(record.identity):
        try:
            held = await asyncio.to_thread(ctx.records.put, record)
        except StorageError as exc:
            if isinstance(exc, StorageUnavailable):
                ctx.watch.failed(exc)
            await ctx.kept.keep(record, exc)
            return record
        ctx.watch.ok()
        ctx.kept.written(record.identity)
        return held


# -------------------------------------------------------------------------------- poll


async def poll(ctx: RunContext, job: Job, record: InputRecord) -> InputRecord:
    """Poll a known prediction to a terminal state; the record says how it ended.

    A stop signal ends the wait early: the id is kept and the next run polls again.
    """
    assert record.prediction_id is not None
    pid = record.prediction_id
    polls = 0

    def count(_: Any) -> None:
        nonlocal polls
        polls += 1

    waited = asyncio.ensure_future(
        ctx.client.wait_for_prediction(
            pid,
            deadline_s=ctx.options.timeout_s,
            schedule=ctx.schedule,
            submitted_monotonic=time.monotonic() - age_s(record.submitted_at),
            on_poll=count,
        )
    )
    stopped = asyncio.ensure_future(ctx.winding_down.wait())
    try:
        await asyncio.wait({waited, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not waited.done():
            waited.cancel()
            with contextlib.suppress(BaseException):
                await waited
    ctx.stats.polls += polls
    if waited.cancelled():
        new = record.moved(
            Phase.TIMED_OUT,
            ctx.run_id,
            error=f"the run was stopped before prediction {pid} finished; it stays paid and "
            "the next run polls it again instead of paying again",
        )
    else:
        new = _polled(ctx, record, pid, waited)
    ctx.log.debug("%s: %d polls for %s", job.name, polls, pid)
    if new.phase is Phase.SUCCEEDED:
        # Persisted by `land` (as landed) or `remember_output` if landing fails: until
        # then the durable record says "submitted", which a rerun resumes by polling,
        # for free. One write fewer per row on the hot path.
        return new
    return await put(ctx, new)


def _polled(
    ctx: RunContext, record: InputRecord, pid: str, waited: asyncio.Future[Any]
) -> InputRecord:
    """The record after a finished wait, from its result or its exception."""
    exc = waited.exception()
    if exc is None:
        prediction = waited.result()
        return record.moved(
            Phase.SUCCEEDED,
            ctx.run_id,
            output_url=prediction.output_url,
            predict_time_s=prediction.predict_time_s,
            completed_at=prediction.completed_at or utcnow(),
            error=None,
            error_code=None,
        )
    if isinstance(exc, PredictionFailedError):
        return record.moved(
            Phase.FAILED,
            ctx.run_id,
            error=exc.error or exc.message,
            error_code=exc.error_code,
            completed_at=utcnow(),
        )
    if isinstance(exc, OutputError):  # done at the provider, but no video to fetch
        return record.moved(
            Phase.FAILED,
            ctx.run_id,
            error=f"{exc.message}; it is paid: the next run polls prediction {pid} again "
            "instead of paying again",
            error_code=NO_OUTPUT,
        )
    if isinstance(exc, PredictionNotFoundError):
        return record.moved(
            Phase.FAILED,
            ctx.run_id,
            error=f"prediction {pid} was paid for but the provider no longer knows it "
            f"(purged after its retention: {exc.message}); not resubmitted: look it up in "
            "the Atlas Cloud console",
            error_code=PURGED,
        )
    if isinstance(exc, PredictionTimeoutError):
        return record.moved(
            Phase.TIMED_OUT,
            ctx.run_id,
            error=f"prediction {pid} not done after {ctx.options.timeout_s:g} s; it stays "
            "paid and the next run polls it again instead of paying again",
        )
    if isinstance(exc, AuthError | BlockedError | RegionBlockedError):
        ctx.stop(StopReason.AUTH, f"{auth_message(exc)} (while polling)")
    detail = str(exc) if isinstance(exc, AtlasError) else f"{type(exc).__name__}: {exc}"
    return record.moved(
        Phase.TIMED_OUT,
        ctx.run_id,
        error=f"could not poll prediction {pid} ({detail}); the next run polls it again",
    )
