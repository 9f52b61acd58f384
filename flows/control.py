"""Who steers a run: the caller's listeners and stop switch (`i2v.run.RunControl`),
and the signals that wind a run down with its bookkeeping done."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from contextvars import ContextVar

from i2v.run import RunControl

# The caller's listeners and stop switch for the flows it runs in this context (the
# CLI sets it around one command); a worker's run gets a fresh one.
_CONTROL: ContextVar[RunControl | None] = ContextVar("i2v_run_control", default=None)


@contextlib.contextmanager
def controlled(control: RunControl) -> Iterator[RunControl]:
    """Run the flows called inside this block under `control`."""
    token = _CONTROL.set(control)
    try:
        yield control
    finally:
        _CONTROL.reset(token)


def current_control() -> RunControl:
    return _CONTROL.get() or RunControl()


@contextlib.contextmanager
def stop_on_signals(control: RunControl) -> Iterator[None]:
    """SIGTERM (a worker cancelling the run, Docker, Kubernetes) and the first SIGINT
    wind the run down with its bookkeeping done, instead of killing it mid-flight.

    Only where this thread owns the signals (the main thread of the process); a second
    SIGINT falls back to the default: stop now.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def handler(signum: int) -> None:
        name = signal.Signals(signum).name
        if control.signal is not None and signum == signal.SIGINT:
            loop.remove_signal_handler(signum)
            signal.raise_signal(signum)
            return
        control.request_stop(name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, handler, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
