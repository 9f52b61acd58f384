"""Poll step: wait for a known prediction id, adaptively."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import pipeline
from i2v.state import InputRecord


@task(name="poll", task_run_name="poll-{job.name}", cache_policy=NO_CACHE)
async def wait_for_video(
    ctx: pipeline.RunContext, job: pipeline.Job, record: InputRecord
) -> InputRecord:
    """Poll until the prediction ends or the deadline passes; the record says how.

    Polling is free and idempotent; the client retries GETs itself with backoff.
    """
    return await pipeline.wait(ctx, job, record)
