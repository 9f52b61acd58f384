"""What the simulator saw: request and job counters, for tests and benchmarks."""

from __future__ import annotations

import threading
import time
from typing import Any


class SimulatorStats:
    """What the simulator saw; thread-safe, served as JSON by `GET /_sim/stats`.

    `generate_posts` and `polls` count every such request (rejected ones too);
    `uploads` counts stored files; `downloads` counts output streams started.
    `submissions_per_input` maps one input (picture sha, prompt, duration, model) to the
    number of jobs created for it: a value above 1 means that input was paid twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ends: list[float] = []  # monotonic end times of jobs created, for in_flight
        self.uploads = 0
        self.generate_posts = 0
        self.jobs_created = 0
        self.polls = 0
        self.downloads = 0
        self.submissions_per_input: dict[str, int] = {}
        self.max_in_flight = 0
        self.responses_by_status: dict[int, int] = {}

    def reset(self) -> None:
        """Zero the counters; jobs still processing stay in flight."""
        with self._lock:
            self.uploads = self.generate_posts = self.jobs_created = 0
            self.polls = self.downloads = 0
            self.submissions_per_input = {}
            self.responses_by_status = {}
            self.max_in_flight = self._in_flight_locked()

    def _in_flight_locked(self) -> int:
        now = time.monotonic()
        self._ends = [e for e in self._ends if e > now]
        return len(self._ends)

    @property
    def in_flight(self) -> int:
        """Jobs processing now (stuck jobs forever)."""
        with self._lock:
            return self._in_flight_locked()

    @property
    def distinct_inputs(self) -> int:
        """Distinct (picture sha, prompt, duration, model) among the jobs created."""
        with self._lock:
            return len(self.submissions_per_input)

    def add(self, counter: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)

    def record_status(self, status: int) -> None:
        with self._lock:
            self.responses_by_status[status] = self.responses_by_status.get(status, 0) + 1

    def record_job(self, input_key: str, ends_at: float) -> None:
        """A job was created; it counts as in flight until `ends_at` (monotonic)."""
        with self._lock:
            self.jobs_created += 1
            self.submissions_per_input[input_key] = self.submissions_per_input.get(input_key, 0) + 1
            self._ends.append(ends_at)
            self.max_in_flight = max(self.max_in_flight, self._in_flight_locked())

    def snapshot(self) -> dict[str, Any]:
        """All counters as plain JSON-ready values."""
        with self._lock:
            return {
                "uploads": self.uploads,
                "generate_posts": self.generate_posts,
                "jobs_created": self.jobs_created,
                "polls": self.polls,
                "downloads": self.downloads,
                "distinct_inputs": len(self.submissions_per_input),
                "submissions_per_input": dict(self.submissions_per_input),
                "in_flight": self._in_flight_locked(),
                "max_in_flight": self.max_in_flight,
                "responses_by_status": dict(self.responses_by_status),
            }
