"""When to poll a prediction: adaptive to how long jobs of this run actually take.

A Hailuo job takes tens of seconds; polling it every second wastes requests (and eats
into the rate limit), polling it every 15 s adds latency. The schedule learns the
typical duration from the jobs already done in the run (one `DurationEstimator` shared
by all rows), sleeps until just after it, then polls at a short interval, and slows down
for the stragglers that run far past the usual. Before anything is learned, the prior
guess (`initial_s`, e.g. the config's `expected_duration_s`) plays the typical duration,
with a few early looks in case the guess is far too long.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from dataclasses import dataclass

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
    not_visible_grace_s: float = 30.0

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
