"""Rows step: read the manifest and check every picture before anything is paid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from i2v.config import BatchOptions
from i2v.errors import StorageError
from i2v.manifest import Manifest
from i2v.row_plans import read_rows_for
from i2v.rows import check_rows
from i2v.run import RowPlan
from tasks._retry import retry_on


@task(
    name="read-manifest",
    retries=2,
    retry_delay_seconds=[1, 4],
    retry_condition_fn=retry_on(StorageError),
    cache_policy=NO_CACHE,
)
def read_rows(source: str, options: BatchOptions, s3_client: Any = None) -> Manifest:
    """Read SOURCE (CSV path, s3:// CSV, or s3:// prefix of pictures) into checked rows.

    A manifest that cannot be used raises ManifestError before anything is paid.
    """
    return read_rows_for(source, options, s3_client)


@dataclass(frozen=True)
class CheckedRows:
    """check-pictures' result as one object: Prefect links each item of a returned
    list to its task run, which for a list of plans is an entry per row for the whole
    flow run."""

    plans: list[RowPlan]


@task(name="check-pictures", cache_policy=NO_CACHE)
async def check_pictures(
    manifest: Manifest,
    options: BatchOptions,
    s3_client: Any = None,
    catalog: Any = None,
    catalog_error: str | None = None,
) -> CheckedRows:
    """Check each row's model (`catalog`: the rows naming a model need it), decode and
    check every picture (format, size, aspect) and hash each input."""
    plans = await check_rows(
        manifest, options, s3_client=s3_client, catalog=catalog, catalog_error=catalog_error
    )
    return CheckedRows(plans)
