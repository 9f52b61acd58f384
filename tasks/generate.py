"""Generate step: the one paid call."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v import steps
from i2v.batching import Batch
from i2v.run import Job, RunContext
from i2v.state import InputRecord
from tasks._batch import carry_rows

GenerateItem = tuple[Job, InputRecord | None, str]


@task(name="generate", task_run_name="generate #{batch}", retries=0, cache_policy=NO_CACHE)
async def generate(
    ctx: RunContext, entries: Batch[GenerateItem, InputRecord], batch: int
) -> tuple[int, int]:
    """Submit one paid prediction per entry, each claimed and write-ahead recorded in
    DEST/_state/ first.

    Never retried by Prefect: a retry after a lost answer could pay twice. The client
    itself retries only when the answer proves no job was created (429, connect errors).
    Returns (submitted, not submitted).
    """

    async def one(item: GenerateItem) -> InputRecord:
        return await steps.generate(ctx, *item)

    return await carry_rows(entries, one, verb="submitting")
