"""Retry conditions for Prefect tasks: retry only what is safe and may help."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def retry_on(*kinds: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A `retry_condition_fn` that retries only when the task raised one of `kinds`."""

    def condition(_task: Any, _run: Any, state: Any) -> bool:
        try:
            state.result()
        except kinds:
            return True
        except BaseException:
            return False
        return False

    return condition
