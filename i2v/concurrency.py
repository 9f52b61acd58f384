"""Admission control for paid work: an adaptive in-flight limit and a spend budget."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """`fn` over `items` in up to `workers` threads, results in order (blocking I/O:
    reads, decodes); one item or none runs in the caller's thread."""
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        return list(pool.map(fn, items))


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

    def refund(self, cost_usd: float) -> None:
        """The provider refunded a failed job: the money is free for later rows."""
        self.spent_usd = max(0.0, self.spent_usd - cost_usd)

    def release(self, cost_usd: float) -> None:
        """The submission provably created no job: give the reservation back."""
        self.reserved_usd = max(0.0, self.reserved_usd - cost_usd)


class LiveWindow:
    """How many rows a run carries at once: memory grows with the concurrency, not the
    manifest.

    A row enters before its first step and counts as `ahead` until it leaves the
    provider (its prediction is done, or it never needed one), then as landing until it
    is settled. The producer admits the next row only when both bounds have room, so a
    100,000-row manifest holds a few hundred live rows, never 100,000 coroutines.
    `ahead` covers the rows in flight, those uploaded ahead of a slot and a small
    read-ahead; `landing` lets finished rows land without holding up submissions.
    One producer waits in `enter`; rows leave from any coroutine on the same loop.
    """

    def __init__(self, ahead: int, landing: int) -> None:
        self.ahead_limit, self.landing_limit = max(1, ahead), max(1, landing)
        self._ahead: set[str] = set()
        self._live: set[str] = set()
        self._room = asyncio.Event()
        self.peak_live = 0
        self.peak_ahead = 0

    @property
    def live(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    async def enter(self, key: str) -> None:
        """Wait until the window has room for one more row, then count it in."""
        while not self._has_room():
            self._room.clear()
            await self._room.wait()
        self._ahead.add(key)
        self._live.add(key)
        self.peak_live = max(self.peak_live, len(self._live))
        self.peak_ahead = max(self.peak_ahead, len(self._ahead))

    def _has_room(self) -> bool:
        return (
            len(self._ahead) < self.ahead_limit
            and len(self._live) < self.ahead_limit + self.landing_limit
        )

    def leave_provider(self, key: str) -> None:
        """The row needs the provider no more (it lands next): let the next row in."""
        if key in self._ahead:
            self._ahead.discard(key)
            self._room.set()

    def leave(self, key: str) -> None:
        """The row is settled."""
        self._ahead.discard(key)
        self._live.discard(key)
        self._room.set()
