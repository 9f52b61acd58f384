"""Micro-batching: rows that reach a step close together share one call.

A batch opens when a row reaches a step and no batch of that step is accepting rows;
rows that arrive while it is open join it, even after its call has started, until it
holds `max_size` rows, has been open `accept_s`, or no row joined for `idle_s`. Each row
still awaits its own result, settled the moment that row is done, so a fast row never
waits for a slow one in its batch.

The flow uses this to run one Prefect task per step for a stream of rows instead of one
per row: Prefect's bookkeeping of a task run costs about as much CPU as the row's whole
HTTP work (measured, see the README). Batches that close when their first rows start
(a fixed gathering window) degenerate into one task run per row as soon as rows stop
arriving in waves, which is exactly when a busy run needs the CPU back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
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
    batch: Batch[I, R] | None = field(default=None, repr=False)  # the batch it joined

    def settle(self, result: R | None = None, error: BaseException | None = None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)  # type: ignore[arg-type]


class Batch(Generic[I, R]):
    """The rows of one call to a step: an async iterable that rows keep joining.

    Iterating yields each entry as it joins and ends once the batch has stopped
    accepting and every joined entry was yielded. Single event loop only: `offer` and
    the decision to close never interleave, so no row can join a batch that has
    stopped reading.
    """

    def __init__(self, *, max_size: int, accept_s: float, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.max_size = max(1, max_size)
        self._close_at = now + accept_s
        self._idle_s = idle_s
        self._last_join = now
        self._unread: deque[Entry[I, R]] = deque()
        self._wake = asyncio.Event()
        self.entries: list[Entry[I, R]] = []  # every entry that joined, in order
        self.closed = False

    def _accepting(self, now: float) -> bool:
        return (
            not self.closed
            and len(self.entries) < self.max_size
            and now < min(self._close_at, self._last_join + self._idle_s)
        )

    def offer(self, entry: Entry[I, R]) -> bool:
        """Add `entry` if the batch still accepts rows; False if it does not."""
        now = self._loop.time()
        if self.entries and not self._accepting(now):
            return False
        self.entries.append(entry)
        entry.batch = self
        self._unread.append(entry)
        self._last_join = now
        self._wake.set()
        return True

    def close(self) -> None:
        """Accept no more rows; iteration ends once the joined ones are read."""
        self.closed = True
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[Entry[I, R]]:
        return self._read()

    async def _read(self) -> AsyncIterator[Entry[I, R]]:
        while True:
            while self._unread:
                yield self._unread.popleft()
            now = self._loop.time()
            if not self._accepting(now):
                self.closed = True  # no await since the queue was seen empty
                return
            self._wake.clear()
            wait_s = min(self._close_at, self._last_join + self._idle_s) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)


async def settle_each(
    entries: AsyncIterable[Entry[I, R]],
    step: Callable[[I], Awaitable[R]],
    *,
    on_closed: Callable[[list[I]], Any] | None = None,
) -> tuple[int, int]:
    """Run `step` for every entry as it arrives, settling each entry as soon as it ends.

    `on_closed(items)` is called once the batch stops taking rows (its rows may still be
    running), with every item it carried. Returns (succeeded, failed) counts for the
    batch's own record.
    """
    outcomes: list[bool] = []

    async def one(entry: Entry[I, R]) -> None:
        try:
            entry.settle(await step(entry.item))
            outcomes.append(True)
        except Exception as exc:  # the row's own error goes to the row, not the batch
            entry.settle(error=exc)
            outcomes.append(False)

    carried: list[I] = []
    async with asyncio.TaskGroup() as group:
        async for entry in entries:
            carried.append(entry.item)
            group.create_task(one(entry))
        if on_closed is not None:
            on_closed(carried)
    ok = sum(outcomes)
    return ok, len(outcomes) - ok


class MicroBatcher(Generic[I, R]):
    """Hands each item to the step's open batch, opening a new one when none accepts.

    `run_batch(batch)` must settle every entry it reads; anything left unsettled when it
    returns or crashes gets an exception, so no row ever waits forever. `close()` stops
    the open batch taking rows and waits for every batch to end: call it before the
    event loop (or the Prefect flow run) that runs the batches ends, or a batch still
    waiting `idle_s` for rows would be cancelled mid-way.
    """

    def __init__(
        self,
        run_batch: Callable[[Batch[I, R]], Awaitable[Any]],
        *,
        max_size: int = 50,
        accept_s: float = 2.0,
        idle_s: float = 0.5,
    ) -> None:
        self._run_batch = run_batch
        self.max_size = max_size
        self.accept_s = accept_s
        self.idle_s = idle_s
        self._open: Batch[I, R] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.batches = 0

    async def __call__(self, item: I) -> R:
        return await self.enter(item).future

    def enter(self, item: I) -> Entry[I, R]:
        """Put `item` into the open batch (or a new one); its entry knows the batch and
        holds the future of its result."""
        entry: Entry[I, R] = Entry(item)
        if self._open is None or not self._open.offer(entry):
            batch: Batch[I, R] = Batch(
                max_size=self.max_size, accept_s=self.accept_s, idle_s=self.idle_s
            )
            batch.offer(entry)
            self._open = batch
            self.batches += 1
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return entry

    async def close(self) -> None:
        """Let the open batch take no more rows and wait until every batch has ended.

        Rows offered later open a new batch, so this is safe at any time; a batch's own
        failure was already given to its rows and is not raised here.
        """
        if self._open is not None:
            self._open.close()
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(self, batch: Batch[I, R]) -> None:
        try:
            await self._run_batch(batch)
        except BaseException as exc:
            batch.close()
            error = exc if isinstance(exc, Exception) else RuntimeError(str(exc))
            for entry in batch.entries:
                entry.settle(error=error)
            if not isinstance(exc, Exception):
                raise
        finally:
            batch.close()
            for entry in batch.entries:
                entry.settle(error=RuntimeError("the batch ended without settling this row"))
