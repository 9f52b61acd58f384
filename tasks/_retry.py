"""Helpers for task options: retry only what is safe and may help; read parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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


def unquoted(value: Any) -> Any:
    """A task parameter as the task sees it, whether or not the caller quoted it."""
    unwrap = getattr(value, "unquote", None)
    return unwrap() if callable(unwrap) else value


def retry_on(*kinds: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A `retry_condition_fn` that retries only when the task raised one of `kinds`."""

    def condition(_task: Any, _run: Any, state: Any) -> bool:
        return isinstance(raised(state), kinds)

    return condition
