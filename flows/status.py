"""The status flow: what a DEST holds and what needs a person, as a Prefect artifact.

The same summary as `i2v status DEST` (`i2v.status`), published as the markdown
artifact `i2v-status` and returned as a JSON-ready dict. It reads the DEST only: no
API call, no key needed. Deployed as `i2v-status/status` (deployments/prefect.yaml),
e.g. on a schedule next to the inbox, or run on demand from the UI.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact
from prefect.logging import get_run_logger

from flows.clients import s3_client_for
from i2v.config import BatchOptions
from i2v.dest import open_storage
from i2v.status import dest_status
from i2v.status_render import render_markdown

STATUS_ARTIFACT_KEY = "i2v-status"


@flow(name="i2v-status", log_prints=False)
async def i2v_status(dest: str, aws_credentials_block: str | None = None) -> dict[str, Any]:
    """Summarise DEST: rows and inputs by status, spend, the last runs, and what needs a
    person (each with what to do). Reads only the DEST; calls no API.

    Args:
        dest: A folder or `s3://bucket/prefix` written by i2v runs.
        aws_credentials_block: A prefect-aws AwsCredentials block for S3; else the
            worker's standard AWS chain.
    """
    logger = get_run_logger()
    s3 = None
    if dest.startswith("s3://"):
        s3 = s3_client_for(BatchOptions(aws_credentials_block=aws_credentials_block))
    storage = open_storage(dest, s3_client=s3)
    status = await asyncio.to_thread(dest_status, storage)
    await acreate_markdown_artifact(
        key=STATUS_ARTIFACT_KEY,
        markdown=render_markdown(status),
        description=f"i2v status of {status.dest}",
    )
    logger.info(
        "%s: %s rows, %d inputs, spent $%.2f; %s",
        status.dest,
        status.rows if status.rows is not None else "no",
        status.inputs,
        status.spent.usd,
        f"{status.needs_person_rows} rows need a person"
        if status.needs_person
        else "nothing needs a person",
    )
    return status.as_json()
