"""What every per-row step task shares: a name that says how many rows it carried, and
a log line in the task run naming them.

A step's task run opens when a row reaches the step and keeps taking rows for a while
(`i2v.batching`), so its row count is known only when it stops taking them. It starts
as `generate #3` (the step's third task run in this flow run) and is renamed
`generate #3 · 25 rows` then: the new name travels with the task run's final state, so
it costs no extra API call, and its log says which rows it carried the moment it closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from i2v.batching import Batch, settle_each
from i2v.run import Job

I = TypeVar("I")  # noqa: E741 - the item type, as in i2v.batching
R = TypeVar("R")


def rows_label(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _job(item: Any) -> Job:
    job = item[0] if isinstance(item, tuple) else item
    assert isinstance(job, Job), type(job)
    return job


def row_names(items: Sequence[Any]) -> str:
    """`a, b, rocket (+ rocket-copy)`: each input's row, its duplicate rows in brackets."""
    names = []
    for item in items:
        job = _job(item)
        copies = [r.row_id for r in job.rows[1:]]
        names.append(f"{job.name} (+ {', '.join(copies)})" if copies else job.name)
    return ", ".join(names)


async def carry_rows(
    entries: Batch[I, R], one: Callable[[I], Awaitable[R]], *, verb: str
) -> tuple[int, int]:
    """`one(item)` for every row of the batch (see `i2v.batching.settle_each`), with the
    task run renamed and logged when the batch stops taking rows. Returns (ok, failed)."""
    logger = get_run_logger()
    context = TaskRunContext.get()

    def closed(items: list[I]) -> None:
        if context is not None:
            context.task_run.name = f"{context.task_run.name} · {rows_label(len(items))}"
        logger.info("%s %s: %s", verb, rows_label(len(items)), row_names(items))

    ok, failed = await settle_each(entries, one, on_closed=closed)
    if failed:
        logger.info(
            "%d of %s did not get through (see each row's line in the flow run's log)",
            failed,
            rows_label(ok + failed),
        )
    return ok, failed
