"""When DEST stops answering mid-run: wait for it, keep what was paid, hand it on.

`DestWatch` knows whether DEST answers and since when it does not; `call` retries a
storage call while DEST is unavailable, up to the run's `dest_wait_s` from the first
failure (minutes: a paid video is worth more than a free slot). `Kept` holds the
records paid for that DEST has not taken: in memory for the rows still going, in the
local journal (`i2v.journal`) for the next run, and written in the background as soon
as DEST answers again. Nothing new is paid while claims cannot be written: a claim is
a write like any other, and it waits (or gives up) with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from i2v.claims import Records
from i2v.errors import DestUnreachable, StorageError, StorageUnavailable
from i2v.journal import Journal
from i2v.state import InputRecord

T = TypeVar("T")
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 15.0


class DestWatch:
    """Whether DEST answers; since when it does not; how long the run waits for it."""

    def __init__(self, uri: str, wait_s: float, logger: Any = None) -> None:
        self.uri = uri
        self.wait_s = wait_s
        self.log = logger or logging.getLogger("i2v.outage")
        self._down_since: float | None = None
        self._down_wall: datetime | None = None
        self.last_error: str | None = None
        self.outages = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def ok(self) -> None:
        if self._down_since is not None:
            self.log.warning(
                "DEST %s answers again after %.0f s", self.uri, time.monotonic() - self._down_since
            )
            self._down_since = self._down_wall = None

    def failed(self, exc: BaseException) -> None:
        self.last_error = str(exc)
        if self._down_since is None:
            self._down_since, self._down_wall = time.monotonic(), datetime.now(UTC)
            self.outages += 1
            self.log.warning(
                "DEST %s does not answer (%s); waiting up to %.0f s for it: nothing new is "
                "paid meanwhile, and prediction ids in hand are kept",
                self.uri,
                exc,
                self.wait_s,
            )

    def down_for(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def exhausted(self) -> bool:
        return self._down_since is not None and self.down_for() >= self.wait_s

    def message(self) -> str:
        since = self._down_wall.strftime("%H:%M:%S UTC") if self._down_wall else "?"
        why = f": {self.last_error}" if self.last_error else ""
        return f"DEST {self.uri} unreachable since {since} ({self.down_for():.0f} s){why}"

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in a thread, again while DEST is unavailable, until the
        run's wait is used up (DestUnreachable). Other storage errors (a full disk, a
        refused key) raise at once: waiting would not mend them."""
        delay = RETRY_FIRST_S
        while True:
            try:
                result = await asyncio.to_thread(fn, *args, **kwargs)
            except StorageUnavailable as exc:
                self.failed(exc)
                if self.exhausted():
                    raise DestUnreachable(self.message()) from exc
                left = self.wait_s - self.down_for()
                await asyncio.sleep(max(0.05, min(delay, left) * random.uniform(0.7, 1.3)))
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self.ok()
            return result


class Kept:
    """Paid records DEST has not taken yet; retried in the background while the run
    lives, and journaled so the next run takes them over if this one must stop."""

    def __init__(self, records: Records, watch: DestWatch, journal: Journal, logger: Any) -> None:
        self.records = records
        self.watch = watch
        self.journal = journal
        self.log = logger
        self.pending: dict[str, InputRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        # A refusal waiting will not mend (a full disk, access denied): stop waiting.
        self.refused: StorageError | None = None

    def guard(self, identity: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held around a write of `identity`, so the background writer never puts an
        older record over a newer one."""
        lock = self._locks.get(identity)
        return lock if lock is not None else contextlib.nullcontext()

    async def keep(self, record: InputRecord, exc: BaseException) -> None:
        """DEST did not take `record`: hold it, journal it, write it when DEST answers."""
        if isinstance(exc, StorageError) and not isinstance(exc, StorageUnavailable):
            self.refused = exc
        first = record.identity not in self.pending
        self.pending[record.identity] = record
        self._locks.setdefault(record.identity, asyncio.Lock())
        try:
            await asyncio.to_thread(self.journal.keep, record)
            where = f"kept in {self.journal.path}"
        except OSError as err:  # the log line below is then the only copy
            where = f"NOT journaled ({err}): note this id"
        if first:
            self.log.warning(
                "%s: DEST did not take its record (%s); prediction %s (%s) %s and written "
                "when DEST answers",
                record.identity[:12],
                exc,
                record.prediction_id or "-",
                record.phase,
                where,
            )
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    async def keep_claim(self, intent: InputRecord, before: InputRecord | None) -> None:
        """A claim that may have reached DEST, whose POST never left: the next run on
        this machine withdraws it if it is there (else it would look ambiguous)."""
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.journal.keep, intent, posted=False, before=before)

    def written(self, identity: str) -> None:
        """DEST took a newer record of `identity` from the row itself."""
        if self.pending.pop(identity, None) is not None:
            self._locks.pop(identity, None)
            self.journal.written(identity)
            self._changed.set()

    async def _flush(self) -> None:
        delay = RETRY_FIRST_S
        while self.pending:
            await asyncio.sleep(delay * random.uniform(0.7, 1.3))
            for identity, record in list(self.pending.items()):
                lock = self._locks.get(identity)
                if lock is None:
                    continue
                async with lock:
                    if self.pending.get(identity) is not record:
                        continue  # the row wrote something newer meanwhile
                    try:
                        await asyncio.to_thread(self.records.put, record)
                    except StorageUnavailable as exc:
                        self.watch.failed(exc)
                        break
                    except StorageError as exc:
                        self.refused = exc
                        self._changed.set()
                        return
                    self.watch.ok()
                    self.log.info(
                        "%s: DEST took the kept record (prediction %s, %s)",
                        identity[:12],
                        record.prediction_id or "-",
                        record.phase,
                    )
                    self.written(identity)
            else:
                delay = RETRY_FIRST_S
                continue
            delay = min(delay * 2, RETRY_MAX_S)

    async def drain(self) -> int:
        """Wait until DEST took every kept record, or the run's wait for DEST is used
        up; returns how many are still kept (0: all written)."""
        while self.pending and not self.watch.exhausted() and self.refused is None:
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.ensure_future(self._flush())
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                left = max(0.1, self.watch.wait_s - self.watch.down_for())
                await asyncio.wait_for(self._changed.wait(), min(left, 5.0))
        return len(self.pending)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(BaseException):
                await self._flusher
        await asyncio.to_thread(self.journal.close)
