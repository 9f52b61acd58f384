"""A row's model, chosen per row (`model` column, else the config's) and checked against
its published schema before anything is paid: the duration against its enum or range,
manifest columns named like the model's inputs converted to the schema's types, an
`end_image` column to the model's end-frame field, required inputs present.

A row the model cannot take raises InputError (the row is `rejected`, the run goes on).
Rows of the config's hand-table model (`i2v.models`) without an end picture keep their
old identity: `i2v.row_plans.takes_schema_path` says which rows take this path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from i2v.catalog import Catalog
from i2v.errors import InputError
from i2v.model_schema import ModelSchema, build_body, convert, read_schema
from i2v.state import input_identity

END_IMAGE_COLUMN = "end_image"
# Manifest columns that are never sent as model inputs under their own name.
_RESERVED = frozenset({"id", "image", "prompt", "duration", "model", END_IMAGE_COLUMN})
_GENERIC_TAILS = frozenset({"image-to-video", "i2v", "video"})


@dataclass(frozen=True)
class RowModel:
    """What one row sends to its model, decided before payment."""

    model: str
    schema: ModelSchema
    duration: int | None
    inputs: dict[str, Any] = field(default_factory=dict)  # typed extra inputs
    end_image: str | None = None  # the end picture as written in the manifest
    price_usd: float | None = None

    @property
    def schema_version(self) -> str:
        return self.schema.version

    def model_inputs_json(self, body: Mapping[str, Any] | None = None) -> str:
        """The `model_inputs` results column: what was (or will be) sent, pictures aside."""
        shown = dict(body or {"duration": self.duration, **self.inputs})
        for key in (self.schema.first_frame, self.schema.end_frame):
            shown.pop(key or "", None)
        return json.dumps(shown, sort_keys=True, separators=(",", ":"))

    def body(self, image: str, end_image: str | None, prompt: str | None) -> dict[str, Any]:
        return build_body(
            self.schema,
            image=image,
            end_image=end_image,
            prompt=prompt or None,
            duration=self.duration,
            extras=self.inputs,
        )

    def identity(self, picture_sha256: str, end_sha256: str | None, prompt: str) -> str:
        """The paid-input identity: the typed extra inputs and the end picture are in it."""
        options: dict[str, Any] = dict(self.inputs)
        if end_sha256:
            options["end_picture"] = end_sha256
        return input_identity(
            picture_sha256=picture_sha256,
            prompt=prompt,
            duration=self.duration,
            model=self.model,
            options=options,
        )


def short_name(model: str) -> str:
    """`kwaivgi/kling-v3.0-std/image-to-video` -> `kling-v3.0-std` (bake-off ids)."""
    parts = [p for p in model.split("/") if p]
    if len(parts) < 2:
        return model.replace("/", "-")
    tail = parts[2:] if len(parts) > 2 and parts[2] not in _GENERIC_TAILS else []
    return "-".join([parts[1], *tail])


def bake_off_id(row_id: str, model: str) -> str:
    return f"{row_id}--{short_name(model)}"


def _duration(schema: ModelSchema, text: str | None) -> int | None:
    shape = schema.durations
    if shape is None:
        if text and text.strip():
            raise InputError(f"{schema.name} takes no duration")
        return None
    if not text or not text.strip():
        return schema.default_duration()
    try:
        value = float(text.strip())
    except ValueError:
        raise InputError(f"duration {text!r} is not a number of seconds") from None
    if not value.is_integer():
        raise InputError(f"duration {text!r} must be whole seconds")
    seconds = int(value)
    if len(shape) == 3 and shape[2] == "range":
        ok = int(shape[0]) <= seconds <= int(shape[1])
    else:
        ok = seconds in shape
    if not ok:
        raise InputError(
            f"duration {seconds} is not allowed by {schema.name}; use {schema.durations_text()} s"
        )
    return seconds


def plan_row_model(
    catalog: Catalog,
    *,
    cell_model: str | None,
    config_model: str,
    prompt: str,
    duration_text: str | None,
    extras: Mapping[str, str],
    first_frame_override: Mapping[str, str] | None = None,
    price_overrides: Mapping[str, float] | None = None,
) -> RowModel:
    """The row's model and what it sends; InputError (with close names) when it cannot."""
    name = (cell_model or "").strip() or config_model
    found = catalog.resolve(name)
    assert found.schema is not None
    schema = found.schema
    override = (first_frame_override or {}).get(name)
    if override:
        if override not in schema.properties:
            raise InputError(f"the configured first-frame field {override!r} is not in {name}")
        inputs_doc = {"properties": dict(schema.properties), "required": list(schema.required)}
        schema = read_schema(name, inputs_doc, version=schema.version, first_frame=override)
    duration = _duration(schema, duration_text)
    skip = {schema.first_frame, schema.end_frame, "prompt", "duration"}
    inputs = {
        key: convert(schema, key, value)
        for key, value in extras.items()
        if key in schema.properties and key not in skip and key not in _RESERVED and value.strip()
    }
    end = (extras.get(END_IMAGE_COLUMN) or "").strip() or None
    if end and schema.end_frame is None:
        raise InputError(f"{name} takes no end frame; leave end_image empty for it")
    price = model_price(
        found.price_usd,
        name,
        price_overrides,
        duration=duration,
        default_duration=schema.default_duration(),
    )
    row = RowModel(name, schema, duration, inputs, end, price)
    row.body("-", "-" if end else None, prompt)  # every schema rule, before any payment
    return row


def model_price(
    catalog_usd: float | None,
    model: str,
    overrides: Mapping[str, float] | None,
    *,
    duration: int | None = None,
    default_duration: int | None = None,
) -> float | None:
    """The price a budget counts for one video: the higher of the catalog's and the
    configured one (`prices_usd` `model:duration`, else `model`). The catalog lists one
    price per model, for its default duration; a longer video counts in proportion."""
    listed = catalog_usd
    if listed is not None and duration and default_duration and duration > default_duration:
        listed = listed * duration / default_duration
    configured = None
    for key in (f"{model}:{duration}", model):
        if key in (overrides or {}):
            configured = float((overrides or {})[key])
            break
    prices = [p for p in (listed, configured) if p is not None]
    return max(prices) if prices else None
