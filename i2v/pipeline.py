"""The batch pipeline's steps as plain async functions: no Prefect here.

`flows/batch.py` strings these together as Prefect tasks; each step reads and writes
the per-input record in `i2v.state` so that a crash anywhere can be resumed without
paying twice and without losing a paid video.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from i2v.client import AtlasClient
from i2v.concurrency import AdaptiveLimiter, Budget
from i2v.config import BatchOptions
from i2v.errors import (
    AmbiguousSubmissionError,
    AtlasAPIError,
    AtlasError,
    AuthError,
    BadRequestError,
    ConfigError,
    I2VError,
    InputError,
    InsufficientBalanceError,
    ModelNotFoundError,
    OutputError,
    PredictionFailedError,
    PredictionTimeoutError,
    RateLimitedError,
    RegionBlockedError,
    StorageError,
)
from i2v.manifest import Manifest, ManifestRow
from i2v.media import MAX_IMAGE_BYTES, ImageInfo, check_image, check_mp4_file
from i2v.models import build_inputs, get_model
from i2v.polling import DurationEstimator, PollSchedule
from i2v.state import (
    Action,
    InputRecord,
    Phase,
    StateStore,
    input_identity,
    next_action,
    utcnow,
)
from i2v.storage import Storage, presign_location, read_location

log = logging.getLogger("i2v.pipeline")


class RowStatus(StrEnum):
    """A row's status in the results table (the contract's six values)."""

    LANDED = "landed"
    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    NOT_SUBMITTED = "not_submitted"
    AMBIGUOUS = "ambiguous"


class StopReason(StrEnum):
    BALANCE = "balance"  # 402: stop submitting, the rest stays resumable
    AUTH = "auth"  # 401/403/451: nothing will work
    MODEL = "model"  # 404 on the model


class RunAborted(I2VError):
    """The run cannot go on (bad key, unknown model): exit 2 in the CLI."""


SAFE_ID = re.compile(r"^[^/\\\x00]{1,200}$")


@dataclass
class RowPlan:
    """One manifest row after its picture was read and checked."""

    row: ManifestRow
    row_id: str = ""
    identity: str | None = None
    picture: ImageInfo | None = None
    error: str | None = None

    @property
    def video_key(self) -> str:
        return f"videos/{self.row_id}.mp4"


@dataclass
class JobOutcome:
    status: RowStatus
    error: str | None = None
    error_code: str | None = None
    record: InputRecord | None = None
    paid_usd: float = 0.0  # spent by THIS run on this input


@dataclass
class Job:
    """One distinct paid input; several manifest rows may share it."""

    identity: str
    rows: list[RowPlan]
    image_location: str
    picture: ImageInfo
    prompt: str
    duration: int | None
    options: dict[str, Any]
    record: InputRecord | None = None
    outcome: JobOutcome | None = None
    submitted_monotonic: float | None = None  # when this run's POST was answered

    @property
    def primary(self) -> RowPlan:
        return self.rows[0]

    @property
    def name(self) -> str:
        return self.primary.row_id


class NotSubmitted(I2VError):
    """This input was not sent: budget, balance or a stopped run. Resumable."""


class Rejected(I2VError):
    """The provider refused the request body (400): the input is at fault."""


@dataclass
class RunStats:
    submissions: int = 0
    uploads: int = 0
    polls: int = 0
    downloads: int = 0
    started_monotonic: float = field(default_factory=time.monotonic)


Listener = Callable[[str, "Job", "JobOutcome | None"], None]
# Process-wide listeners (the CLI's progress bar) copied into every new run.
LISTENERS: list[Listener] = []


class RunContext:
    """Everything the steps of one run share."""

    def __init__(
        self,
        *,
        options: BatchOptions,
        dest: Storage,
        run_id: str,
        client: AtlasClient | None = None,
        s3_client: Any | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.options = options
        self.model = str(options.model)
        self.spec = get_model(self.model)
        self.dest = dest
        self.state = StateStore(dest)
        self.run_id = run_id
        self._client = client
        self.s3_client = s3_client
        self.log: logging.Logger | logging.LoggerAdapter[Any] = logger or log
        self.estimator = DurationEstimator(initial_s=options.expected_duration_s)
        self.schedule = PollSchedule(
            estimator=self.estimator,
            min_interval_s=options.poll_interval_s,
        )
        self.limiter = AdaptiveLimiter(options.concurrency)
        self.budget = Budget(options.budget_usd)
        self.upload_gate = asyncio.Semaphore(max(4, min(32, options.concurrency)))
        self.land_gate = asyncio.Semaphore(max(4, min(16, options.concurrency)))
        self.prefetch = asyncio.Semaphore(options.concurrency * 2)
        self.uploads: dict[str, asyncio.Future[str]] = {}
        self.stop_reason: StopReason | None = None
        self.stop_message: str | None = None
        self.stats = RunStats()
        self.listeners: list[Listener] = list(LISTENERS)
        # The flow layer swaps this for a Prefect global-concurrency slot.
        self.provider_slot: Callable[[], AbstractAsyncContextManager[None]] = _no_slot

    @property
    def client(self) -> AtlasClient:
        if self._client is None:
            raise ConfigError("this run has no API client (dry run?)")
        return self._client

    def stop(self, reason: StopReason, message: str) -> None:
        if self.stop_reason is None:
            self.stop_reason, self.stop_message = reason, message
            self.log.error("stopping submissions: %s", message)

    def emit(self, event: str, job: Job, outcome: JobOutcome | None = None) -> None:
        for listener in self.listeners:
            with contextlib.suppress(Exception):  # a progress display must never sink a row
                listener(event, job, outcome)

    async def put_state(self, record: InputRecord) -> None:
        await asyncio.to_thread(self.state.put, record)


@contextlib.asynccontextmanager
async def _no_slot() -> AsyncIterator[None]:
    yield


# --------------------------------------------------------------------------- checking


async def check_rows(
    manifest: Manifest,
    options: BatchOptions,
    *,
    s3_client: Any | None = None,
    workers: int = 16,
) -> list[RowPlan]:
    """Read and check every row's picture; give each row its id and input identity.

    Only digests are kept, never the picture bytes, so memory stays flat for big
    manifests. A bad row gets an error and never stops the others.
    """
    spec = get_model(str(options.model))
    model_options = model_options_of(options)
    gate = asyncio.Semaphore(workers)
    # One read and decode per distinct picture, however many rows use it.
    checked: dict[str, asyncio.Future[ImageInfo]] = {}

    async def check_picture(row: ManifestRow) -> ImageInfo:
        assert row.image_location is not None
        pending = checked.get(row.image_location)
        if pending is None:

            async def read() -> ImageInfo:
                async with gate:
                    return await asyncio.to_thread(_read_and_check, row, s3_client)

            pending = checked[row.image_location] = asyncio.ensure_future(read())
        return await asyncio.shield(pending)

    async def one(row: ManifestRow) -> RowPlan:
        plan = RowPlan(row=row)
        if row.error:
            plan.error = row.error
            return plan
        try:
            build_inputs(
                spec,
                image="-",
                prompt=row.prompt,
                duration=row.duration,
                options=model_options,
            )
            info = await check_picture(row)
        except InputError as exc:
            plan.error = str(exc)
            return plan
        plan.picture = info
        plan.identity = input_identity(
            picture_sha256=info.sha256,
            prompt=row.prompt,
            duration=row.duration if spec.durations else None,
            model=spec.name,
            options=model_options,
        )
        return plan

    plans = list(await asyncio.gather(*(one(r) for r in manifest.rows)))
    assign_row_ids(plans)
    return plans


def _read_and_check(row: ManifestRow, s3_client: Any | None) -> ImageInfo:
    assert row.image_location is not None
    data = read_location(row.image_location, s3_client=s3_client, max_bytes=MAX_IMAGE_BYTES)
    return check_image(data, name=row.image)


def model_options_of(options: BatchOptions) -> dict[str, Any]:
    """The model options that are part of an input's identity and of the request body."""
    spec = get_model(str(options.model))
    out: dict[str, Any] = {}
    if "enable_prompt_expansion" in spec.options:
        out["enable_prompt_expansion"] = bool(options.enable_prompt_expansion)
    return out


def assign_row_ids(plans: Sequence[RowPlan]) -> None:
    """Use the manifest's id, else a short content hash, else the CSV line number."""
    taken: set[str] = {p.row.id for p in plans if p.row.id}
    for plan in plans:
        if plan.row.id:
            plan.row_id = plan.row.id
            if not SAFE_ID.match(plan.row_id) or plan.row_id in {".", ".."}:
                plan.error = plan.error or (
                    f"id {plan.row_id!r} cannot name a file: no '/' or '\\', at most 200 chars"
                )
            continue
        base = plan.identity[:12] if plan.identity else f"line-{plan.row.line}"
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        plan.row_id = candidate
        taken.add(candidate)


def group_jobs(plans: Sequence[RowPlan], options: BatchOptions) -> list[Job]:
    """One job per distinct identity, in manifest order; duplicates ride along."""
    jobs: dict[str, Job] = {}
    for plan in plans:
        if plan.error or plan.identity is None or plan.picture is None:
            continue
        job = jobs.get(plan.identity)
        if job is None:
            assert plan.row.image_location is not None
            jobs[plan.identity] = Job(
                identity=plan.identity,
                rows=[plan],
                image_location=plan.row.image_location,
                picture=plan.picture,
                prompt=plan.row.prompt,
                duration=plan.row.duration,
                options=model_options_of(options),
            )
        else:
            job.rows.append(plan)
    return list(jobs.values())


async def load_records(ctx: RunContext, jobs: Sequence[Job], workers: int = 32) -> None:
    """Attach each job's durable record (one small read per input, in parallel)."""
    gate = asyncio.Semaphore(workers)

    async def one(job: Job) -> None:
        async with gate:
            job.record = await asyncio.to_thread(ctx.state.get, job.identity)

    await asyncio.gather(*(one(j) for j in jobs))


# ---------------------------------------------------------------------------- preflight


async def preflight(client: AtlasClient, model: str) -> None:
    """Prove the model exists and the key works before anything is paid.

    Two free requests: the public model list, and a GET of a prediction that cannot
    exist, which answers 401 for a bad key and 400/404 for a good one.
    """
    try:
        await client.check_model(model)
    except ModelNotFoundError as exc:
        raise RunAborted(
            f"model {model!r} is not offered by Atlas Cloud ({exc}); check the `model` option"
        ) from None
    try:
        await client.get_prediction("i2v-preflight-key-check")
    except (AuthError, RegionBlockedError) as exc:
        raise RunAborted(
            f"Atlas Cloud refused the API key (HTTP {exc.status_code}): check ATLASCLOUD_API_KEY"
            " (or the Secret block named in the config)"
        ) from None
    except AtlasAPIError as exc:
        if exc.status_code in (400, 404):
            return
        raise


# ------------------------------------------------------------------------------ steps


async def image_url_for(ctx: RunContext, job: Job) -> str:
    """The URL the provider reads the picture from: as given, presigned, or uploaded."""
    location = job.image_location
    if location.startswith("https://"):
        return location
    if location.startswith("s3://") and ctx.options.s3_pictures == "presign":
        return await asyncio.to_thread(presign_location, location, s3_client=ctx.s3_client)
    if location.startswith("http://"):  # loopback only: the manifest refused the rest
        return location
    # Rows with different prompts often share a picture: upload each picture once per
    # run, and let concurrent jobs wait for the same upload.
    pending = ctx.uploads.get(job.picture.sha256)
    if pending is None:
        pending = asyncio.ensure_future(_upload_once(ctx, job))
        ctx.uploads[job.picture.sha256] = pending
    try:
        return await asyncio.shield(pending)
    except BaseException:
        if pending.done() and ctx.uploads.get(job.picture.sha256) is pending:
            del ctx.uploads[job.picture.sha256]  # a failed upload may be retried
        raise


async def _upload_once(ctx: RunContext, job: Job) -> str:
    location = job.image_location
    async with ctx.upload_gate:
        data = await asyncio.to_thread(
            read_location, location, s3_client=ctx.s3_client, max_bytes=MAX_IMAGE_BYTES
        )
        # The bytes were decoded and checked when the rows were read; a matching digest
        # proves these are the same checked bytes, and never uploads anything else.
        if hashlib.sha256(data).hexdigest() != job.picture.sha256:
            raise InputError(f"{job.primary.row.image} changed while the run was going on")
        uploaded = await ctx.client.upload_media(
            data, filename=Path(location).name or "picture", content_type=job.picture.content_type
        )
        ctx.stats.uploads += 1
        return uploaded.download_url


async def submit(ctx: RunContext, job: Job, image_url: str) -> InputRecord:
    """Pay for one prediction, recording the intent first and the id right after.

    Raises NotSubmitted (resumable), Rejected (the body was refused) or RunAborted.
    """
    if ctx.stop_reason is not None:
        raise NotSubmitted(ctx.stop_message or "submissions stopped")
    cost = ctx.options.price(job.duration)
    if not ctx.budget.reserve(cost):
        raise NotSubmitted(
            f"not submitted: the budget of ${ctx.options.budget_usd:.2f} would be exceeded "
            f"(spent ${ctx.budget.spent_usd:.2f}, next video ${cost:.2f}); raise --budget-usd "
            "and rerun"
        )
    inputs = build_inputs(
        ctx.spec, image=image_url, prompt=job.prompt, duration=job.duration, options=job.options
    )
    before = job.record
    base = before or InputRecord(
        identity=job.identity,
        model=ctx.model,
        picture_sha256=job.picture.sha256,
        prompt=job.prompt,
        duration=job.duration,
        phase=Phase.SUBMITTING,
    )
    intent = base.moved(
        Phase.SUBMITTING,
        ctx.run_id,
        attempts=base.attempts + 1,
        submit_started_at=utcnow(),
        prediction_id=None,
        error=None,
        error_code=None,
    )
    try:
        await ctx.put_state(intent)  # write-ahead: no POST unless this is durable
    except Exception:
        ctx.budget.release(cost)
        raise
    try:
        prediction = await ctx.client.generate_video(ctx.model, inputs)
    except AmbiguousSubmissionError as exc:
        ctx.budget.commit(cost)  # a paid job may exist
        record = intent.moved(
            Phase.AMBIGUOUS,
            ctx.run_id,
            cost_usd=cost,
            error=ambiguous_message(str(exc)),
        )
        await ctx.put_state(record)
        job.record = record
        raise
    except (InsufficientBalanceError, AuthError, ModelNotFoundError, RegionBlockedError) as exc:
        ctx.budget.release(cost)
        await _undo_intent(ctx, job, before)
        if isinstance(exc, InsufficientBalanceError):
            ctx.stop(
                StopReason.BALANCE,
                "not submitted: Atlas Cloud says the balance is insufficient (HTTP 402); "
                "top up and rerun: rows already paid for will not be paid again",
            )
            raise NotSubmitted(ctx.stop_message or "") from None
        if isinstance(exc, ModelNotFoundError):
            ctx.stop(StopReason.MODEL, f"model {ctx.model!r} is unknown to Atlas Cloud ({exc})")
        else:
            ctx.stop(
                StopReason.AUTH,
                f"Atlas Cloud refused the API key (HTTP {exc.status_code}): "
                "check ATLASCLOUD_API_KEY",
            )
        raise RunAborted(ctx.stop_message or str(exc)) from None
    except (BadRequestError, RateLimitedError) as exc:
        ctx.budget.release(cost)
        await _undo_intent(ctx, job, before)
        if isinstance(exc, BadRequestError):
            raise Rejected(f"the provider refused the request: {exc}") from None
        raise NotSubmitted(f"not submitted: rate limited by Atlas Cloud ({exc}); rerun") from None
    job.submitted_monotonic = time.monotonic()
    ctx.budget.commit(cost)
    ctx.limiter.on_success()
    ctx.stats.submissions += 1
    record = intent.moved(
        Phase.SUBMITTED,
        ctx.run_id,
        prediction_id=prediction.id,
        submitted_at=utcnow(),
        cost_usd=cost,
    )
    # The id is the only way back to a paid job: log it before trying to persist it.
    ctx.log.info("%s: submitted as prediction %s", job.name, prediction.id)
    await _put_with_retry(ctx, record)
    job.record = record
    return record


def ambiguous_message(detail: str) -> str:
    return (
        f"the submission's answer was lost ({detail}); a paid job may exist. Not resubmitted: "
        "check the Atlas Cloud console, then rerun with --resubmit-ambiguous to pay again"
    )


async def _undo_intent(ctx: RunContext, job: Job, before: InputRecord | None) -> None:
    """The POST provably created no job: put the record back as it was."""
    if before is None:
        await asyncio.to_thread(ctx.dest.delete, ctx.state.key(job.identity))
    else:
        await ctx.put_state(before)


async def _put_with_retry(ctx: RunContext, record: InputRecord, attempts: int = 5) -> None:
    for attempt in range(attempts):
        try:
            await ctx.put_state(record)
            return
        except StorageError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5 * 2**attempt)


async def wait(ctx: RunContext, job: Job, record: InputRecord) -> InputRecord:
    """Poll a known prediction to a terminal state; the record says how it ended."""
    assert record.prediction_id is not None
    pid = record.prediction_id
    polls = 0

    def count(_: Any) -> None:
        nonlocal polls
        polls += 1

    try:
        prediction = await ctx.client.wait_for_prediction(
            pid,
            deadline_s=ctx.options.timeout_s,
            schedule=ctx.schedule,
            submitted_monotonic=job.submitted_monotonic,
            on_poll=count,
        )
    except PredictionFailedError as exc:
        record = record.moved(
            Phase.FAILED,
            ctx.run_id,
            error=exc.error or exc.message,
            error_code=exc.error_code,
            completed_at=utcnow(),
        )
    except PredictionTimeoutError:
        record = record.moved(
            Phase.TIMED_OUT,
            ctx.run_id,
            error=(
                f"prediction {pid} not done after {ctx.options.timeout_s:g} s; it stays paid "
                "and the next run polls it again instead of paying again"
            ),
        )
    except (AuthError, RegionBlockedError) as exc:
        ctx.stop(StopReason.AUTH, f"Atlas Cloud refused the API key while polling ({exc})")
        raise RunAborted(ctx.stop_message or "") from None
    except AtlasAPIError as exc:
        if exc.status_code in (400, 404):
            record = record.moved(
                Phase.FAILED,
                ctx.run_id,
                error=f"prediction {pid} is unknown to the provider ({exc})",
                error_code=str(exc.status_code),
            )
        else:
            record = _poll_trouble(ctx, record, pid, exc)
    except AtlasError as exc:
        record = _poll_trouble(ctx, record, pid, exc)
    else:
        record = record.moved(
            Phase.SUCCEEDED,
            ctx.run_id,
            output_url=prediction.output_url,
            predict_time_s=prediction.predict_time_s,
            completed_at=prediction.completed_at or utcnow(),
            error=None,
            error_code=None,
        )
    finally:
        ctx.stats.polls += polls
    if record.phase is not Phase.SUCCEEDED:
        await _put_with_retry(ctx, record)
    # A success is persisted by `land` (as landed) or by `remember_output` if landing
    # fails: until then the durable record says "submitted", which a rerun resumes by
    # polling, for free. One write fewer per row on the hot path.
    job.record = record
    ctx.log.debug("%s: %d polls for %s", job.name, polls, pid)
    return record


def _poll_trouble(
    ctx: RunContext, record: InputRecord, pid: str, exc: BaseException
) -> InputRecord:
    return record.moved(
        Phase.TIMED_OUT,
        ctx.run_id,
        error=f"could not poll prediction {pid} ({exc}); the next run polls it again",
    )


async def land(ctx: RunContext, job: Job, record: InputRecord) -> InputRecord:
    """Stream the video into DEST via a staged file, check it, record it as landed."""
    if not record.output_url:
        raise OutputError(f"prediction {record.prediction_id} finished without an output URL")
    key = job.primary.video_key
    async with ctx.land_gate:
        staging = await asyncio.to_thread(ctx.dest.staging_dir)
        # Named after the input, so a landing killed half-way leaves a part file that
        # the next attempt overwrites instead of an orphan.
        tmp = staging / f"{job.identity[:32]}.mp4.part"
        try:
            with open(tmp, "wb") as sink:  # noqa: ASYNC230 - local staging file, no network
                result = await ctx.client.download_output(record.output_url, sink)
            ctx.stats.downloads += 1
            await asyncio.to_thread(check_mp4_file, tmp)
            await asyncio.to_thread(ctx.dest.put_file, key, tmp, content_type="video/mp4")
        finally:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
    record = record.moved(
        Phase.LANDED,
        ctx.run_id,
        video_key=key,
        video_sha256=result.sha256,
        video_bytes=result.bytes,
        error=None,
        error_code=None,
    )
    await _put_with_retry(ctx, record)
    job.record = record
    return record


async def remember_output(ctx: RunContext, job: Job, record: InputRecord) -> None:
    """Landing failed: keep the output URL so the next run lands without polling."""
    with contextlib.suppress(StorageError):
        await ctx.put_state(record)


async def place_copies(ctx: RunContext, job: Job, record: InputRecord) -> None:
    """Give every row of a landed input its own `videos/<id>.mp4` (copies, no payment)."""
    assert record.video_key is not None
    for plan in job.rows:
        if plan.video_key == record.video_key:
            continue
        exists = await asyncio.to_thread(ctx.dest.exists, plan.video_key)
        if not exists:
            await asyncio.to_thread(ctx.dest.copy, record.video_key, plan.video_key)


async def video_present(ctx: RunContext, record: InputRecord) -> bool:
    return bool(record.video_key) and await asyncio.to_thread(
        ctx.dest.exists, str(record.video_key)
    )


# ---------------------------------------------------------------------------- outcome


def outcome_of(record: InputRecord | None, *, paid_usd: float = 0.0) -> JobOutcome:
    """Map a durable record onto the row status a person reads in the table."""
    if record is None:
        return JobOutcome(RowStatus.NOT_SUBMITTED, error="not submitted")
    status = {
        Phase.LANDED: RowStatus.LANDED,
        Phase.FAILED: RowStatus.FAILED,
        Phase.TIMED_OUT: RowStatus.TIMED_OUT,
        Phase.AMBIGUOUS: RowStatus.AMBIGUOUS,
        Phase.SUBMITTING: RowStatus.AMBIGUOUS,
        Phase.SUBMITTED: RowStatus.TIMED_OUT,
        Phase.SUCCEEDED: RowStatus.FAILED,
    }[record.phase]
    error = record.error
    if status is RowStatus.AMBIGUOUS and (record.phase is Phase.SUBMITTING or not error):
        error = ambiguous_message("the run stopped between sending and recording the answer")
    return JobOutcome(
        status, error=error, error_code=record.error_code, record=record, paid_usd=paid_usd
    )


def action_for(ctx: RunContext, job: Job) -> Action:
    return next_action(job.record, resubmit_ambiguous=ctx.options.resubmit_ambiguous)
