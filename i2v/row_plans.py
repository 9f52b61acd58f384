"""A row's model (`i2v.row_models`) in a run: which rows take the schema path, the plan
each gets before anything is paid, its price, the request its generate step sends, and
the bake-off's rows (every row x each model).

Rows of the config's hand-table model (`i2v.models`) without an end picture keep the
body and identity they always had: nothing paid before is paid again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

from i2v.catalog import Catalog
from i2v.config import BatchOptions
from i2v.errors import InputError
from i2v.manifest import Manifest, ManifestRow, read_manifest_for
from i2v.models import MODELS, build_inputs
from i2v.row_models import END_IMAGE_COLUMN, bake_off_id, plan_row_model
from i2v.run import Job, RowPlan, RunContext

MODEL_COLUMN = "model"


def row_model_name(row: ManifestRow, config_model: str, catalog_model: str = "") -> str:
    """The row's `model` cell, else `catalog_model` (`--model` naming a catalog model),
    else the config's model."""
    cell = (row.extras.get(MODEL_COLUMN) or "").strip()
    return cell or catalog_model.strip() or config_model


def takes_schema_path(row: ManifestRow, config_model: str, catalog_model: str = "") -> bool:
    """Every row but one of the config's hand-table model with no end picture."""
    model = row_model_name(row, config_model, catalog_model)
    end = (row.extras.get(END_IMAGE_COLUMN) or "").strip()
    return model != config_model or model not in MODELS or bool(end)


def needs_catalog(rows: Iterable[ManifestRow], options: BatchOptions) -> bool:
    model, other = str(options.model), options.catalog_model
    return any(r.error is None and takes_schema_path(r, model, other) for r in rows)


def plan_models(
    plans: Sequence[RowPlan],
    options: BatchOptions,
    catalog: Catalog | None,
    catalog_error: str | None = None,
) -> None:
    """Give each schema-path row its plan, or its error (the row is `rejected`)."""
    config_model, other = str(options.model), options.catalog_model
    for plan in plans:
        row = plan.row
        if plan.error or not takes_schema_path(row, config_model, other):
            continue
        name = row_model_name(row, config_model, other)
        if catalog is None:
            plan.error = f"model {name!r}: the model catalog cannot be read ({catalog_error})"
            continue
        # A row of the config's model had its duration read (with the config's default);
        # another model's empty cell means that model's own default.
        duration = row.duration_text.strip()
        if not duration and row.duration and name == config_model:
            duration = str(row.duration)
        try:
            plan.row_model = plan_row_model(
                catalog,
                cell_model=name,
                config_model=config_model,
                prompt=row.prompt,
                duration_text=duration,
                extras=row.extras,
                price_overrides=options.prices_usd,
            )
        except InputError as exc:
            plan.error = str(exc)
            continue
        if plan.row_model.price_usd is None:
            plan.error = f"no price for {name}: the catalog lists none; add it under prices_usd"


def job_price(options: BatchOptions, job: Job, catalog_usd: float | None = None) -> float:
    """What one video of this input counts against a budget (one rule for every caller)."""
    if job.row_model is not None and job.row_model.price_usd is not None:
        return job.row_model.price_usd
    return options.price(job.duration, catalog_usd=catalog_usd)


def request_of(
    ctx: RunContext, job: Job, image_url: str, end_url: str | None
) -> tuple[str, dict[str, Any]]:
    """The model and the body this input's generate step sends."""
    if job.row_model is None:
        return ctx.model, build_inputs(
            ctx.spec, image=image_url, prompt=job.prompt, duration=job.duration, options=job.options
        )
    return job.row_model.model, job.row_model.body(image_url, end_url, job.prompt)


def model_of(plan: RowPlan, config_model: str, catalog_model: str = "") -> str:
    """The results table's `model`: the row's model (its cell, when it was refused)."""
    if plan.row_model is not None:
        return plan.row_model.model
    return row_model_name(plan.row, config_model, catalog_model)


def model_inputs_of(plan: RowPlan, options: dict[str, Any] | None = None) -> str | None:
    """The results table's `model_inputs`: what is sent besides pictures and prompt."""
    if plan.error:
        return None
    if plan.row_model is not None:
        return plan.row_model.model_inputs_json()
    shown = {"duration": plan.row.duration, **(options or {})}
    return json.dumps(shown, sort_keys=True, separators=(",", ":"))


# Read as "another model's rows": durations and prompts wait for each model's schema.
_ANY_OTHER_MODEL = "(each bake-off model)"


def read_rows_for(source: str, options: BatchOptions, s3_client: Any = None) -> Manifest:
    """The manifest; for a bake-off (`options.models`), every row x each model as
    `<id>--<model short name>` rows of one manifest. Each pair is its own paid input;
    the config's model reads and keeps its rows as a plain run does (same identities)."""
    plain = read_manifest_for(source, options, s3_client)
    if not options.models:
        return plain
    other = options.model_copy(update={"catalog_model": _ANY_OTHER_MODEL})
    deferred = read_manifest_for(source, other, s3_client)
    config_model = str(options.model)
    rows: list[ManifestRow] = []
    for row, later in zip(plain.rows, deferred.rows, strict=True):
        base = row.id or f"line-{row.line}"
        for model in options.models:
            src = row if model == config_model else later
            extras = {**src.extras, MODEL_COLUMN: model}
            rows.append(dataclasses.replace(src, id=bake_off_id(base, model), extras=extras))
    plain.rows = rows
    if MODEL_COLUMN not in plain.extra_columns:
        plain.extra_columns.append(MODEL_COLUMN)
    return plain
