"""Land step: stream the paid video into DEST."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import pipeline
from i2v.errors import OutputError, StorageError, TransportError
from i2v.state import InputRecord
from tasks._retry import retry_on


@task(
    name="land",
    task_run_name="land-{job.name}",
    retries=2,
    retry_delay_seconds=[2, 8],
    retry_condition_fn=retry_on(OutputError, StorageError, TransportError, OSError),
    cache_policy=NO_CACHE,
)
async def land_video(
    ctx: pipeline.RunContext, job: pipeline.Job, record: InputRecord
) -> InputRecord:
    """Download the output to a staged file, check it is an mp4, move it to videos/<id>.mp4.

    Safe to retry: the prediction is already paid and the output URL lasts 14 days.
    """
    landed = await pipeline.land(ctx, job, record)
    await pipeline.place_copies(ctx, job, landed)
    return landed
