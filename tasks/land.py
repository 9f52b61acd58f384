"""Land step: stream the paid video into DEST."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from i2v import pipeline
from i2v.errors import OutputError, StorageError, TransportError
from i2v.state import InputRecord
from tasks._retry import retry_on, unquoted


def _land_cache_key(_: TaskRunContext, params: dict[str, Any]) -> str:
    """Content-keyed: one prediction's video into one DEST key is landed once.

    The prediction id fixes the video's content, so a retried flow run (or a crashed one
    resumed from the UI) reuses the landing instead of downloading it again. The flow
    bypasses this cache (`refresh_cache`) when DEST says the video went missing.
    """
    ctx: pipeline.RunContext = unquoted(params["ctx"])
    job: pipeline.Job = unquoted(params["job"])
    record: InputRecord = unquoted(params["record"])
    where = f"{ctx.dest.uri}|{job.primary.video_key}|{record.prediction_id}"
    return "i2v-land-v1-" + hashlib.sha256(where.encode()).hexdigest()[:32]


@task(
    name="land",
    task_run_name="land-{job.name}",
    retries=2,
    retry_delay_seconds=[2, 8],
    retry_condition_fn=retry_on(OutputError, StorageError, TransportError, OSError),
    cache_key_fn=_land_cache_key,
    cache_expiration=timedelta(days=14),  # as long as the provider keeps outputs
    persist_result=True,
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
