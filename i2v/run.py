"""What one run works with: checked rows, distinct paid inputs (jobs), their outcomes,
and the run's shared context (client, DEST, limits, budget, listeners, stop switch).

Plain data and bookkeeping only: the row's life is `i2v.lifecycle.advance`, the steps
that touch the world are in `i2v.steps` and `i2v.landing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from i2v.claims import Records
from i2v.client import AtlasClient
from i2v.concurrency import AdaptiveLimiter, Budget, LiveWindow
from i2v.config import BatchOptions
from i2v.errors import ConfigError, I2VError
from i2v.journal import Journal
from i2v.manifest import ManifestRow
from i2v.media import ImageInfo
from i2v.models import get_model
from i2v.outage import DestWatch, Kept
from i2v.polling import DurationEstimator, PollSchedule
from i2v.row_models import RowModel
from i2v.sheet import SheetFrames
from i2v.spend import Billing, billing_of
from i2v.state import Action, InputRecord, Phase, StateStore
from i2v.storage import Storage

log = logging.getLogger("i2v.run")


class RowStatus(StrEnum):
    """A row's status in the results table (the contract's six values)."""

    LANDED = "landed"
    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    NOT_SUBMITTED = "not_submitted"
    AMBIGUOUS = "ambiguous"


class StopReason(StrEnum):
    BALANCE = "balance"  # the account is empty: stop submitting, the rest stays resumable
    AUTH = "auth"  # 401/403/451 or a block page: nothing will work
    MODEL = "model"  # the model is unknown
    SIGNAL = "signal"  # SIGINT / SIGTERM / a cancelled flow run: wind down, keep every id
    APPROVAL = "approval"  # over approve_over_usd and not approved: nothing paid
    DEST = "dest"  # DEST did not answer for `dest_wait_s`: stop submitting, keep every id
    HANDOVER = "handover"  # another run took the rest over: submit nothing new, land the rest


class RunAborted(I2VError):
    """The run cannot go on (bad key, unknown model, blocked): exit 2 in the CLI."""


class NotSubmitted(I2VError):
    """This input was not sent: budget, balance or a stopped run. Resumable."""


class Rejected(I2VError):
    """The provider refused the request body (400): the input is at fault."""


@dataclass
class RowPlan:
    """One manifest row after its picture was read and checked."""

    row: ManifestRow
    row_id: str = ""
    identity: str | None = None
    picture: ImageInfo | None = None
    error: str | None = None
    # The row's model from its published schema (None: the config's hand-table model).
    row_model: RowModel | None = None
    end_picture: ImageInfo | None = None  # the checked `end_image`, when the row has one

    @property
    def video_key(self) -> str:
        return f"videos/{self.row_id}.mp4"


@dataclass(frozen=True, slots=True)
class RecordFacts:
    """What the results table shows of an input's record: all a settled row keeps.

    A full record (with its history) is about 3.4 KB in memory, these facts a few
    hundred bytes: a 100,000-row run keeps one of these per input, not the record.
    """

    prediction_id: str | None = None
    video_sha256: str | None = None
    video_bytes: int | None = None
    predict_time_s: float | None = None
    cost_usd: float | None = None
    submitted_at: str | None = None
    completed_at: str | None = None
    video_duration_s: float | None = None
    video_width: int | None = None
    video_height: int | None = None
    video_fps: float | None = None
    qc: str | None = None
    phase: Phase | None = None  # for the bill (`i2v.spend`)

    @classmethod
    def of(cls, record: InputRecord | None) -> RecordFacts | None:
        if record is None:
            return None
        return cls(**{name: getattr(record, name) for name in cls.__slots__})


@dataclass(frozen=True)
class JobOutcome:
    """How one input ended in this run (decided by `i2v.lifecycle.outcome_of` only).

    `record` is where the input's record ended; a settled outcome keeps only its
    `facts` (see `settled`).
    """

    status: RowStatus
    error: str | None = None
    error_code: str | None = None
    record: InputRecord | None = None
    paid_usd: float = 0.0  # spent by THIS run on this input
    facts: RecordFacts | None = None

    @property
    def billing(self) -> Billing | None:
        """Where this input's price stands with the provider (`i2v.spend`)."""
        f = self.shown
        return billing_of(f.phase, f.prediction_id, f.cost_usd, self.error_code) if f else None

    @property
    def shown(self) -> RecordFacts | None:
        """The record's facts for the results table."""
        return self.facts if self.record is None else RecordFacts.of(self.record)

    def settled(self) -> JobOutcome:
        """The same outcome, reduced to what the results table needs."""
        if self.record is None:
            return self
        return dataclasses.replace(self, record=None, facts=RecordFacts.of(self.record))


@dataclass
class Job:
    """One distinct paid input; several manifest rows may share it.

    `record` is the durable record as this run found it; `outcome` is set once, when the
    row's life in this run is over.
    """

    identity: str
    rows: list[RowPlan]
    image_location: str
    picture: ImageInfo
    prompt: str
    duration: int | None
    options: dict[str, Any]
    record: InputRecord | None = None
    row_model: RowModel | None = None  # see RowPlan
    end_location: str | None = None
    end_picture: ImageInfo | None = None
    action: Action = Action.SUBMIT  # what `i2v.lifecycle.triage` decided from the record
    outcome: JobOutcome | None = None

    @property
    def primary(self) -> RowPlan:
        return self.rows[0]

    @property
    def name(self) -> str:
        return self.primary.row_id


@dataclass
class RunStats:
    submissions: int = 0
    uploads: int = 0
    polls: int = 0
    downloads: int = 0
    started_monotonic: float = field(default_factory=time.monotonic)


Listener = Callable[[str, "Job", "JobOutcome | None"], None]
# A run's phase ("checking pictures", "rows checked", ...) and what it knows then.
PhaseListener = Callable[[str, dict[str, int]], None]
ProviderSlot = Callable[[], AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def no_slot() -> AsyncIterator[None]:
    yield


class RunContext:
    """Everything the steps of one run share; complete when constructed.

    `client` is None only for a run that calls no API (a dry run, or nothing to do).
    `limiter` is passed in because the client reports 429s to it; `records` because the
    rows' records were read (and their versions remembered) before the run started.
    """

    def __init__(
        self,
        *,
        options: BatchOptions,
        dest: Storage,
        run_id: str,
        client: AtlasClient | None = None,
        limiter: AdaptiveLimiter | None = None,
        s3_client: Any | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        listeners: Sequence[Listener] = (),
        provider_slot: ProviderSlot = no_slot,
        records: Records | None = None,
        catalog_price_usd: float | None = None,
        simulated: bool = False,
        frames: SheetFrames | None = None,
    ) -> None:
        self.options = options
        self.model = str(options.model)
        self.spec = get_model(self.model)
        self.dest = dest
        self.records = records or Records(StateStore(dest))
        self.run_id = run_id
        self.log: logging.Logger | logging.LoggerAdapter[Any] = logger or log
        # DEST's health, and the paid records it did not take (`i2v.outage`).
        self.watch = DestWatch(dest.uri, options.dest_wait_s, self.log)
        self.kept = Kept(self.records, self.watch, Journal(dest.uri, run_id), self.log)
        self._client = client
        self.s3_client = s3_client
        self.estimator = DurationEstimator(initial_s=options.expected_duration_s)
        self.schedule = PollSchedule(
            estimator=self.estimator, min_interval_s=options.poll_interval_s
        )
        self.limiter = limiter or AdaptiveLimiter(options.concurrency)
        self.budget = Budget(options.budget_usd)
        self.upload_gate = asyncio.Semaphore(max(4, min(32, options.concurrency)))
        self.land_gate = asyncio.Semaphore(max(4, min(16, options.concurrency)))
        self.prefetch = asyncio.Semaphore(options.concurrency * 2)
        # Rows live at once: the prefetch bound plus a read-ahead, and as many landing.
        self.window = LiveWindow(
            ahead=options.concurrency * 2 + max(8, options.concurrency // 4),
            landing=max(16, options.concurrency),
        )
        self.uploads: dict[str, asyncio.Future[str]] = {}
        self.listeners = tuple(listeners)
        self.provider_slot = provider_slot
        self.simulated = simulated  # the provider is our simulator: spend is not real
        # Contact-sheet tiles taken while each video is local (None: no sheet this run).
        self.frames = frames
        # The provider's own price when its catalog lists one: budgets use the higher.
        self.catalog_price_usd = catalog_price_usd
        self.stop_reason: StopReason | None = None
        self.stop_message: str | None = None
        # Set by a stop signal: polls give up their wait (the ids are kept), nothing new starts.
        self.winding_down = asyncio.Event()
        self.stats = RunStats()

    @property
    def client(self) -> AtlasClient:
        if self._client is None:
            raise ConfigError("this run has no API client (dry run?)")
        return self._client

    def stop(self, reason: StopReason, message: str) -> None:
        """Stop submitting (the first reason wins); rows already paid keep their ids."""
        if self.stop_reason is None:
            self.stop_reason, self.stop_message = reason, message
            self.log.warning("stopping submissions: %s", message)
        if reason is StopReason.SIGNAL:
            self.winding_down.set()

    def emit(self, event: str, job: Job, outcome: JobOutcome | None = None) -> None:
        if event == "outcome" and outcome and outcome.paid_usd and outcome.billing == "refunded":
            self.budget.refund(outcome.paid_usd)  # the provider gave it back: later rows go
        for listener in self.listeners:
            with contextlib.suppress(Exception):  # a progress display must never sink a row
                listener(event, job, outcome)


class RunControl:
    """What a caller hands a run from outside: progress listeners and a stop switch.

    The CLI builds one per command; the flow attaches each run context it makes, so a
    signal that arrives before the context exists still stops the run once it does.
    """

    def __init__(
        self, listeners: Sequence[Listener] = (), phases: Sequence[PhaseListener] = ()
    ) -> None:
        self.listeners = tuple(listeners)
        self.phases = tuple(phases)
        self.signal: str | None = None  # e.g. "SIGTERM", once one asked the run to stop
        # The command that started the run (`i2v run ...`, paths absolute), kept in its
        # summary so `i2v status` can tell the exact command to rerun or resubmit.
        self.command: list[str] | None = None
        self._contexts: list[RunContext] = []
        self.refused: str | None = None  # why the run may pay nothing (approval refused)
        # The CLI's own question (yes/no on a terminal) instead of a flow pause.
        self.approver: Callable[[str], bool] | None = None
        self.handed_over: str | None = None  # why the rest is another run's (`hand_over`)

    def phase(self, name: str, **counts: int) -> None:
        """Tell the caller where the run is (a progress display; never fails the run)."""
        for listener in self.phases:
            with contextlib.suppress(Exception):
                listener(name, counts)

    def attach(self, ctx: RunContext) -> None:
        self._contexts.append(ctx)
        if self.refused is not None:
            ctx.stop(StopReason.APPROVAL, self.refused)
        if self.signal is not None:
            self._stop(ctx)
        if self.handed_over is not None:
            ctx.stop(StopReason.HANDOVER, self.handed_over)

    def hand_over(self, message: str) -> None:
        """Submit nothing new: another run takes the rest. Unlike a stop signal, rows
        already sent are still polled and landed here."""
        self.handed_over = self.handed_over or message
        for ctx in self._contexts:
            ctx.stop(StopReason.HANDOVER, self.handed_over)

    def request_stop(self, signal_name: str) -> None:
        """Stop submitting at once; let POSTs on the wire finish; keep every id."""
        self.signal = self.signal or signal_name
        for ctx in self._contexts:
            self._stop(ctx)

    def _stop(self, ctx: RunContext) -> None:
        ctx.stop(
            StopReason.SIGNAL,
            f"stopped by {self.signal}: not submitted; rerun to go on (paid rows are polled, "
            "not paid again)",
        )
