"""Upload step: give the provider a URL it can read the picture from."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import pipeline
from i2v.errors import RateLimitedError, ServerError, StorageError, TransportError
from tasks._retry import retry_on


# Not cached across runs: the provider forgets uploads ("uploaded inputs are temporary")
# on its own schedule, and a cached dead URL would get good rows rejected. Within a run
# each picture is uploaded once (`pipeline.image_url_for`).
@task(
    name="upload",
    task_run_name="upload-{job.name}",
    retries=2,
    retry_delay_seconds=[1, 4],
    retry_condition_fn=retry_on(RateLimitedError, ServerError, TransportError, StorageError),
    cache_policy=NO_CACHE,
)
async def upload_picture(ctx: pipeline.RunContext, job: pipeline.Job) -> str:
    """Return an image URL for `job`: as given, a presigned S3 URL, or an uploadMedia URL.

    Uploading is free, so it is retried on transient errors; a changed or unreadable
    picture fails the row.
    """
    return await pipeline.image_url_for(ctx, job)
