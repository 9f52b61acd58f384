"""When to poll a prediction: adaptive to how long jobs of this run actually take.

A Hailuo job takes tens of seconds; polling it every second wastes requests (and eats
into the rate limit), polling it every 15 s adds latency. The schedule learns the
typical duration from the jobs already done in the run (one `DurationEstimator` shared
by all rows), sleeps until just after it, then polls at a short interval, and slows down
for the stragglers that run far past the usual. Before anything is learned, the prior
guess (`initial_s`, e.g. the config's `expected_duration_s`) plays the typical duration,
with a few early looks in case the guess is far too long.

`wait_until_done` is the poll loop itself, over any async fetch of the prediction.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from i2v._constants import NOT_VISIBLE_GRACE_S
from i2v.errors import (
    OutputError,
    PredictionFailedError,
    PredictionTimeoutError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from i2v.parsing import normalize_status, parse_time
from i2v.types import Prediction, PredictionStatus

# The first poll aims this far past the typical duration: a job that takes exactly the
# typical time is then done when the poll arrives, at a small cost in latency.
FIRST_POLL_FACTOR = 1.0
FIRST_POLL_SLACK_S = 0.03
# Between polls of a job that is not done yet, in the usual range: a tenth of a job.
SHORT_INTERVAL_FRACTION = 0.1
# A job is a straggler once past `high()` by this factor (with identical jobs `high()`
# is the typical duration, and a job just past it is merely a little slow); each second
# beyond adds OVERDUE_GROWTH seconds to the interval, up to the max.
LATE_FACTOR = 1.25
OVERDUE_GROWTH = 0.25
# Before any job of the run is done, early polls at the prior guess / 4, / 16 ... down
# to MIN_PROBE_S: cheap insurance against a prior guess far too long. No video job ends
# within a second, so probes sooner than that would only add polls.
PROBE_RATIO = 4.0
MIN_PROBE_S = 1.0
# A poll may overrun the wait's deadline by this much before it is abandoned.
LAST_POLL_ALLOWANCE_S = 2.0
# A long first wait is re-planned this often (the shared estimator may have learned).
REPLAN_EVERY_S = 1.0

logger = logging.getLogger("i2v.polling")


class DurationEstimator:
    """Rolling view of how long the run's jobs take, shared by all its rows.

    Keeps the last `window` durations. A lock makes `observe` safe from threads too;
    within one event loop it is never contended.
    """

    def __init__(self, initial_s: float = 45.0, window: int = 50) -> None:
        if initial_s <= 0:
            raise ValueError("initial_s must be positive")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.initial_s = float(initial_s)
        self._samples: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Record one finished job's duration (ignored if not a positive number)."""
        if not math.isfinite(seconds) or seconds <= 0:
            return
        with self._lock:
            self._samples.append(float(seconds))

    @property
    def count(self) -> int:
        """How many durations the window holds."""
        with self._lock:
            return len(self._samples)

    def typical(self) -> float:
        """Median of the window, or `initial_s` before anything was observed."""
        with self._lock:
            if not self._samples:
                return self.initial_s
            return float(statistics.median(self._samples))

    def high(self) -> float:
        """About the 90th percentile of the window, or `1.5 * initial_s` when empty."""
        with self._lock:
            if not self._samples:
                return self.initial_s * 1.5
            ordered = sorted(self._samples)
        # Nearest-rank percentile: with few samples it is simply the largest.
        rank = max(math.ceil(0.9 * len(ordered)) - 1, 0)
        return ordered[rank]

    def __repr__(self) -> str:
        return (
            f"DurationEstimator(n={self.count}, typical={self.typical():.1f}s, "
            f"high={self.high():.1f}s)"
        )


@dataclass
class PollSchedule:
    """Delays between the polls of one prediction.

    `min_interval_s` is the least spacing between two polls of one prediction (the CLI's
    `--poll-interval`); 0 makes tests instant. `max_interval_s` bounds the spacing of
    polls of a job far past its expected duration.
    """

    estimator: DurationEstimator
    min_interval_s: float = 1.0
    max_interval_s: float = 15.0
    not_visible_grace_s: float = NOT_VISIBLE_GRACE_S

    def next_delay(self, elapsed_s: float, polls: int) -> float:
        """Seconds to sleep before the next poll.

        Args:
            elapsed_s: seconds since the job was submitted.
            polls: polls already done for this job.
        """
        floor = max(self.min_interval_s, 0.0)
        ceiling = max(self.max_interval_s, floor)
        elapsed = max(elapsed_s, 0.0)

        typical = self.estimator.typical()  # the prior guess until a job is done
        first_at = typical * FIRST_POLL_FACTOR + FIRST_POLL_SLACK_S
        if self.estimator.count == 0:
            # Nothing learned yet: the prior guess may be far off (45 s for 2 s jobs), so
            # look early at a few points, each PROBE_RATIO times sooner than the next.
            probe = typical / PROBE_RATIO
            while probe >= MIN_PROBE_S:
                if probe > elapsed + 1e-6:
                    first_at = probe
                probe /= PROBE_RATIO
        if elapsed < first_at:
            # Not capped by max_interval_s: that bounds the spacing of stragglers' polls,
            # and a cap here would only add polls to every normal job.
            return max(first_at - elapsed, floor)
        if polls == 0:
            return floor  # already past due (a job re-attached after a restart): look now

        high = max(self.estimator.high(), typical)
        short = max(floor, SHORT_INTERVAL_FRACTION * typical)
        late = high * LATE_FACTOR
        if elapsed <= late:
            return min(short, ceiling)
        # A straggler: the longer it is overdue, the less likely the next second ends it.
        return min(max(short + OVERDUE_GROWTH * (elapsed - late), floor), ceiling)


async def wait_until_done(
    fetch: Callable[[float], Awaitable[Prediction]],
    prediction_id: str,
    *,
    deadline_s: float,
    schedule: PollSchedule,
    backoff: Callable[[int], float],
    submitted_monotonic: float | None = None,
    on_poll: Callable[[Prediction], None] | None = None,
) -> Prediction:
    """Poll with `fetch(age_s)` until the prediction succeeded; returns that state.

    `backoff(n)` is the delay before the retry after the n-th (0-based) failure in a
    row; rate limits, server errors (and non-JSON pages) and dropped connections are
    retried until the deadline. See `AtlasClient.wait_for_prediction` for the rest.
    """
    start = time.monotonic()
    deadline_at = start + deadline_s
    origin = submitted_monotonic if submitted_monotonic is not None else start
    polls = 0
    failures = 0
    last_running_at: float | None = None  # job age at the last poll that saw it running

    def timed_out(cause: str) -> PredictionTimeoutError:
        return PredictionTimeoutError(
            f"prediction {prediction_id} not done after {deadline_s:.0f}s ({cause}); "
            "it may still finish: re-attach with its id",
            prediction_id=prediction_id,
        )

    while True:
        await _sleep_before_poll(schedule, origin, polls, failures, deadline_at, backoff)
        try:
            # Bound the poll itself too, so retries inside it cannot outlive the
            # deadline by more than a moment.
            budget = max(deadline_at - time.monotonic(), 0.0) + LAST_POLL_ALLOWANCE_S
            async with asyncio.timeout(budget):
                prediction = await fetch(time.monotonic() - origin)
        except TimeoutError:
            raise timed_out("a poll was still pending at the deadline") from None
        except (RateLimitedError, ServerError, TransportError) as exc:
            failures += 1
            logger.warning("poll %s failed (%s); backing off", prediction_id, exc)
            if time.monotonic() >= deadline_at:
                raise timed_out(f"last poll failed: {exc}") from exc
            continue
        failures = 0
        polls += 1
        if on_poll is not None:
            on_poll(prediction)
        age = time.monotonic() - origin
        status = prediction.status
        if status is PredictionStatus.SUCCEEDED:
            schedule.estimator.observe(job_duration(prediction, last_running_at, age))
            if not prediction.outputs:
                raise OutputError(
                    f"the provider finished prediction {prediction_id} "
                    f"({prediction.raw_status or status.value}) without an output URL",
                    request_id=prediction.request_id,
                    prediction_id=prediction_id,
                )
            return prediction
        if status in (PredictionStatus.FAILED, PredictionStatus.TIMED_OUT):
            kind = "timed out" if status is PredictionStatus.TIMED_OUT else "failed"
            raw = prediction.raw_status
            if raw and normalize_status(raw) != status.value:
                kind += f" ({raw})"  # e.g. "failed (cancelled)"
            detail = prediction.error or "no reason given"
            code = f" (error code {prediction.error_code})" if prediction.error_code else ""
            raise PredictionFailedError(
                f"prediction {prediction_id} {kind}: {detail}{code}",
                prediction_id=prediction_id,
                error=prediction.error,
                error_code=prediction.error_code,
                request_id=prediction.request_id,
            )
        if status is PredictionStatus.RUNNING:
            last_running_at = age
        if time.monotonic() >= deadline_at:
            raise timed_out(f"last status {prediction.raw_status or status.value}")


async def _sleep_before_poll(
    schedule: PollSchedule,
    origin: float,
    polls: int,
    failures: int,
    deadline_at: float,
    backoff: Callable[[int], float],
) -> None:
    now = time.monotonic()
    delay = schedule.next_delay(now - origin, polls)
    if failures:
        delay = max(delay, backoff(failures - 1))
    wake_at = min(now + delay, deadline_at)
    # Sleep in slices and re-plan: while this job sleeps toward the expected end, other
    # rows may teach the estimator that jobs are much shorter. Only ever earlier: the
    # schedule's delays never shrink as time passes unless the estimate did.
    while (now := time.monotonic()) < wake_at:
        await asyncio.sleep(min(wake_at - now, REPLAN_EVERY_S))
        if not failures:
            now = time.monotonic()
            wake_at = min(wake_at, now + schedule.next_delay(now - origin, polls))


def job_duration(prediction: Prediction, running_at: float | None, seen_done_at: float) -> float:
    """How long the job took, for the estimator, on the caller's clock.

    The job ended between the last poll that saw it running and this one. The
    provider's own timing (predict_time, or completed_at - created_at) is precise, so it
    is used, clamped into that window (queueing can make the wall time longer). Without
    it, the time it was seen done is an upper bound: conservative, polls a little late.
    """
    low = running_at if running_at is not None else 0.0
    server = prediction.predict_time_s
    if server is None:
        created = parse_time(prediction.created_at)
        completed = parse_time(prediction.completed_at)
        if created is not None and completed is not None and completed > created:
            server = completed - created
    if server is None or server <= 0:
        return seen_done_at
    return min(max(server, low), seen_done_at)
