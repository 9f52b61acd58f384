"""`i2v run SOURCE --dest DEST`: a manifest through the batch flow, with a progress bar.

What can be checked without Prefect is checked first (`cli.checks`), so a usage error
answers in a second; Prefect's temporary server starts meanwhile (`cli.prefect_api`),
and the flows are imported only once it is up. Registered on the app by `cli.main`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import err, run_async, usage_error
from cli.logs import cli_log, hide_user_errors_from_prefect_console, quiet_prefect
from cli.options import ConfigFile
from cli.process_exit import exit_fast
from cli.summary import print_summary
from i2v.bakeoff import parse_models
from i2v.config import IMAGE_MODELS, load_options
from i2v.errors import ConfigError, DestUnreachable, I2VError, ManifestError, StorageError

# "\b" keeps click from rewrapping the example lines.
RUN_EXAMPLES = """Examples:

\b
  i2v run examples/manifest.csv --dest out/demo --config configs/local.yaml
  i2v run manifest.csv --dest s3://bucket/videos/run1 \\
      --config configs/atlascloud.yaml --budget-usd 20
  i2v run manifest.csv --dest out/x --config configs/atlascloud.yaml --dry-run

Exit codes: 0 every row landed, 1 some rows did not, 2 usage or auth error (nothing
paid), 130/143 stopped by SIGINT/SIGTERM (every prediction id recorded)."""


def run(
    source: Annotated[
        str,
        typer.Argument(
            help="A CSV, Parquet or JSON Lines manifest (path or s3://), or an s3:// prefix.",
            show_default=False,
        ),
    ],
    dest: Annotated[
        str, typer.Option("--dest", metavar="DEST", help="A folder or s3://bucket/prefix.")
    ],
    config: ConfigFile = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", metavar="N", help="Predictions in flight at once."),
    ] = None,
    poll_interval: Annotated[
        float | None,
        typer.Option(
            "--poll-interval", metavar="S", help="Least seconds between two polls of a job."
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            metavar="S",
            help="Seconds per prediction; later ones are timed_out and polled next run.",
        ),
    ] = None,
    budget_usd: Annotated[
        float | None,
        typer.Option("--budget-usd", metavar="X", help="Never submit past this spend (USD)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check every row, estimate the cost; no API call.")
    ] = False,
    resubmit_ambiguous: Annotated[
        bool,
        typer.Option(
            "--resubmit-ambiguous",
            help="Pay again for inputs whose answer was lost (may pay twice).",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="M",
            help="The model of rows with an empty model cell: any image-to-video model of "
            "`i2v models`.",
        ),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            metavar="A,B,C",
            help="Bake-off: every row through each model (ids <id>--<model>, one table).",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Approve a run over approve_over_usd without asking.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Prefect's logs and full tracebacks.")
    ] = False,
) -> None:
    """Run SOURCE through the batch flow into DEST (videos/<id>.mp4, results.parquet/.csv)."""
    quiet_prefect(verbose)
    cli_log(verbose)
    try:
        options = load_options(
            config,
            concurrency=concurrency,
            poll_interval_s=poll_interval,
            timeout_s=timeout,
            budget_usd=budget_usd,
            dry_run=dry_run or None,
            resubmit_ambiguous=resubmit_ambiguous or None,
            models=parse_models(models) if models else None,
            **model_choice(model),
        )
    except ConfigError as exc:
        raise typer.Exit(usage_error(exc)) from None
    command = _command_line(
        source,
        dest,
        config,
        {
            "--concurrency": concurrency,
            "--poll-interval": poll_interval,
            "--timeout": timeout,
            "--budget-usd": budget_usd,
            "--resubmit-ambiguous": resubmit_ambiguous,
            "--model": model,
            "--models": models,
        },
    )
    code = _run_flow(source, dest, options, verbose=verbose, command=command, yes=yes)
    exit_fast()
    raise typer.Exit(code)


def model_choice(model: str | None) -> dict[str, str]:
    """`--model M`: a hand-table model is the config's model; any other the catalog's."""
    if not model or not model.strip():
        return {}
    name = model.strip()
    return {"model": name} if name in IMAGE_MODELS else {"catalog_model": name}


def _command_line(source: str, dest: str, config: Path | None, flags: dict[str, Any]) -> list[str]:
    """The run's command, paths absolute: what `i2v status` offers to rerun it."""
    argv = ["i2v", "run", _absolute(source), "--dest", _absolute(dest)]
    if config is not None:
        argv += ["--config", _absolute(str(config))]
    for flag, value in flags.items():
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


# Loaded while Prefect's temporary server starts (cli.prefect_api), not on the way to
# the first video or after the last: the Prefect-free library, the results table's
# pandas and pyarrow, the video check's av, the picture check's PIL, the event loop.
PRELOAD = (
    *("i2v.lifecycle", "i2v.client", "cli.progress"),
    *("pandas", "pyarrow.parquet", "av", "PIL.Image", "uvloop", "anyio._backends._asyncio"),
)


def _run_flow(
    source: str,
    dest: str,
    options: Any,
    *,
    verbose: bool,
    command: list[str] | None = None,
    yes: bool = False,
) -> int:
    import importlib

    from cli.checks import check_setup, count_rows
    from cli.prefect_api import PrefectApi, PrefectUnavailable
    from i2v.memory import limit_malloc_arenas

    try:
        check_setup(dest, options)
    except ConfigError as exc:
        return usage_error(exc)
    except StorageError as exc:
        return usage_error(exc, "storage error")
    limit_malloc_arenas()  # before this process starts its threads
    # From here the server starts in the background; a usage error exits without it.
    api = PrefectApi.start()
    try:
        rows = count_rows(source, options)
    except (ConfigError, ManifestError) as exc:
        return usage_error(exc)
    except StorageError as exc:
        return usage_error(exc, "storage error")
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # uvloop is not on Windows
            importlib.import_module(name)
    try:
        api.use()  # before anything imports Prefect
    except PrefectUnavailable as exc:
        return usage_error(exc)
    from prefect import tags

    from cli.approve import approver
    from cli.progress import RunProgress
    from flows.batch import i2v_batch
    from flows.control import controlled
    from i2v.run import RunAborted, RunControl

    hide_user_errors_from_prefect_console()
    logging.getLogger("i2v.cli").info("Loaded and checked: %d rows", rows)
    progress = RunProgress(err, total=rows, simulated=options.api.simulator)
    control = RunControl([progress.listener], [progress.phase])
    control.command = command
    control.approver = approver(yes, progress.paused)
    try:
        # Tagged like the deployments' runs, so one filter in the UI finds them all.
        with progress, controlled(control), tags("i2v"):
            api.wait_ready()
            summary = run_async(i2v_batch(_absolute(source), _absolute(dest), options))
    except (ConfigError, ManifestError, RunAborted, PrefectUnavailable) as exc:
        return usage_error(exc)
    except DestUnreachable as exc:  # paid rows kept on this machine: not a usage error
        err.print(f"[red]stopped:[/red] {exc}", highlight=False, soft_wrap=True)
        return {"SIGINT": 130, "SIGTERM": 143}.get(control.signal or "", 1)
    except StorageError as exc:
        return usage_error(exc, "storage error")
    except I2VError as exc:
        if verbose:
            raise
        return usage_error(exc)
    print_summary(summary, dest)
    return summary.exit_code


def _absolute(location: str) -> str:
    """A local path as an absolute one (what the flow run records); URIs unchanged."""
    return location if "://" in location else str(Path(location).expanduser().absolute())
