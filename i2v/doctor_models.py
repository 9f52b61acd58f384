"""`i2v doctor`'s model checks: each model the config (`catalog_model`, `models`) and
the manifest's `model` column name, against the catalog and its published schema, with
the manifest columns each would be sent as typed inputs. Costs nothing: the listing and
the schemas need no key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from i2v.catalog import Catalog, default_cache_path, load_catalog
from i2v.config import BatchOptions
from i2v.doctor import Check
from i2v.errors import ConfigError, InputError
from i2v.manifest import Manifest
from i2v.row_plans import MODEL_COLUMN, row_model_name


def named_models(options: BatchOptions, manifest: Manifest | None) -> list[str]:
    """The models a run would send rows to, beyond the config's hand-table one."""
    names = [options.catalog_model.strip()]
    if options.models:  # a bake-off sends every row to each, whatever its cell says
        names += options.models
    elif manifest is not None:
        names += [
            row_model_name(r, str(options.model), options.catalog_model) for r in manifest.rows
        ]
    return [n for n in dict.fromkeys(names) if n and n != str(options.model)]


def check_models(
    catalog: Catalog, names: Sequence[str], columns: Sequence[str] = ()
) -> list[Check]:
    checks = []
    for name in names:
        try:
            found = catalog.resolve(name)
        except InputError as exc:
            checks.append(Check(False, str(exc), "use a model that `i2v models` lists"))
            continue
        schema = found.schema
        assert schema is not None
        sent = [c for c in columns if c in schema.properties and c != MODEL_COLUMN]
        price = f"${found.price_usd:.2f}" if found.price_usd is not None else "no listed price"
        checks.append(
            Check(
                True,
                f"model {name}: {price}, durations {schema.durations_text()}, first frame "
                f"`{schema.first_frame}`, end frame `{schema.end_frame or '-'}`, required "
                f"{', '.join(sorted(schema.required)) or '-'}"
                + (f"; manifest columns sent as inputs: {', '.join(sent)}" if sent else ""),
            )
        )
    return checks


async def model_checks(
    client: Any, options: BatchOptions, manifest: Manifest | None
) -> list[Check]:
    names = named_models(options, manifest)
    if not names:
        return []
    try:
        catalog = await load_catalog(client, default_cache_path(client.base_url))
    except ConfigError as exc:
        return [Check(False, f"models {', '.join(names)}: {exc}", "check the API host")]
    columns = manifest.extra_columns if manifest is not None else []
    return check_models(catalog, names, columns)
