"""Helpers for tasks: retry only what is safe and may help."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


async def with_retries(
    call: Callable[[], Awaitable[T]],
    kinds: tuple[type[BaseException], ...],
    delays_s: Sequence[float],
    *,
    final: tuple[type[BaseException], ...] = (),
) -> T:
    """`call()`, again after each delay while it raises one of `kinds` (but not of
    `final`: errors that already waited as long as they should).

    Retries are per row inside a batch task: one row's flaky download must not make the
    other rows of its batch run again.
    """
    for delay in delays_s:
        try:
            return await call()
        except final:
            raise
        except kinds:
            await asyncio.sleep(delay)
    return await call()


def raised(state: Any) -> BaseException | None:
    """The exception a failed task run raised, without awaiting anything.

    `state.result()` would return a coroutine inside async tasks (and so never raise);
    a failed state keeps the exception itself (or in a result record) as its data.
    """
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    inner = getattr(data, "result", None)
    return inner if isinstance(inner, BaseException) else None


def retry_on(*kinds: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A `retry_condition_fn` that retries only when the task raised one of `kinds`."""

    def condition(_task: Any, _run: Any, state: Any) -> bool:
        return isinstance(raised(state), kinds)

    return condition
