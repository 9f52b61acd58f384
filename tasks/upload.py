"""Upload step: give the provider a URL it can read each picture from."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import steps
from i2v.batching import Batch
from i2v.errors import RateLimitedError, ServerError, StorageError, TransportError
from i2v.run import Job, RunContext
from tasks._batch import carry_rows
from tasks._retry import with_retries

UPLOAD_RETRY_DELAYS_S = (1.0, 4.0)


# Not cached across runs: the provider forgets uploads ("uploaded inputs are temporary")
# on its own schedule, and a cached dead URL would get good rows rejected. Within a run
# each picture is uploaded once (`i2v.steps.upload`).
@task(name="upload", task_run_name="upload #{batch}", cache_policy=NO_CACHE)
async def upload(ctx: RunContext, entries: Batch[Job, str], batch: int) -> tuple[int, int]:
    """Give each job an image URL: as given, a presigned S3 URL, or an uploadMedia URL.

    Uploading is free, so each is retried on transient errors; a changed or unreadable
    picture fails only its row. Returns (succeeded, failed).
    """

    async def one(job: Job) -> str:
        return await with_retries(
            lambda: steps.upload(ctx, job),
            (RateLimitedError, ServerError, TransportError, StorageError),
            UPLOAD_RETRY_DELAYS_S,
        )

    return await carry_rows(entries, one, verb="uploading")
