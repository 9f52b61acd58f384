"""The life of one paid input in one run, and the one place a row's status is decided.

    record --next_action--> submit: upload -> generate -> poll -> land (+ copies)
                            poll:   poll -> land          follow: wait for the other
                            land:   land                  run's id, then poll -> land
                            done:   copies                final / hold: nothing

`advance` walks those transitions with whatever `Steps` it is given (Prefect tasks in
the flow, scripted steps in tests); `outcome_of` maps where it ended onto the results
table's status. Nothing here talks to Prefect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from i2v.concurrency import parallel_map
from i2v.errors import DestUnreachable, I2VError, InputError, UnreadableRecord
from i2v.landing import place_copies, remember_output, video_present
from i2v.run import (
    Job,
    JobOutcome,
    NotSubmitted,
    Rejected,
    RowPlan,
    RowStatus,
    RunAborted,
    RunContext,
)
from i2v.state import UNREADABLE_RECORD, Action, InputRecord, Phase, age_s, next_action

# How long a finished row lets queued submissions go first before it lands.
LAND_YIELD_S = 0.5
# How often a run that lost an input's claim looks for the winner's prediction id.
FOLLOW_EVERY_S = 0.5
# Beyond the generate timeout, how long a claim stays presumed alive (the POST's own
# retries on 429 and connect errors can outlast one timeout).
CLAIM_SLACK_S = 60.0


class Steps(Protocol):
    """The four steps of a row's life; each returns the input's new record."""

    async def upload(self, job: Job) -> str: ...

    async def generate(
        self, job: Job, record: InputRecord | None, image_url: str
    ) -> InputRecord: ...

    async def poll(self, job: Job, record: InputRecord) -> InputRecord: ...

    async def land(self, job: Job, record: InputRecord) -> InputRecord: ...


def claim_ttl_s(ctx: RunContext) -> float:
    """How long another run's `submitting` claim without an id is presumed alive."""
    return ctx.options.api.generate_timeout_s + CLAIM_SLACK_S


def action_for(ctx: RunContext, record: InputRecord | None) -> Action:
    return next_action(
        record,
        resubmit_ambiguous=ctx.options.resubmit_ambiguous,
        claim_ttl_s=claim_ttl_s(ctx),
    )


# Records read and reduced at a time: all a rerun of a finished batch holds at once.
TRIAGE_CHUNK = 1024


async def triage(ctx: RunContext, jobs: Sequence[Job], workers: int = 32) -> None:
    """Read each job's durable record and decide its next action, `workers` reads at once.

    Rows with nothing to do (final, held ambiguous, landed with every video in DEST)
    are settled here and keep only their result facts: records are read a chunk at a
    time, so what a rerun holds does not grow with the records of its finished rows.
    """
    present: frozenset[str] | None = None  # videos/, listed once the first landed row shows
    for start in range(0, len(jobs), TRIAGE_CHUNK):
        chunk = jobs[start : start + TRIAGE_CHUNK]
        identities = [job.identity for job in chunk]
        found = await asyncio.to_thread(parallel_map, _read_record(ctx), identities, workers)
        for job, record in zip(chunk, found, strict=True):
            if isinstance(record, UnreadableRecord):
                job.outcome = unreadable(record)
                continue
            job.record, job.action = record, action_for(ctx, record)
            if job.action is Action.DONE and present is None:
                present = frozenset(await asyncio.to_thread(ctx.dest.list, "videos/"))
            if job.action in (Action.FINAL, Action.HOLD_AMBIGUOUS) or (
                job.action is Action.DONE and all_videos_in(job, record, present or ())
            ):
                job.outcome, job.record = outcome_of(record).settled(), None


def _read_record(ctx: RunContext) -> Callable[[str], InputRecord | UnreadableRecord | None]:
    def read(identity: str) -> InputRecord | UnreadableRecord | None:
        try:
            return ctx.records.get(identity)
        except UnreadableRecord as exc:  # that input's problem, never the run's
            return exc

    return read


def unreadable(exc: UnreadableRecord) -> JobOutcome:
    """A row whose record does not parse: a person decides (it may have been paid)."""
    return JobOutcome(RowStatus.FAILED, error=str(exc), error_code=UNREADABLE_RECORD)


async def run_jobs(
    ctx: RunContext,
    steps: Steps,
    jobs: Iterable[Job],
    *,
    on_settled: Callable[[Job], None] | None = None,
) -> None:
    """Carry every job `triage` left unsettled as far as it goes in this run, a bounded
    window of rows at a time.

    A bounded producer: a row gets its coroutine only when `ctx.window` has room, so
    what a run holds grows with its concurrency, not its manifest. Rows settled by
    `triage`, and rows not to be submitted because the run stopped, settle here without
    a coroutine, a step or a log line of their own: a rerun costs microseconds per row.
    Each settled row keeps only its result facts.
    """
    quiet = 0
    live: set[asyncio.Task[None]] = set()

    def settle(job: Job, outcome: JobOutcome, *, log: bool = True) -> None:
        job.outcome, job.record = outcome.settled(), None
        if log:
            _log_outcome(ctx, job, outcome)
        ctx.emit("outcome", job, outcome)
        if on_settled is not None:
            on_settled(job)

    async def carry(job: Job) -> None:
        try:
            settle(job, await advance(ctx, job, job.record, steps))
        finally:
            ctx.window.leave(job.identity)

    for job in jobs:
        outcome = job.outcome
        if outcome is None and job.action is Action.SUBMIT and ctx.stop_reason is not None:
            # Stopped: nothing new is submitted.
            outcome = outcome_of(
                job.record, error=NotSubmitted(ctx.stop_message or "not submitted")
            )
        if outcome is not None:
            settle(job, outcome, log=False)
            quiet += 1
            continue
        await ctx.window.enter(job.identity)
        task = asyncio.create_task(carry(job))
        live.add(task)
        task.add_done_callback(live.discard)
    if quiet:
        ctx.log.info("%d inputs settled without work (landed, final or stopped)", quiet)
    while live:
        await asyncio.wait(set(live))
    # Records DEST did not take while it was away: written now, or kept for the next run.
    await ctx.kept.drain()


def _log_outcome(ctx: RunContext, job: Job, outcome: JobOutcome) -> None:
    why = f" ({outcome.error})" if outcome.error and outcome.status != RowStatus.LANDED else ""
    ctx.log.info("%s: %s%s", job.name, outcome.status, why)
    for extra in job.rows[1:]:
        ctx.log.info("%s: %s (a copy of %s)%s", extra.row_id, outcome.status, job.name, why)


def all_videos_in(job: Job, record: InputRecord | None, present: Container[str]) -> bool:
    """The landed video and every duplicate row's copy are in DEST."""
    return (
        record is not None
        and bool(record.video_key)
        and record.video_key in present
        and all(plan.video_key in present for plan in job.rows)
    )


@dataclass
class _Walk:
    """Where a row is while `advance` carries it: what an error is judged against."""

    record: InputRecord | None
    paid: float = 0.0


async def advance(
    ctx: RunContext, job: Job, record: InputRecord | None, steps: Steps
) -> JobOutcome:
    """Every transition of `next_action`, from `record` to where this run can take it.

    Total: whatever a step raises becomes the row's outcome (one row's surprise never
    sinks the batch), judged against the furthest record the row reached.
    """
    walk = _Walk(record)
    try:
        return await _walk(ctx, job, steps, walk)
    except Exception as exc:
        if not isinstance(exc, I2VError):
            ctx.log.exception("%s: unexpected error", job.name)
        return outcome_of(walk.record, error=exc, paid_usd=walk.paid)


async def _walk(ctx: RunContext, job: Job, steps: Steps, walk: _Walk) -> JobOutcome:
    for _ in range(4):  # a lost claim or a withdrawn one re-decides; never loops
        record = walk.record
        action = action_for(ctx, record)
        if action in (Action.FINAL, Action.HOLD_AMBIGUOUS):
            return outcome_of(record)
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
            # Re-fetch from the provider: still paid, not paid again.
            return await _land(ctx, job, record.moved(Phase.SUCCEEDED, ctx.run_id), steps, 0.0)
        if action is Action.FOLLOW:
            assert record is not None
            walk.record = await follow(ctx, job, record)
            if walk.record is not None and action_for(ctx, walk.record) is Action.FOLLOW:
                return outcome_of(walk.record, error=_still_claimed(ctx, walk.record))
            continue
        if action is Action.LAND:
            assert record is not None
            return await _land(ctx, job, record, steps, walk.paid)
        if action is Action.SUBMIT:
            if ctx.stop_reason is not None:
                raise NotSubmitted(ctx.stop_message or "submissions stopped")
            # Upload ahead of the in-flight slot so a slot is only held while the
            # provider works; the prefetch bound keeps upload URLs from going stale.
            async with ctx.prefetch:
                if ctx.stop_reason is not None:  # stopped while this row queued
                    raise NotSubmitted(ctx.stop_message or "submissions stopped")
                image_url = await steps.upload(job)
                async with ctx.limiter.slot(), ctx.provider_slot():
                    walk.record = new = await steps.generate(job, record, image_url)
                    if new.owner_run != ctx.run_id:  # another run holds the claim
                        continue
                    walk.paid = new.cost_usd or 0.0
                    ctx.emit("submitted", job)
                    if new.phase is not Phase.SUBMITTED:
                        return outcome_of(new, paid_usd=walk.paid)
                    walk.record = await steps.poll(job, new)
        else:  # Action.POLL
            assert record is not None
            async with ctx.limiter.slot(), ctx.provider_slot():
                walk.record = await steps.poll(job, record)
        assert walk.record is not None
        if walk.record.phase is not Phase.SUCCEEDED:
            return outcome_of(walk.record, paid_usd=walk.paid)
        return await _land(ctx, job, walk.record, steps, walk.paid)
    return outcome_of(walk.record, paid_usd=walk.paid)


async def _land(
    ctx: RunContext, job: Job, record: InputRecord, steps: Steps, paid: float
) -> JobOutcome:
    ctx.window.leave_provider(job.identity)
    if ctx.limiter.waiting:
        # Rows are queued for the slot this row just freed, and the provider sits idle
        # until they are sent: let them go first. Landing is not urgent (the output
        # stays downloadable for days) and a wave of landings competes with the next
        # wave's submissions for the CPU (measured: +1 to 2 points of efficiency at 200
        # rows). The last wave, with nobody waiting, lands at once.
        await asyncio.sleep(LAND_YIELD_S)
    try:
        landed = await steps.land(job, record)
    except Exception as exc:
        await remember_output(ctx, record)
        return JobOutcome(
            RowStatus.FAILED,
            error=f"landing failed ({exc}); the video is paid for and the next run lands it "
            "without paying again",
            record=record,
            paid_usd=paid,
        )
    if landed.phase is Phase.LANDED and landed.video_key:
        await place_copies(ctx, job, landed)
    return outcome_of(landed, paid_usd=paid)


async def follow(ctx: RunContext, job: Job, record: InputRecord) -> InputRecord | None:
    """Another live run is submitting this input: wait for its prediction id.

    Returns the input's record once it moved on (or None if that run withdrew its
    claim), or the same `submitting` record when the claim went stale first.
    """
    ctx.log.info(
        "%s: run %s is submitting this input; waiting for its prediction id",
        job.name,
        record.owner_run or "?",
    )
    deadline = time.monotonic() + max(0.0, claim_ttl_s(ctx) - age_s(record.submit_started_at))
    while time.monotonic() < deadline:
        if ctx.winding_down.is_set():
            raise NotSubmitted(ctx.stop_message or "stopped while another run was submitting")
        await asyncio.sleep(FOLLOW_EVERY_S)
        try:
            current = await ctx.watch.call(ctx.records.get, job.identity)
        except DestUnreachable as exc:  # the other run's business: nothing paid here
            raise NotSubmitted(f"not submitted: another run holds this input, and {exc}") from None
        if current is None or current.phase is not Phase.SUBMITTING:
            return current
        record = current
    return record


def _still_claimed(ctx: RunContext, record: InputRecord) -> NotSubmitted:
    return NotSubmitted(
        f"handled by another run ({record.owner_run or 'unknown'}): it began submitting "
        f"this input at {record.submit_started_at} and recorded no prediction id in "
        f"{claim_ttl_s(ctx):g} s; rerun to pick up its result"
    )


# ------------------------------------------------------------------------------ status

_STATUS_OF_PHASE = {
    Phase.LANDED: RowStatus.LANDED,
    Phase.FAILED: RowStatus.FAILED,
    Phase.TIMED_OUT: RowStatus.TIMED_OUT,
    Phase.AMBIGUOUS: RowStatus.AMBIGUOUS,
    Phase.SUBMITTING: RowStatus.AMBIGUOUS,
    Phase.SUBMITTED: RowStatus.TIMED_OUT,
    Phase.SUCCEEDED: RowStatus.FAILED,
}


def outcome_of(
    record: InputRecord | None,
    *,
    error: BaseException | None = None,
    paid_usd: float = 0.0,
) -> JobOutcome:
    """A row's status: from where its record ended, or from the error that ended it.

    The only place a status is decided; the results table only reads it.
    """
    if error is not None:
        plain = isinstance(error, NotSubmitted | Rejected | InputError | RunAborted)
        message = str(error) if plain else f"{type(error).__name__}: {error}"
        if isinstance(error, Rejected | InputError):
            status = RowStatus.REJECTED
        elif record is None:
            status = RowStatus.NOT_SUBMITTED
        elif record.phase is Phase.AMBIGUOUS:
            status = RowStatus.AMBIGUOUS
        elif record.phase is Phase.SUBMITTING:  # plain: another run's live claim
            status = RowStatus.NOT_SUBMITTED if plain else RowStatus.AMBIGUOUS
        elif record.prediction_id:  # paid: plain stops leave it resumable by polling
            status = RowStatus.TIMED_OUT if plain else RowStatus.FAILED
        else:
            status = RowStatus.NOT_SUBMITTED if plain else RowStatus.FAILED
        return JobOutcome(
            status,
            error=message,
            error_code=record.error_code if record else None,
            record=record,
            paid_usd=paid_usd,
        )
    if record is None:
        return JobOutcome(RowStatus.NOT_SUBMITTED, error="not submitted")
    status = _STATUS_OF_PHASE[record.phase]
    note = record.error
    if status is RowStatus.AMBIGUOUS and (record.phase is Phase.SUBMITTING or not note):
        note = stale_claim_message(record)
    return JobOutcome(
        status, error=note, error_code=record.error_code, record=record, paid_usd=paid_usd
    )


def stale_claim_message(record: InputRecord) -> str:
    """A `submitting` record whose run is gone: whether its POST left is unknown."""
    return (
        f"run {record.owner_run or '?'} claimed this input at {record.submit_started_at} and "
        "recorded no answer (it ended between claiming and recording one): if its POST "
        "was sent, a paid job exists. Not resubmitted: check the Atlas console, then rerun "
        "with --resubmit-ambiguous to pay again"
    )


def rejected(plan: RowPlan) -> JobOutcome:
    """The outcome of a row refused by the checks before any call."""
    return outcome_of(None, error=InputError(plan.error or "rejected"))


def not_processed() -> JobOutcome:
    """The outcome of a row this run never got to (e.g. a shard that did not run)."""
    return outcome_of(None, error=NotSubmitted("not processed"))
