"""Upload step: give the provider a URL it can read the picture from."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from i2v import pipeline
from i2v.errors import RateLimitedError, ServerError, StorageError, TransportError
from tasks._retry import retry_on


def _upload_cache_key(_: TaskRunContext, params: dict[str, Any]) -> str | None:
    """Same picture bytes, same API: reuse the upload for an hour (uploads are temporary)."""
    ctx: pipeline.RunContext = params["ctx"]
    job: pipeline.Job = params["job"]
    if not ctx.client_cache_scope or job.image_location.startswith(("https://", "s3://")):
        return None  # presigned or public URLs are cheap to make and expire on their own
    return f"i2v-upload-v1-{ctx.client_cache_scope}-{job.picture.sha256}"


@task(
    name="upload",
    task_run_name="upload-{job.name}",
    retries=2,
    retry_delay_seconds=[1, 4],
    retry_condition_fn=retry_on(RateLimitedError, ServerError, TransportError, StorageError),
    cache_key_fn=_upload_cache_key,
    cache_expiration=timedelta(hours=1),
    persist_result=True,
)
async def upload_picture(ctx: pipeline.RunContext, job: pipeline.Job) -> str:
    """Return an image URL for `job`: as given, a presigned S3 URL, or an uploadMedia URL.

    Uploading is free, so it is retried on transient errors; a changed or unreadable
    picture fails the row.
    """
    return await pipeline.image_url_for(ctx, job)
