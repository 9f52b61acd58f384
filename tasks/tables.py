"""Results step: the results table in DEST (history under runs/<run-id>/)."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v.errors import StorageError
from i2v.results import RunSummary, write_tables
from i2v.storage import Storage
from tasks._retry import retry_on


@task(
    name="results-table",
    retries=2,
    retry_delay_seconds=[2, 8],
    retry_condition_fn=retry_on(StorageError, OSError),
    cache_policy=NO_CACHE,
)
async def results_table(
    storage: Storage, frame: Any, summary: RunSummary, *, publish: bool = True
) -> str:
    """Write DEST/runs/<run-id>/results.* and summary.json and, unless a shard, the
    current DEST/results.*; returns the table's URI.

    Shards (`publish=False`) leave DEST/results.* to their fan-out parent, which merges
    the shards' run tables into the one current table.
    """
    uris = await asyncio.to_thread(
        write_tables, storage, frame, summary.run_id, summary, publish=publish
    )
    return uris["parquet"]
