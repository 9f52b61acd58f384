"""Adaptive poll schedule: estimator statistics, delays, and simulated workloads."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from typing import Any

import pytest

from i2v._constants import NOT_VISIBLE_GRACE_S
from i2v.client import AtlasClient
from i2v.polling import DurationEstimator, PollSchedule, job_duration
from i2v.types import Prediction, PredictionStatus


def warm(samples: list[float], initial_s: float = 45.0, window: int = 50) -> DurationEstimator:
    est = DurationEstimator(initial_s=initial_s, window=window)
    for s in samples:
        est.observe(s)
    return est


# ------------------------------------------------------------------- estimator


def test_estimator_defaults_before_any_observation() -> None:
    est = DurationEstimator(initial_s=40.0)
    assert est.count == 0
    assert est.typical() == 40.0
    assert est.high() == 60.0


def test_estimator_median_and_p90() -> None:
    est = warm([float(x) for x in range(1, 11)])  # 1..10
    assert est.typical() == 5.5
    assert est.high() == 9.0
    single = warm([12.0])
    assert single.typical() == 12.0 and single.high() == 12.0


def test_estimator_window_forgets_old_durations() -> None:
    est = warm([100.0, 100.0, 1.0, 2.0, 3.0], window=3)
    assert est.count == 3
    assert est.typical() == 2.0
    assert est.high() == 3.0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_estimator_ignores_nonsense(bad: float) -> None:
    est = warm([5.0])
    est.observe(bad)
    assert est.count == 1 and est.typical() == 5.0


def test_estimator_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        DurationEstimator(initial_s=0)
    with pytest.raises(ValueError):
        DurationEstimator(window=0)


# -------------------------------------------------------------------- schedule


def test_first_poll_slightly_after_typical() -> None:
    sched = PollSchedule(warm([45.0] * 10))
    first = sched.next_delay(0.0, 0)
    assert 45.0 < first <= 45.0 * 1.15
    # Time already spent (e.g. the submit round trip) is deducted.
    assert sched.next_delay(10.0, 0) == pytest.approx(first - 10.0)


def test_first_poll_is_not_capped_by_max_interval() -> None:
    # Capping a 45 s wait at 15 s would add two useless polls to every job.
    sched = PollSchedule(warm([45.0] * 10), max_interval_s=15.0)
    assert sched.next_delay(0.0, 0) > 45.0


def test_reattached_old_job_is_polled_right_away() -> None:
    sched = PollSchedule(warm([45.0] * 10), min_interval_s=1.0)
    assert sched.next_delay(300.0, 0) == 1.0


def test_short_interval_after_first_poll() -> None:
    sched = PollSchedule(warm([45.0] * 10), min_interval_s=1.0)
    assert sched.next_delay(49.0, 1) == pytest.approx(4.5)  # 10 % of typical
    fast = PollSchedule(warm([2.0] * 10), min_interval_s=1.0)
    assert fast.next_delay(2.5, 1) == 1.0  # 10 % would be 0.2: min interval wins


def test_interval_grows_past_high_up_to_max() -> None:
    sched = PollSchedule(warm([40.0] * 8 + [60.0] * 2), min_interval_s=1.0, max_interval_s=15.0)
    high = sched.estimator.high()
    assert high == 60.0
    at_high = sched.next_delay(high, 5)
    assert at_high == pytest.approx(4.0)  # just past high is still the usual interval
    later = [sched.next_delay(high + d, 5) for d in (20.0, 30.0, 50.0, 400.0)]
    assert at_high < later[0] < later[1] < later[2]
    assert later[-1] == 15.0
    assert all(d <= 15.0 for d in later)


def test_min_interval_is_respected_everywhere() -> None:
    estimators = [DurationEstimator(), warm([0.01] * 5), warm([2.0] * 5), warm([45.0, 90.0])]
    for est, min_iv, elapsed, polls in itertools.product(
        estimators, (0.5, 1.0, 3.0), (0.0, 0.5, 1.9, 2.5, 30.0, 44.0, 100.0, 1e5), (0, 1, 7)
    ):
        sched = PollSchedule(est, min_interval_s=min_iv, max_interval_s=15.0)
        delay = sched.next_delay(elapsed, polls)
        assert delay >= min_iv, (est, min_iv, elapsed, polls, delay)
        assert math.isfinite(delay)


def test_min_interval_larger_than_max_interval_wins() -> None:
    sched = PollSchedule(warm([45.0] * 3), min_interval_s=20.0, max_interval_s=5.0)
    assert sched.next_delay(500.0, 4) == 20.0


def test_zero_min_interval_makes_polls_instant_once_due() -> None:
    sched = PollSchedule(warm([0.5, 0.5, 0.8]), min_interval_s=0.0)
    assert sched.next_delay(5.0, 0) == 0.0
    assert sched.next_delay(0.7, 3) == pytest.approx(0.05)


def test_cold_start_looks_early_then_trusts_the_prior() -> None:
    sched = PollSchedule(DurationEstimator(initial_s=40.0), min_interval_s=1.0)
    # Probes at 40/16 = 2.5 s and 40/4 = 10 s (40/64 < 1 s is not worth a poll) ...
    assert sched.next_delay(0.0, 0) == pytest.approx(2.5)
    assert sched.next_delay(2.6, 1) == pytest.approx(7.4)
    # ... then just after the prior guess.
    first_at = 10.1 + sched.next_delay(10.1, 2)
    assert 40.0 < first_at <= 40.0 * 1.15
    assert sched.next_delay(30.0, 0) == pytest.approx(first_at - 30.0)  # late start
    # A short prior gets no probes at all: its first poll is just after it.
    short = PollSchedule(DurationEstimator(initial_s=2.0), min_interval_s=0.25)
    assert 2.0 < short.next_delay(0.0, 0) < 2.3
    # Even with no minimum, the cold start is not a busy loop.
    assert PollSchedule(DurationEstimator(), min_interval_s=0.0).next_delay(0.0, 0) > 2.0


def test_a_learned_shorter_duration_pulls_a_planned_poll_earlier() -> None:
    est = DurationEstimator(initial_s=40.0)
    sched = PollSchedule(est, min_interval_s=1.0)
    before = sched.next_delay(10.5, 2)  # after the early looks, waiting for ~42 s
    est.observe(12.0)
    assert sched.next_delay(11.0, 2) < before - 25.0


# ------------------------------------------------------- simulated workloads


def run_workload(
    durations: list[float], sched: PollSchedule, rtt_s: float = 0.0
) -> tuple[list[int], list[float]]:
    """Poll each job on a virtual clock as `wait_for_prediction` would.

    Each job is done `duration` after submission; a poll sees the server state half a
    round trip after it is sent. Returns polls per job and the latency each added
    (time the client learned it was done minus when it was done).
    """
    polls_per_job: list[int] = []
    added: list[float] = []
    for duration in durations:
        t, polls = rtt_s, 0  # the submit round trip has already passed
        while True:
            t += sched.next_delay(t, polls)
            polls += 1
            if t + rtt_s / 2 >= duration:
                sched.estimator.observe(duration)  # the provider's predict_time
                added.append(t + rtt_s - duration)
                break
            t += rtt_s
        polls_per_job.append(polls)
    return polls_per_job, added


@pytest.mark.parametrize("min_interval", [0.0, 0.25, 1.0])
def test_fixed_two_second_jobs_average_at_most_three_polls(min_interval: float) -> None:
    sched = PollSchedule(DurationEstimator(), min_interval_s=min_interval)
    polls, added = run_workload([2.0] * 60, sched, rtt_s=0.02)
    warm_polls = polls[3:]
    assert statistics.mean(warm_polls) <= 3
    assert statistics.mean(warm_polls) == 1.0  # once learned, the first poll finds it done
    assert max(added[3:]) < 0.5  # ... without waiting long past the end
    assert max(polls) <= 3  # even the cold first job is not hammered


@pytest.mark.parametrize(
    ("prior", "duration", "first_wave_polls", "max_added"),
    [
        (2.0, 2.0, 1, 0.3),  # right prior (configs/local.yaml)
        (45.0, 2.0, 1, 1.0),  # prior 20x too long: found by the 2.8 s probe
        (45.0, 45.0, 3, 2.5),  # right but long prior: two probes, then just after it
    ],
)
def test_a_whole_first_wave_polls_little(
    prior: float, duration: float, first_wave_polls: int, max_added: float
) -> None:
    """All rows submitted at once learn nothing from each other before they end."""
    sched = PollSchedule(DurationEstimator(initial_s=prior), min_interval_s=0.25)
    for _ in range(8):
        t, polls = 0.0, 0
        while t < duration:
            t += sched.next_delay(t, polls)
            polls += 1
        assert polls == first_wave_polls
        assert t - duration < max_added


def test_jittered_jobs_stay_cheap_and_prompt() -> None:
    rng = random.Random(11)
    durations = [rng.uniform(1.7, 2.3) for _ in range(200)]
    sched = PollSchedule(DurationEstimator(), min_interval_s=0.25)
    polls, added = run_workload(durations, sched, rtt_s=0.02)
    assert statistics.mean(polls[5:]) <= 3
    assert statistics.mean(added[5:]) < 0.6


def test_straggler_is_polled_ever_more_slowly() -> None:
    sched = PollSchedule(warm([2.0] * 20), min_interval_s=0.25, max_interval_s=15.0)
    polls, _ = run_workload([600.0], sched)
    # Polling every 0.25 s for 10 min would be 2400 polls; growth keeps it small.
    assert polls[0] < 80


def test_one_not_visible_grace_for_the_schedule_and_the_client() -> None:
    assert NOT_VISIBLE_GRACE_S == 30.0
    assert PollSchedule(DurationEstimator()).not_visible_grace_s == NOT_VISIBLE_GRACE_S
    assert AtlasClient("k", "http://127.0.0.1:9").not_visible_grace_s == NOT_VISIBLE_GRACE_S


def done(**fields: Any) -> Prediction:
    return Prediction(id="p", status=PredictionStatus.SUCCEEDED, **fields)


@pytest.mark.parametrize(
    ("prediction", "running_at", "seen_at", "expected"),
    [
        (done(predict_time_s=20.0), 18.0, 25.0, 20.0),  # the provider's own timing
        (done(predict_time_s=10.0), 18.0, 25.0, 18.0),  # queued: at least the running age
        (done(predict_time_s=40.0), 18.0, 25.0, 25.0),  # never past the time seen done
        (
            done(created_at="2025-01-01T00:00:00Z", completed_at="2025-01-01T00:00:21.5Z"),
            None,
            30.0,
            21.5,
        ),
        (done(created_at="1735689600000", completed_at="1735689612000"), None, 30.0, 12.0),
        (done(), 18.0, 25.0, 25.0),  # no timing: the conservative upper bound
        (done(predict_time_s=0.0), None, 25.0, 25.0),
    ],
)
def test_job_duration_uses_the_providers_timing_within_the_window(
    prediction: Prediction, running_at: float | None, seen_at: float, expected: float
) -> None:
    assert job_duration(prediction, running_at, seen_at) == pytest.approx(expected)
