"""Results step: the results table in DEST (history under runs/<run-id>/), and the
run's records into `i2v status`'s index."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from i2v.claims import Records
from i2v.errors import StorageError
from i2v.outage import DestWatch
from i2v.results import RunSummary, write_tables
from i2v.status_index import refresh_index
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
    storage: Storage,
    frame: Any,
    summary: RunSummary,
    *,
    publish: bool = True,
    records: Records | None = None,
    watch: DestWatch | None = None,
) -> str:
    """Write DEST/runs/<run-id>/results.* and summary.json and, unless a shard, the
    current DEST/results.*; returns the table's URI. Then the run's `records` go into
    the index `i2v status` reads an S3 DEST with, so the next status reads only what
    changed since.

    Shards (`publish=False`) leave DEST/results.* to their fan-out parent, which merges
    the shards' run tables into the one current table; their records they index
    themselves (the parent never holds them).
    """
    # A DEST away for a while is waited for as long as the run waits for DEST.
    watch = watch or DestWatch(storage.uri, 0.0)
    uris = await watch.call(write_tables, storage, frame, summary.run_id, summary, publish=publish)
    if records is not None:
        try:
            await asyncio.to_thread(lambda: refresh_index(storage, records.latest()))
        except Exception as exc:  # only a cache: never worth failing the run over
            get_run_logger().warning(
                "status index not refreshed (%s): the next `i2v status` reads more", exc
            )
    return uris["parquet"]
