"""From manifest rows to plans and jobs: check each picture, name each row, group rows
that are the same paid input (`i2v.lifecycle.triage` reads their durable records).

Nothing here calls the API or pays: a bad row gets an error and never stops the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from i2v._constants import is_safe_id
from i2v.catalog import Catalog
from i2v.concurrency import parallel_map
from i2v.config import BatchOptions
from i2v.errors import InputError, StorageError
from i2v.locations import read_location
from i2v.manifest import Manifest, ManifestRow
from i2v.media import MAX_IMAGE_BYTES, ImageInfo, check_image
from i2v.models import build_inputs, get_model
from i2v.row_plans import plan_models
from i2v.run import Job, RowPlan
from i2v.state import input_identity


async def check_rows(
    manifest: Manifest,
    options: BatchOptions,
    *,
    s3_client: Any | None = None,
    workers: int = 16,
    catalog: Catalog | None = None,
    catalog_error: str | None = None,
) -> list[RowPlan]:
    """Read and check every row's picture (and end picture); give each row its model
    plan (`i2v.row_plans`), its id and its input identity.

    Only digests are kept, never the picture bytes, so memory stays flat for big
    manifests.
    """
    spec = get_model(str(options.model))
    model_options = model_options_of(options)
    plans = [RowPlan(row=row, error=row.error) for row in manifest.rows]
    plan_models(plans, options, catalog, catalog_error)
    for plan in plans:
        if plan.error is None and plan.row_model is None:
            try:
                build_inputs(
                    spec,
                    image="-",
                    prompt=plan.row.prompt,
                    duration=plan.row.duration,
                    options=model_options,
                )
            except InputError as exc:
                plan.error = str(exc)
    # One read and decode per distinct picture, however many rows use it; a pool of
    # threads, not a coroutine per row (a 100,000-row manifest stays small).
    first: dict[str, ManifestRow] = {}
    for plan in plans:
        if plan.error is None and plan.row.image_location is not None:
            first.setdefault(plan.row.image_location, plan.row)
        end = plan.row.end_image_location
        if plan.error is None and plan.row_model is not None and end is not None:
            shown = plan.row.extras.get("end_image", "")
            first.setdefault(end, dataclasses.replace(plan.row, image=shown, image_location=end))
    infos = await asyncio.to_thread(_check_all, list(first.values()), s3_client, workers)
    checked = dict(zip(first, infos, strict=True))
    for plan in plans:
        if plan.error is not None:
            continue
        assert plan.row.image_location is not None
        info = checked[plan.row.image_location]
        if isinstance(info, str):
            plan.error = info
            continue
        plan.picture = info
        if plan.row_model is not None:
            end_info = checked.get(plan.row.end_image_location or "")
            if isinstance(end_info, str):
                plan.error = f"end_image: {end_info}"
                continue
            plan.end_picture = end_info
            plan.identity = plan.row_model.identity(
                info.sha256, end_info.sha256 if end_info else None, plan.row.prompt
            )
            continue
        plan.identity = input_identity(
            picture_sha256=info.sha256,
            prompt=plan.row.prompt,
            duration=plan.row.duration if spec.durations else None,
            model=spec.name,
            options=model_options,
        )
    assign_row_ids(plans)
    return plans


def _check_all(
    rows: Sequence[ManifestRow], s3_client: Any | None, workers: int
) -> list[ImageInfo | str]:
    """Each row's picture checked (or the message why not), `workers` at a time.

    A picture that cannot be fetched (refused address, reset, timeout, HTTP error, an
    s3:// object this worker may not read) is its row's problem, never the run's.
    """

    def one(row: ManifestRow) -> ImageInfo | str:
        try:
            return _read_and_check(row, s3_client)
        except (InputError, StorageError) as exc:
            return str(exc)

    return parallel_map(one, rows, workers)


def _read_and_check(row: ManifestRow, s3_client: Any | None) -> ImageInfo:
    assert row.image_location is not None
    data = read_location(row.image_location, s3_client=s3_client, max_bytes=MAX_IMAGE_BYTES)
    return check_image(data, name=row.image)


def model_options_of(options: BatchOptions) -> dict[str, Any]:
    """The model options that are part of an input's identity and of the request body."""
    spec = get_model(str(options.model))
    out: dict[str, Any] = {}
    if "enable_prompt_expansion" in spec.options:
        out["enable_prompt_expansion"] = bool(options.enable_prompt_expansion)
    return out


def assign_row_ids(plans: Sequence[RowPlan]) -> None:
    """Use the manifest's id, else a short content hash, else the CSV line number."""
    taken: set[str] = {p.row.id for p in plans if p.row.id}
    for plan in plans:
        if plan.row.id:
            plan.row_id = plan.row.id
            if not is_safe_id(plan.row_id):
                plan.error = plan.error or (
                    f"id {plan.row_id!r} cannot name a file: no '/' or '\\', at most 200 chars"
                )
            continue
        base = plan.identity[:12] if plan.identity else f"line-{plan.row.line}"
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        plan.row_id = candidate
        taken.add(candidate)


def group_jobs(plans: Sequence[RowPlan], options: BatchOptions) -> list[Job]:
    """One job per distinct identity, in manifest order; duplicates ride along."""
    jobs: dict[str, Job] = {}
    model_options = model_options_of(options)
    for plan in plans:
        if plan.error or plan.identity is None or plan.picture is None:
            continue
        job = jobs.get(plan.identity)
        if job is None:
            assert plan.row.image_location is not None
            row_model = plan.row_model
            jobs[plan.identity] = Job(
                identity=plan.identity,
                rows=[plan],
                image_location=plan.row.image_location,
                picture=plan.picture,
                prompt=plan.row.prompt,
                duration=row_model.duration if row_model else plan.row.duration,
                options=model_options if row_model is None else {},
                row_model=row_model,
                end_location=plan.row.end_image_location if plan.end_picture else None,
                end_picture=plan.end_picture,
            )
        else:
            job.rows.append(plan)
    return list(jobs.values())
