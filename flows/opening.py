"""A run's opening: its id, DEST, the manifest's rows and their checked plans, before
anything is paid; and the dry run, which ends there."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from flows.clients import model_catalog, s3_client_for
from flows.task_runs import opaque, run_task_after
from i2v.config import BatchOptions
from i2v.dest import open_storage
from i2v.dry_run import dry_run_counts, per_model_lines
from i2v.manifest import Manifest
from i2v.results import RunSummary
from i2v.row_plans import needs_catalog
from i2v.run import Job, RowPlan, RunContext
from i2v.storage import Storage
from tasks.rows import check_pictures, read_rows


def new_run_id() -> str:
    """Sortable and traceable: UTC time plus the Prefect flow run id's prefix."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run = flow_run.get_id()
    return f"{stamp}-{str(run)[:8]}" if run else stamp


@dataclass
class OpenedRun:
    """A run's inputs, read and checked: nothing has been paid yet."""

    run_id: str
    s3: Any
    dest: Storage
    manifest: Manifest
    plans: list[RowPlan]
    # The check-pictures task run: where every row's steps start in the run's graph.
    checked_by: UUID | None = None


async def open_run(
    source: str,
    dest: str,
    options: BatchOptions,
    *,
    lines: Sequence[int] | None = None,
) -> OpenedRun:
    """S3 client, DEST, the manifest (only `lines`, for a shard) and its checked plans."""
    logger = get_run_logger()
    s3 = s3_client_for(options) if "s3://" in source + dest else None
    storage = open_storage(dest, s3_client=s3)
    read_id, check_id = uuid4(), uuid4()
    manifest = await asyncio.to_thread(
        run_task_after,
        read_rows,
        (),
        edge="source",
        task_run_id=read_id,
        source=source,
        options=options,
        s3_client=opaque(s3),
    )
    if lines is not None:
        wanted = set(lines)
        manifest.rows = [r for r in manifest.rows if r.line in wanted]
    catalog, catalog_error = None, None
    if needs_catalog(manifest.rows, options):
        catalog, catalog_error = await model_catalog(options)
        if catalog is not None and catalog.from_cache:
            logger.info("model catalog: the cached copy, %s old", catalog.age_text())
    checked = await run_task_after(
        check_pictures,
        [read_id],
        edge="manifest",
        task_run_id=check_id,
        manifest=opaque(manifest),
        options=options,
        s3_client=opaque(s3),
        catalog=opaque(catalog),
        catalog_error=catalog_error,
    )
    plans = checked.plans
    inputs = len({p.identity for p in plans if p.identity and not p.error})
    for plan in plans:  # settled already: each gets its line, as every other row does
        if plan.error:
            logger.info("%s: rejected (%s)", plan.row_id, plan.error)
    logger.info(
        "%d rows, %d distinct inputs, %d rejected before any call",
        len(plans),
        inputs,
        sum(1 for p in plans if p.error),
    )
    return OpenedRun(new_run_id(), s3, storage, manifest, plans, checked_by=check_id)


def dry_run_summary(
    ctx: RunContext, source: str, opened: OpenedRun, jobs: Sequence[Job]
) -> RunSummary:
    """Counts and the cost estimate without calling the API or writing anything."""
    counts, estimate = dry_run_counts(ctx, opened.plans, jobs)
    by_model = per_model_lines(ctx, opened.plans, jobs)
    with contextlib.suppress(Exception):
        ctx.log.info("dry run: %s; estimated cost $%.2f", counts, estimate)
        for line in by_model:
            ctx.log.info("dry run: %s", line)
    return RunSummary(
        run_id=ctx.run_id,
        source=source,
        dest=ctx.dest.uri,
        rows=len(opened.plans),
        inputs=len(jobs),
        counts=counts,
        estimated_usd=estimate,
        by_model=by_model,
        dry_run=True,
        simulated=ctx.simulated,
    )
