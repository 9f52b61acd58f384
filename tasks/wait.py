"""Poll step: wait for known prediction ids, adaptively."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import pipeline
from i2v.batching import Batch, settle_each
from i2v.state import InputRecord


@task(name="poll", task_run_name="poll-{label}", cache_policy=NO_CACHE)
async def wait_for_videos(
    ctx: pipeline.RunContext,
    entries: Batch[tuple[pipeline.Job, InputRecord], InputRecord],
    label: str,
) -> tuple[int, int]:
    """Poll each prediction until it ends or its deadline passes; its record says how.

    Each row is settled the moment its own prediction ends, so its provider slot frees
    at once. Polling is free and idempotent; the client retries GETs with backoff.
    """

    async def one(item: tuple[pipeline.Job, InputRecord]) -> InputRecord:
        job, record = item
        return await pipeline.wait(ctx, job, record)

    return await settle_each(entries, one)
