"""Land step: stream paid videos into DEST."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import landing
from i2v.batching import Batch
from i2v.errors import DestUnreachable, OutputError, StorageError, TransportError
from i2v.run import Job, RunContext
from i2v.state import InputRecord
from tasks._batch import carry_rows
from tasks._retry import with_retries

LAND_RETRY_DELAYS_S = (2.0, 8.0)
LandItem = tuple[Job, InputRecord]


@task(name="land", task_run_name="land #{batch}", cache_policy=NO_CACHE)
async def land(
    ctx: RunContext, entries: Batch[LandItem, InputRecord], batch: int
) -> tuple[int, int]:
    """For each entry: download the output to a staged file, check it is an mp4 and move
    it to videos/<id>.mp4 (copies for duplicate rows follow in `i2v.lifecycle`).

    Safe to retry per row: the prediction is already paid and the output URL lasts
    14 days. Returns (landed, failed).
    """

    async def one(item: LandItem) -> InputRecord:
        job, record = item
        return await with_retries(
            lambda: landing.land(ctx, job, record),
            (OutputError, StorageError, TransportError, OSError),
            LAND_RETRY_DELAYS_S,
            final=(DestUnreachable,),  # it waited for DEST as long as the run does
        )

    return await carry_rows(entries, one, verb="landing")
