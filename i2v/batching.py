"""Micro-batching: rows that reach the same step at about the same time share one call.

Each row still awaits its own result, settled the moment that row is done, so a fast
row never waits for a slow one in its batch. The flow uses this to run one Prefect task
per step for a handful of rows instead of one per row: Prefect's bookkeeping of a task
run costs about as much CPU as the row's whole HTTP work (measured, see the README),
and on a small machine that bookkeeping, not the provider, was the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - the conventional name for an item type
R = TypeVar("R")


@dataclass
class Entry(Generic[I, R]):
    """One row's request to a step, and the future its row coroutine awaits."""

    item: I
    future: asyncio.Future[R] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def settle(self, result: R | None = None, error: BaseException | None = None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)  # type: ignore[arg-type]


async def settle_each(
    entries: Sequence[Entry[I, R]], step: Callable[[I], Awaitable[R]]
) -> tuple[int, int]:
    """Run `step` for every entry concurrently, settling each entry as soon as it ends.

    Returns (succeeded, failed) counts for the batch's own record.
    """

    async def one(entry: Entry[I, R]) -> bool:
        try:
            entry.settle(await step(entry.item))
            return True
        except Exception as exc:  # the row's own error goes to the row, not the batch
            entry.settle(error=exc)
            return False

    results = await asyncio.gather(*(one(e) for e in entries))
    ok = sum(results)
    return ok, len(results) - ok


class MicroBatcher(Generic[I, R]):
    """Collects items for up to `window_s` (or `max_size` items) and runs them together.

    `run_batch(entries)` must settle every entry; anything it leaves unsettled (it
    crashed) gets its exception, so no row ever waits forever.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Entry[I, R]]], Awaitable[Any]],
        *,
        max_size: int = 25,
        window_s: float = 0.02,
    ) -> None:
        self._run_batch = run_batch
        self.max_size = max(1, max_size)
        self.window_s = window_s
        self._pending: list[Entry[I, R]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.batches = 0

    async def __call__(self, item: I) -> R:
        entry: Entry[I, R] = Entry(item)
        self._pending.append(entry)
        if len(self._pending) >= self.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._flush)
        return await entry.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        self.batches += 1
        task = asyncio.ensure_future(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[Entry[I, R]]) -> None:
        try:
            await self._run_batch(batch)
        except BaseException as exc:
            for entry in batch:
                entry.settle(error=exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            if not isinstance(exc, Exception):
                raise
        finally:
            for entry in batch:
                entry.settle(error=RuntimeError("the batch ended without settling this row"))

    async def drain(self) -> None:
        """Wait for every batch already started (at the end of a run)."""
        self._flush()
        while self._running:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._running, return_exceptions=True)


def batch_label(names: Sequence[str]) -> str:
    """A short task-run label for a batch: `first` or `first+N`."""
    if not names:
        return "empty"
    return names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1}"
