"""Admission control for paid work: an adaptive in-flight limit and a spend budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class AdaptiveLimiter:
    """Bounds predictions in flight; halves the bound on 429 and regrows it slowly (AIMD).

    The provider publishes no rate-limit headers, so a 429 is the only signal: cutting
    the window multiplicatively stops a storm quickly, additive growth finds the cap
    again without oscillating. The bound never exceeds `max_limit` (the user's
    `--concurrency`).
    """

    def __init__(self, max_limit: int, *, min_limit: int = 1, cooldown_s: float = 2.0) -> None:
        if max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        self.max_limit = max_limit
        self.min_limit = max(1, min(min_limit, max_limit))
        self.cooldown_s = cooldown_s
        self._limit = float(max_limit)
        self._in_flight = 0
        self._waiting = 0
        self._cond = asyncio.Condition()
        self._last_cut = -float("inf")
        self.cuts = 0
        self.peak_in_flight = 0

    @property
    def limit(self) -> int:
        return max(self.min_limit, int(self._limit))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Callers blocked in `acquire` right now."""
        return self._waiting

    def on_rate_limited(self) -> None:
        """A 429 was seen: halve the window, at most once per cooldown (one storm, one cut)."""
        now = time.monotonic()
        if now - self._last_cut < self.cooldown_s:
            return
        self._last_cut = now
        self._limit = max(float(self.min_limit), self._limit / 2)
        self.cuts += 1

    def on_success(self) -> None:
        """A submission went through: grow the window by about one per window's worth."""
        if self._limit < self.max_limit:
            self._limit = min(float(self.max_limit), self._limit + 1.0 / max(self._limit, 1.0))

    async def acquire(self) -> None:
        self._waiting += 1
        try:
            async with self._cond:
                await self._cond.wait_for(lambda: self._in_flight < self.limit)
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        finally:
            self._waiting -= 1

    async def release(self) -> None:
        async with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            await self.release()


class Budget:
    """A spend cap for one run: work is reserved before it is submitted.

    Reserving first means concurrent submissions can never overshoot the cap together.
    """

    def __init__(self, limit_usd: float | None) -> None:
        self.limit_usd = limit_usd
        self.reserved_usd = 0.0
        self.spent_usd = 0.0

    def reserve(self, cost_usd: float) -> bool:
        """Hold `cost_usd` for a submission; False when it would pass the cap."""
        total = self.spent_usd + self.reserved_usd + cost_usd
        # A small epsilon so that, e.g., 10 x $0.28 fits in a $2.80 budget.
        if self.limit_usd is not None and total > self.limit_usd + 1e-9:
            return False
        self.reserved_usd += cost_usd
        return True

    def commit(self, cost_usd: float) -> None:
        """The submission may have created a paid job: count it as spent."""
        self.reserved_usd = max(0.0, self.reserved_usd - cost_usd)
        self.spent_usd += cost_usd

    def release(self, cost_usd: float) -> None:
        """The submission provably created no job: give the reservation back."""
        self.reserved_usd = max(0.0, self.reserved_usd - cost_usd)
