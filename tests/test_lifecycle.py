"""The row's life without Prefect: every transition of `next_action` through `advance`,
the status mapping, claims between two runs, Budget and AdaptiveLimiter.

Steps here are direct test steps that script what the provider answers; the durable
records are real files in a real DEST folder.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from i2v.claims import Records
from i2v.concurrency import AdaptiveLimiter, Budget
from i2v.config import BatchOptions
from i2v.dest import open_storage
from i2v.errors import InputError, StorageError
from i2v.lifecycle import advance, outcome_of
from i2v.manifest import ManifestRow
from i2v.media import ImageInfo
from i2v.run import (
    Job,
    NotSubmitted,
    Rejected,
    RowPlan,
    RowStatus,
    RunAborted,
    RunContext,
)
from i2v.state import (
    HOST,
    NO_OUTPUT,
    Action,
    InputRecord,
    Phase,
    StateStore,
    next_action,
    utcnow,
)

PRICE = 0.28


def make_job(identity: str = "a" * 64, copies: int = 0) -> Job:
    picture = ImageInfo(
        format="PNG",
        width=640,
        height=480,
        size_bytes=10,
        content_type="image/png",
        sha256="p" * 64,
    )
    rows = [
        RowPlan(
            row=ManifestRow(
                line=2 + n,
                id=f"r{n}",
                image="a.png",
                image_location="/x/a.png",
                prompt="pan left",
                duration=6,
            ),
            row_id=f"r{n}",
            identity=identity,
            picture=picture,
        )
        for n in range(1 + copies)
    ]
    return Job(
        identity=identity,
        rows=rows,
        image_location="/x/a.png",
        picture=picture,
        prompt="pan left",
        duration=6,
        options={},
    )


def make_ctx(dest: Path, run_id: str = "run-a", **options: Any) -> RunContext:
    opts = BatchOptions.model_validate({"concurrency": 2, **options})
    storage = open_storage(dest)
    return RunContext(
        options=opts, dest=storage, run_id=run_id, records=Records(StateStore(storage))
    )


def record(phase: Phase, **fields: Any) -> InputRecord:
    return InputRecord(
        identity="a" * 64, model="minimax/hailuo-2.3/i2v-standard", phase=phase, **fields
    )


class ScriptedSteps:
    """Steps that answer as scripted and write what the real steps would write."""

    def __init__(self, ctx: RunContext, *, poll_to: Phase = Phase.SUCCEEDED, **fail: Any) -> None:
        self.ctx = ctx
        self.poll_to = poll_to
        self.fail = fail
        self.calls: list[str] = []

    async def upload(self, job: Job) -> str:
        self.calls.append("upload")
        return "https://example.invalid/a.png"

    async def generate(self, job: Job, rec: InputRecord | None, image_url: str) -> InputRecord:
        self.calls.append("generate")
        if "generate" in self.fail:
            raise self.fail["generate"]
        base = rec or record(Phase.SUBMITTING)
        intent = base.moved(
            Phase.SUBMITTING,
            self.ctx.run_id,
            owner_run=self.ctx.run_id,
            submit_started_at=utcnow(),
            attempts=base.attempts + 1,
            error=None,
        )
        other = self.ctx.records.claim(intent)
        if other is not None:
            return other
        return self.ctx.records.put(
            intent.moved(Phase.SUBMITTED, self.ctx.run_id, prediction_id="pred-1", cost_usd=PRICE)
        )

    async def poll(self, job: Job, rec: InputRecord) -> InputRecord:
        self.calls.append("poll")
        if "poll" in self.fail:
            raise self.fail["poll"]
        if self.poll_to is Phase.SUCCEEDED:
            return rec.moved(Phase.SUCCEEDED, output_url="https://example.invalid/v.mp4")
        return self.ctx.records.put(rec.moved(self.poll_to, error=f"ended {self.poll_to}"))

    async def land(self, job: Job, rec: InputRecord) -> InputRecord:
        self.calls.append("land")
        if "land" in self.fail:
            raise self.fail["land"]
        self.ctx.dest.write_bytes(job.primary.video_key, b"\x00\x00\x00\x18ftypmp42")
        return self.ctx.records.put(rec.moved(Phase.LANDED, video_key=job.primary.video_key))


def run(ctx: RunContext, job: Job, steps: ScriptedSteps, start: InputRecord | None) -> Any:
    if start is not None:
        ctx.records.store.put(start)
    start = ctx.records.get(job.identity)
    return asyncio.run(advance(ctx, job, start, steps))


# ------------------------------------------------------------------- transitions


TRANSITIONS = [
    # (name, starting record, poll ends in, steps called, status, paid)
    ("new input", None, Phase.SUCCEEDED, ["upload", "generate", "poll", "land"], "landed", PRICE),
    (
        "known id resumes",
        record(Phase.SUBMITTED, prediction_id="p"),
        Phase.SUCCEEDED,
        ["poll", "land"],
        "landed",
        0.0,
    ),
    (
        "timed out again",
        record(Phase.TIMED_OUT, prediction_id="p"),
        Phase.TIMED_OUT,
        ["poll"],
        "timed_out",
        0.0,
    ),
    (
        "provider done, not landed",
        record(Phase.SUCCEEDED, prediction_id="p", output_url="https://example.invalid/v.mp4"),
        Phase.SUCCEEDED,
        ["land"],
        "landed",
        0.0,
    ),
    (
        "provider failed",
        record(Phase.FAILED, prediction_id="p", error="moderation", error_code="1039"),
        Phase.SUCCEEDED,
        [],
        "failed",
        0.0,
    ),
    (
        "done without output polls again",
        record(Phase.FAILED, prediction_id="p", error_code=NO_OUTPUT),
        Phase.SUCCEEDED,
        ["poll", "land"],
        "landed",
        0.0,
    ),
    (
        "ambiguous is held",
        record(Phase.AMBIGUOUS, error="lost"),
        Phase.SUCCEEDED,
        [],
        "ambiguous",
        0.0,
    ),
    ("dead claim is held", record(Phase.SUBMITTING), Phase.SUCCEEDED, [], "ambiguous", 0.0),
    (
        "new input, poll times out",
        None,
        Phase.TIMED_OUT,
        ["upload", "generate", "poll"],
        "timed_out",
        PRICE,
    ),
]


@pytest.mark.parametrize(
    ("start", "poll_to", "calls", "status", "paid"),
    [t[1:] for t in TRANSITIONS],
    ids=[t[0] for t in TRANSITIONS],
)
def test_every_transition(
    tmp_path: Path,
    start: InputRecord | None,
    poll_to: Phase,
    calls: list[str],
    status: str,
    paid: float,
) -> None:
    ctx = make_ctx(tmp_path)
    steps = ScriptedSteps(ctx, poll_to=poll_to)
    outcome = run(ctx, make_job(), steps, start)
    assert steps.calls == calls
    assert outcome.status == status, outcome.error
    assert outcome.paid_usd == pytest.approx(paid)


def test_resubmit_ambiguous_pays_once_more(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, resubmit_ambiguous=True)
    steps = ScriptedSteps(ctx)
    outcome = run(ctx, make_job(), steps, record(Phase.AMBIGUOUS, attempts=1, error="lost"))
    assert steps.calls == ["upload", "generate", "poll", "land"]
    assert outcome.status == RowStatus.LANDED and outcome.record is not None
    assert outcome.record.attempts == 2


def test_landed_with_video_places_copies_and_calls_nothing(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    job = make_job(copies=2)
    ctx.dest.write_bytes("videos/r0.mp4", b"video")
    steps = ScriptedSteps(ctx)
    outcome = run(ctx, job, steps, record(Phase.LANDED, video_key="videos/r0.mp4"))
    assert steps.calls == [] and outcome.status == RowStatus.LANDED
    assert ctx.dest.read_bytes("videos/r2.mp4") == b"video"


def test_landed_video_missing_is_fetched_again_or_failed_without_url(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    steps = ScriptedSteps(ctx)
    url = "https://example.invalid/v.mp4"
    refetched = run(
        ctx, make_job(), steps, record(Phase.LANDED, video_key="videos/r0.mp4", output_url=url)
    )
    assert steps.calls == ["land"] and refetched.status == RowStatus.LANDED

    other = make_ctx(tmp_path / "other")
    lost = run(
        other, make_job(), ScriptedSteps(other), record(Phase.LANDED, video_key="videos/r0.mp4")
    )
    assert lost.status == RowStatus.FAILED and "missing from DEST" in (lost.error or "")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotSubmitted("budget"), "not_submitted"),
        (Rejected("400 bad prompt"), "rejected"),
        (InputError("picture changed"), "rejected"),
        (RunAborted("bad key"), "not_submitted"),
        (StorageError("disk full"), "not_submitted"),
        (RuntimeError("bug"), "not_submitted"),
    ],
)
def test_a_failing_generate_decides_the_status_from_the_record(
    tmp_path: Path, error: BaseException, status: str
) -> None:
    ctx = make_ctx(tmp_path)
    outcome = run(ctx, make_job(), ScriptedSteps(ctx, generate=error), None)
    assert outcome.status == status
    assert str(error) in (outcome.error or "")


def test_a_failing_poll_after_payment_is_never_not_submitted(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    outcome = run(ctx, make_job(), ScriptedSteps(ctx, poll=RuntimeError("bug")), None)
    assert outcome.status == RowStatus.FAILED and outcome.paid_usd == pytest.approx(PRICE)
    assert outcome.record is not None and outcome.record.prediction_id == "pred-1"


def test_a_failed_landing_keeps_the_output_url_for_the_next_run(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    outcome = run(ctx, make_job(), ScriptedSteps(ctx, land=OSError("disk gone")), None)
    assert outcome.status == RowStatus.FAILED and "landing failed" in (outcome.error or "")
    stored = StateStore(ctx.dest).get("a" * 64)
    assert stored is not None and stored.phase is Phase.SUCCEEDED and stored.output_url
    assert next_action(stored) is Action.LAND


# ------------------------------------------------------------------------ claims


def test_a_run_that_loses_the_claim_follows_the_winner_and_pays_nothing(tmp_path: Path) -> None:
    """Run B decided to submit (no record), but run A claimed first and recorded its id."""
    winner = make_ctx(tmp_path, run_id="run-a")
    loser = make_ctx(tmp_path, run_id="run-b")
    job = make_job()
    assert loser.records.get(job.identity) is None  # B read: nothing there
    asyncio.run(advance(winner, job, None, ScriptedSteps(winner, poll_to=Phase.TIMED_OUT)))
    steps = ScriptedSteps(loser)
    outcome = asyncio.run(advance(loser, job, None, steps))
    assert steps.calls == ["upload", "generate", "poll", "land"]
    assert outcome.status == RowStatus.LANDED and outcome.paid_usd == 0.0
    assert outcome.record is not None and outcome.record.prediction_id == "pred-1"


def test_a_live_claim_is_followed_until_its_id_appears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import i2v.lifecycle as lifecycle

    monkeypatch.setattr(lifecycle, "FOLLOW_EVERY_S", 0.01)
    ctx = make_ctx(tmp_path, run_id="run-b")
    store = StateStore(ctx.dest)
    claim = record(
        Phase.SUBMITTING,
        owner_run="run-a",
        owner_host=HOST,
        owner_pid=os.getpid(),
        submit_started_at=utcnow(),
    )
    store.put(claim)
    job = make_job()
    start = ctx.records.get(job.identity)
    assert next_action(start) is Action.FOLLOW

    async def other_run_records_its_id() -> None:
        await asyncio.sleep(0.1)
        store.put(claim.moved(Phase.SUBMITTED, "run-a", prediction_id="pred-a"))

    async def both() -> Any:
        steps = ScriptedSteps(ctx)
        outcome, _ = await asyncio.gather(
            advance(ctx, job, start, steps), other_run_records_its_id()
        )
        return outcome, steps

    outcome, steps = asyncio.run(both())
    assert steps.calls == ["poll", "land"], "followed: polled the winner's prediction"
    assert outcome.status == RowStatus.LANDED and outcome.record.prediction_id == "pred-a"


def test_a_claim_whose_process_died_is_ambiguous_at_once(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    claim = record(
        Phase.SUBMITTING,
        owner_run="run-a",
        owner_host=HOST,
        owner_pid=dead_pid,
        submit_started_at=utcnow(),
    )
    assert next_action(claim) is Action.HOLD_AMBIGUOUS
    elsewhere = claim.model_copy(update={"owner_host": "another-host"})
    assert next_action(elsewhere) is Action.FOLLOW
    assert next_action(elsewhere, claim_ttl_s=0.0) is Action.HOLD_AMBIGUOUS


# ------------------------------------------------------------------------ status


@pytest.mark.parametrize(
    ("phase", "status"),
    [
        (Phase.LANDED, "landed"),
        (Phase.FAILED, "failed"),
        (Phase.TIMED_OUT, "timed_out"),
        (Phase.AMBIGUOUS, "ambiguous"),
        (Phase.SUBMITTING, "ambiguous"),
        (Phase.SUBMITTED, "timed_out"),
        (Phase.SUCCEEDED, "failed"),
    ],
)
def test_status_of_every_phase(phase: Phase, status: str) -> None:
    outcome = outcome_of(record(phase, error="x"))
    assert outcome.status == status
    if phase is Phase.SUBMITTING:
        assert "--resubmit-ambiguous" in (outcome.error or "")


def test_status_without_a_record_is_not_submitted() -> None:
    assert outcome_of(None).status == RowStatus.NOT_SUBMITTED
    assert outcome_of(None, error=Rejected("no")).status == RowStatus.REJECTED
    paid = record(Phase.SUBMITTED, prediction_id="p")
    assert outcome_of(paid, error=NotSubmitted("stopped")).status == RowStatus.TIMED_OUT


# -------------------------------------------------------------- budget and limiter


def test_budget_reserves_commits_and_releases() -> None:
    budget = Budget(0.56)
    assert budget.reserve(0.28) and budget.reserve(0.28)
    assert not budget.reserve(0.28), "a third video would pass the cap"
    budget.release(0.28)
    budget.commit(0.28)
    assert budget.spent_usd == pytest.approx(0.28)
    assert budget.reserve(0.28) and not budget.reserve(0.01)
    assert Budget(None).reserve(1e9)
    ten = Budget(2.80)
    assert all(ten.reserve(0.28) for _ in range(10)), "10 x $0.28 fits in $2.80"


def test_limiter_halves_on_429_once_per_storm_and_regrows() -> None:
    limiter = AdaptiveLimiter(8, cooldown_s=60.0)
    limiter.on_rate_limited()
    limiter.on_rate_limited()  # same storm: no second cut
    assert limiter.limit == 4 and limiter.cuts == 1
    for _ in range(40):
        limiter.on_success()
    assert limiter.limit == 8, "additive growth back to the user's cap, never above"


def test_limiter_bounds_in_flight() -> None:
    async def go() -> int:
        limiter = AdaptiveLimiter(3)

        async def one() -> None:
            async with limiter.slot():
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(12)))
        return limiter.peak_in_flight

    assert asyncio.run(go()) == 3


# --------------------------------------------------------------- the live window


class PacedSteps:
    """Distinct inputs through paced steps; counts the rows live and the tasks alive."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.started: set[str] = set()
        self.settled: set[str] = set()
        self.peak_live = 0
        self.peak_tasks = 0
        self.in_provider = 0
        self.peak_in_provider = 0
        self.calls = 0

    def _start(self, job: Job) -> None:
        self.calls += 1
        self.started.add(job.identity)
        self.peak_live = max(self.peak_live, len(self.started - self.settled))
        self.peak_tasks = max(self.peak_tasks, len(asyncio.all_tasks()))

    def on_settled(self, job: Job) -> None:
        self.settled.add(job.identity)

    async def upload(self, job: Job) -> str:
        self._start(job)
        return "https://example.invalid/a.png"

    async def generate(self, job: Job, rec: InputRecord | None, image_url: str) -> InputRecord:
        self._start(job)
        self.in_provider += 1
        self.peak_in_provider = max(self.peak_in_provider, self.in_provider)
        new = InputRecord(
            identity=job.identity,
            model="minimax/hailuo-2.3/i2v-standard",
            phase=Phase.SUBMITTED,
            prediction_id=f"pred-{job.identity[:8]}",
            owner_run=self.ctx.run_id,
            cost_usd=PRICE,
        )
        return self.ctx.records.put(new)

    async def poll(self, job: Job, rec: InputRecord) -> InputRecord:
        self._start(job)
        await asyncio.sleep(0.005)
        self.in_provider -= 1
        return rec.moved(Phase.SUCCEEDED, output_url="https://example.invalid/v.mp4")

    async def land(self, job: Job, rec: InputRecord) -> InputRecord:
        self._start(job)
        await asyncio.sleep(0.02)  # slower than the provider: a landing backlog builds
        self.ctx.dest.write_bytes(job.primary.video_key, b"\x00\x00\x00\x18ftypmp42")
        return self.ctx.records.put(rec.moved(Phase.LANDED, video_key=job.primary.video_key))


def distinct_jobs(n: int) -> list[Job]:
    jobs = []
    for i in range(n):
        job = make_job(identity=f"{i:064x}")
        job.rows[0].row_id = f"row-{i}"
        jobs.append(job)
    return jobs


def test_the_live_window_stays_bounded_however_long_the_manifest(tmp_path: Path) -> None:
    from i2v.lifecycle import run_jobs

    ctx = make_ctx(tmp_path / "dest", concurrency=4)
    steps = PacedSteps(ctx)
    jobs = distinct_jobs(400)
    asyncio.run(run_jobs(ctx, steps, jobs, on_settled=steps.on_settled))

    assert [j.outcome.status for j in jobs if j.outcome] == [RowStatus.LANDED] * 400
    bound = ctx.window.ahead_limit + ctx.window.landing_limit
    assert bound < 100, "the bound is the concurrency's, not the manifest's"
    assert steps.peak_live <= bound and ctx.window.peak_live <= bound
    assert ctx.window.peak_ahead <= ctx.window.ahead_limit
    assert steps.peak_tasks <= bound + 5, "a coroutine per live row, not per manifest row"
    assert steps.peak_in_provider <= 4
    # Settled rows keep their result facts, not their records.
    assert all(j.record is None and j.outcome and j.outcome.record is None for j in jobs)
    assert all(j.outcome and j.outcome.shown and j.outcome.shown.cost_usd for j in jobs)


def test_a_rerun_of_landed_rows_settles_them_without_a_step(tmp_path: Path) -> None:
    from i2v.lifecycle import run_jobs, triage

    ctx = make_ctx(tmp_path / "dest", concurrency=4)
    asyncio.run(run_jobs(ctx, PacedSteps(ctx), distinct_jobs(60)))
    # One landed video is gone from DEST: only that row works (lands again, unpaid).
    (tmp_path / "dest" / "videos" / "row-7.mp4").unlink()

    again = make_ctx(tmp_path / "dest", run_id="run-b", concurrency=4)
    jobs = distinct_jobs(60)
    asyncio.run(triage(again, jobs))
    steps = PacedSteps(again)
    asyncio.run(run_jobs(again, steps, jobs, on_settled=steps.on_settled))

    assert [j.outcome.status for j in jobs if j.outcome] == [RowStatus.LANDED] * 60
    assert steps.started == {jobs[7].identity} and steps.calls == 1, "only the land step"
    assert again.window.peak_live == 1
    assert (tmp_path / "dest" / "videos" / "row-7.mp4").exists()


def test_triage_holds_one_chunk_of_records_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from i2v import lifecycle
    from i2v.lifecycle import run_jobs, triage

    first = make_ctx(tmp_path / "dest", concurrency=4)
    asyncio.run(run_jobs(first, PacedSteps(first), distinct_jobs(100)))
    (tmp_path / "dest" / "videos" / "row-42.mp4").unlink()

    monkeypatch.setattr(lifecycle, "TRIAGE_CHUNK", 16)
    again = make_ctx(tmp_path / "dest", run_id="run-b", concurrency=4)
    jobs = distinct_jobs(120)  # 100 landed, 20 never seen
    held: list[int] = []
    read = again.records.get

    def get(identity: str) -> InputRecord | None:
        held.append(sum(j.record is not None for j in jobs))
        return read(identity)

    monkeypatch.setattr(again.records, "get", get)
    asyncio.run(triage(again, jobs))

    assert len(held) == 120 and max(held) <= 16 + 1, "one chunk, and the row missing a video"
    unsettled = [j for j in jobs if j.outcome is None]
    assert [j.name for j in unsettled] == ["row-42", *(f"row-{i}" for i in range(100, 120))]
    assert unsettled[0].action is Action.DONE and unsettled[0].record is not None
    assert {j.action for j in unsettled[1:]} == {Action.SUBMIT}
    settled = [j for j in jobs if j.outcome is not None]
    assert all(j.record is None and j.outcome.record is None for j in settled if j.outcome)
    assert all(j.outcome.shown and j.outcome.shown.cost_usd == PRICE for j in settled if j.outcome)


def test_a_manifest_column_named_like_ours_is_carried_beside_it(tmp_path: Path) -> None:
    from i2v.results import result_rows

    ctx = make_ctx(tmp_path / "dest")
    job = make_job()
    job.rows[0].row.extras.update(status="approved", notes="hero shot")
    job.outcome = outcome_of(record(Phase.FAILED, prediction_id="p", error="moderation")).settled()
    frame = result_rows(
        job.rows, [job], model=ctx.model, dest=ctx.dest, extra_columns=["status", "notes"]
    )
    assert list(frame.columns[-2:]) == ["manifest_status", "notes"]
    row = frame.iloc[0]
    assert (row["status"], row["manifest_status"], row["notes"]) == (
        "failed",
        "approved",
        "hero shot",
    )
    assert row["prediction_id"] == "p" and str(frame["video_bytes"].dtype) == "Int64"
