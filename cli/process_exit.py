"""How `i2v` ends after a run: as the interpreter does, minus its teardown of every
loaded module (`exit_now`)."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn

# Set by `i2v run` once it is done: see `exit_now`.
_FAST_EXIT: list[bool] = []


def exit_fast() -> None:
    """Have the entry point end the process with `exit_now` once this command exits."""
    _FAST_EXIT.append(True)


def fast_exit_asked() -> bool:
    return bool(_FAST_EXIT)


def exit_now(done: SystemExit) -> NoReturn:
    """Exit as the interpreter does (threads joined, every exit handler run: Prefect's
    drains, the temporary server's stop), minus its teardown of every loaded module:
    0.4-0.9 s of a 1-row run's end with Prefect, pandas and pyarrow loaded, for
    nothing. Our files are closed by then (`with` blocks); stdout and stderr are flushed."""
    code = done.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`)
            stream.flush()
    os._exit(code or 0)
