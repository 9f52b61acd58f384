"""Generate step: the one paid call."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import pipeline
from i2v.state import InputRecord


@task(name="generate", task_run_name="generate-{job.name}", retries=0, cache_policy=NO_CACHE)
async def submit_generation(
    ctx: pipeline.RunContext, job: pipeline.Job, image_url: str
) -> InputRecord:
    """Submit one paid prediction, write-ahead recorded under DEST/_state/.

    Never retried by Prefect: a retry after a lost answer could pay twice. The client
    itself retries only when the answer proves no job was created (429, connect errors).
    """
    return await pipeline.submit(ctx, job, image_url)
