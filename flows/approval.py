"""Before a run's first paid call: the balance note (`i2v.account`) on the estimate of
its new inputs (`i2v.estimate`). One call from `flows/batch.py`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from i2v.account import balance_preflight
from i2v.client import AtlasClient
from i2v.config import BatchOptions
from i2v.estimate import estimate
from i2v.run import Job


async def before_paying(
    client: AtlasClient,
    log: logging.Logger | logging.LoggerAdapter[Any],
    options: BatchOptions,
    jobs: Sequence[Job],
    catalog_usd: float | None,
) -> None:
    """The balance against what this run's new inputs would cost."""
    est = estimate(options, jobs, catalog_usd=catalog_usd)
    await balance_preflight(client, log, est)
