"""What more than one `i2v` command uses: the consoles, the one-line usage error, and
the event loop a command's async work runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from rich.console import Console

T = TypeVar("T")

err = Console(stderr=True)
out = Console()


def usage_error(exc: BaseException, label: str = "error") -> int:
    """One line, no traceback: what went wrong and what to do (it is in the message)."""
    err.print(f"[red]{label}:[/red] {exc}", highlight=False, soft_wrap=True)
    return 2


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop where it is installed (not on Windows).

    The batch's event loop carries every row's HTTP calls; uvloop's cheaper loop and
    transports measured +2 points of efficiency on the 200-row benchmark.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def quick_client(options: Any, base_url: str | None, api_key: str, max_connections: int) -> Any:
    """An Atlas client for a command that answers in seconds: one retry, short timeouts."""
    from i2v.client import AtlasClient
    from i2v.retry import RetryPolicy
    from i2v.session import Timeouts

    return AtlasClient(
        api_key=api_key,
        base_url=base_url,
        user_agent=options.api.user_agent,
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.25),
        timeouts=Timeouts(connect_s=5.0, read_s=15.0),
        max_connections=max_connections,
    )
