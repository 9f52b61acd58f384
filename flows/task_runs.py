"""How the flows start task runs: arguments Prefect does not walk, edges declared in
the run's graph, and task runs without the flow run's tags."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar, cast
from uuid import UUID

from prefect.utilities.annotations import quote

T = TypeVar("T")


def opaque(value: T) -> T:
    """Pass `value` to a task without Prefect walking through it.

    Prefect visits every task argument to find upstream futures; for our run context
    and job objects that walk cost more CPU than the task itself (measured: ~6 s per
    200-row batch), and they hold no futures.
    """
    return cast(T, quote(value))


def run_task_after(
    task: Any,
    after: Iterable[UUID | None],
    *,
    edge: str,
    task_run_id: UUID | None = None,
    **parameters: Any,
) -> Any:
    """`task(**parameters)`, its task run drawn in the flow run's graph after the task
    runs `after`, as an input of its parameter `edge`.

    Prefect draws an edge only where a task's result, state or future is passed to
    another task, and `wait_for` would wait for them. Our steps hand rows on one at a
    time while the upstream task run is still open (`i2v.batching`), and their
    arguments are `opaque` (not walked), so the edge is declared instead: the same
    dependency record Prefect's own task runners pass to the engine. Returns what the
    task returns (a coroutine for an async task).
    """
    from prefect.client.schemas.objects import TaskRunResult
    from prefect.task_engine import run_task

    upstream = {TaskRunResult(id=i) for i in after if i is not None}
    return run_task(
        task=task,
        task_run_id=task_run_id,
        parameters=parameters,
        dependencies={edge: cast(Any, upstream)} if upstream else None,
        return_type="result",
    )


@contextlib.contextmanager
def untagged_task_runs() -> Iterator[None]:
    """Task runs started inside carry no tags, whatever the flow run's tags are.

    A tagged task run asks the API for the tag's concurrency slots as it starts, and
    Prefect remembers "no such limit" for only 5 s: a wave of 40 submissions waited up
    to 2 s behind that call (measured, N = 200). The flow run keeps its tags (`i2v`
    from the CLI, a deployment's own), where the UI's filters work; a deployment's
    task runs carried none already.
    """
    from prefect.context import TagsContext

    with TagsContext(current_tags=set()):
        yield
