"""`i2v run`'s answer to a run over `approve_over_usd`: `--yes`, a yes on a terminal,
or, with no terminal to ask, a usage error before anything is paid (exit 2)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager

import typer

from cli.common import err
from i2v.errors import ConfigError


def approver(
    yes: bool, quiet: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
) -> Callable[[str], bool]:
    """What the flow calls instead of pausing (`RunControl.approver`); `quiet` holds
    the progress bar still while the question is on the terminal."""

    def ask(description: str) -> bool:
        if yes:
            err.print("approved by --yes", highlight=False)
            return True
        if not sys.stdin.isatty():
            raise ConfigError(
                "this run's estimate is over approve_over_usd and there is no terminal to "
                "ask: pass --yes to approve it (nothing was paid)"
            )
        with quiet():
            err.print(description, highlight=False, soft_wrap=True)
            return typer.confirm("Approve this run?", default=False, err=True)

    return ask
