"""Generate step: the one paid call."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import pipeline
from i2v.batching import Batch, settle_each
from i2v.state import InputRecord


@task(name="generate", task_run_name="generate-{label}", retries=0, cache_policy=NO_CACHE)
async def submit_generations(
    ctx: pipeline.RunContext,
    entries: Batch[tuple[pipeline.Job, str], InputRecord],
    label: str,
) -> tuple[int, int]:
    """Submit one paid prediction per entry, each write-ahead recorded in DEST/_state/.

    Never retried by Prefect: a retry after a lost answer could pay twice. The client
    itself retries only when the answer proves no job was created (429, connect errors).
    Returns (submitted, not submitted).
    """

    async def one(item: tuple[pipeline.Job, str]) -> InputRecord:
        job, image_url = item
        return await pipeline.submit(ctx, job, image_url)

    return await settle_each(entries, one)
