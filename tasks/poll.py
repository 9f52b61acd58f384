"""Poll step: wait for known prediction ids, adaptively."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import steps
from i2v.batching import Batch
from i2v.run import Job, RunContext
from i2v.state import InputRecord
from tasks._batch import carry_rows

PollItem = tuple[Job, InputRecord]


@task(name="poll", task_run_name="poll #{batch}", cache_policy=NO_CACHE)
async def poll(
    ctx: RunContext, entries: Batch[PollItem, InputRecord], batch: int
) -> tuple[int, int]:
    """Poll each prediction until it ends or its deadline passes; its record says how.

    Each row is settled the moment its own prediction ends, so its provider slot frees
    at once. Polling is free and idempotent; the client retries GETs with backoff.
    """

    async def one(item: PollItem) -> InputRecord:
        return await steps.poll(ctx, *item)

    return await carry_rows(entries, one, verb="polling")
