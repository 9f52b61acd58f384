"""What the console shows of logs during `i2v run`: the CLI's own start-up lines with
--verbose, Prefect's lines kept out of the progress bar, and no second telling of a
usage error (the Prefect UI keeps the full record)."""

from __future__ import annotations

import logging
import os


def cli_log(verbose: bool) -> None:
    """With --verbose, the CLI's own start-up lines (cli.prefect_api), in Prefect's format."""
    log = logging.getLogger("i2v.cli")
    if verbose and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"
            )
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def quiet_prefect(verbose: bool) -> None:
    """Keep Prefect's per-task console lines out of the progress bar (the UI keeps them)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not verbose:
        # ERROR: Prefect's own shutdown notes ("EventsWorker - Still processing items")
        # are not the user's business; the run's warnings are in the UI and the summary.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "ERROR")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "WARNING")


class _UserErrorFilter(logging.Filter):
    """Drop Prefect's console lines about a run that failed on a usage error: the CLI
    says it in one line (the Prefect UI keeps the full record)."""

    NAMES = (
        "ConfigError",
        "ManifestError",
        "StorageError",
        "DestUnreachable",
        "RunAborted",
        "InputError",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in self.NAMES:
            return False
        text = record.getMessage()
        return not any(name in text for name in self.NAMES)


def hide_user_errors_from_prefect_console() -> None:
    import prefect  # noqa: F401  (sets up Prefect's logging handlers)

    handlers = {
        h
        for lg in logging.Logger.manager.loggerDict.values()
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
    }
    handlers |= set(logging.getLogger().handlers)
    for handler in handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.addFilter(_UserErrorFilter())
