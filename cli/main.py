"""The `i2v` command: one app with `run` (cli/run.py), `simulate`, `status`, `doctor`
and `worker`, and the console script's entry point.

Exit codes: 0 every row landed; 1 some rows did not; 2 usage, config or auth error
(nothing submitted); 130 / 143 stopped by SIGINT / SIGTERM (bookkeeping done).
"""

from __future__ import annotations

import sys
from typing import Any

import typer
import typer.core

from cli.doctor import DOCTOR_EXAMPLES
from cli.doctor import doctor as doctor_command
from cli.models import models as models_command
from cli.process_exit import exit_now, fast_exit_asked
from cli.run import RUN_EXAMPLES
from cli.run import run as run_command
from cli.simulate import simulate as simulate_command
from cli.status import STATUS_EXAMPLES
from cli.status import status as status_command
from cli.worker import worker as worker_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    # Plain click help: it wraps to the terminal and shows no type placeholders.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Turn a table of pictures and prompts into videos with Atlas Cloud (MiniMax Hailuo 2.3).",
)


class _PlainHelp(typer.core.TyperCommand):
    """Help in plain words: arguments as `SOURCE`, not `{source}` and `<str>`."""

    def _arguments(self, ctx: Any) -> list[Any]:
        return [p for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.options_metavar or "", *(str(p.name).upper() for p in self._arguments(ctx))]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args = [(str(p.name).upper(), getattr(p, "help", "") or "") for p in self._arguments(ctx)]
        opts = [
            rv
            for p in self.get_params(ctx)
            if p.param_type_name == "option" and (rv := p.get_help_record(ctx)) is not None
        ]
        if args:  # `i2v doctor` takes none
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        with formatter.section("Options"):
            formatter.write_dl(opts)


# Every command is registered here, so every entry point (`i2v`, `python -m cli.main`)
# has them, in this order in the help.
app.command(name="run", cls=_PlainHelp, epilog=RUN_EXAMPLES)(run_command)
app.command(name="simulate")(simulate_command)
app.command(name="status", cls=_PlainHelp, epilog=STATUS_EXAMPLES)(status_command)
app.command(name="doctor", cls=_PlainHelp, epilog=DOCTOR_EXAMPLES)(doctor_command)
app.command(name="worker", cls=_PlainHelp)(worker_command)
app.command(name="models", cls=_PlainHelp)(models_command)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit as done:
        if not fast_exit_asked():
            raise
        exit_now(done)


if __name__ == "__main__":
    main()
