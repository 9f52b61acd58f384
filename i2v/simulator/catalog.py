"""The simulated model catalog: `GET /api/v1/models` in the real listing's shape, and the
published input schema (an OpenAPI document) of each model at the entry's `schema` URL.

The real listing (Atlas's MCP `doc-fetcher.ts`): `{"code": 200, "data": [{"uuid",
"model", "type": "Video", "displayName", "schema": <OpenAPI URL>, "price": {...},
"display_console": bool, ...}]}`; a schema document keeps the inputs at
`components.schemas.Input` (`properties`, `required`, `x-order-properties`).

The `schema_drift` knob publishes a schema that disagrees with what the pipeline sends:
`renamed_field` (`image` is `image_url`), `new_required_field` (a required
`resolution`), `other_durations` (5 or 8 s). Only the published document changes: the
generate endpoint keeps taking what it always took.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any
from urllib.parse import quote

from i2v.models import DEFAULT_MODEL, MODELS, ModelSpec
from i2v.simulator.zoo import ZOO, zoo_input

SCHEMA_PATH = "/_sim/schemas/"
DRIFTS = ("renamed_field", "new_required_field", "other_durations")


def _spec(name: str) -> ModelSpec:
    return MODELS.get(name) or dataclasses.replace(MODELS[DEFAULT_MODEL], name=name)


def schema_url(base_url: str, name: str) -> str:
    return f"{base_url}{SCHEMA_PATH}{quote(name, safe='/')}.json"


def listing_entry(
    name: str, base_url: str, price_usd: float | None, *, index: int = 0
) -> dict[str, Any]:
    """One entry of the models listing, as the real API writes it."""
    spec = _spec(name)
    zoo = ZOO.get(name)
    entry: dict[str, Any] = {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"atlas-sim:{name}")),
        "model": name,
        "type": "Video",
        "displayName": name.split("/", 1)[-1].replace("/", " ").replace("-", " ").title(),
        "schema": schema_url(base_url, name),
        "display_console": True,
        "sort": index,
        "tags": ["image-to-video" if spec.needs_image else "text-to-video"],
        "categories": ["IMAGE-TO-VIDEO" if spec.needs_image else "TEXT-TO-VIDEO"],
    }
    if zoo is not None:
        entry.update(type=zoo.type, categories=[zoo.category], tags=[zoo.category.lower()])
        price_usd = zoo.price_usd if price_usd is None else price_usd
    if price_usd is not None:
        entry["price"] = {"actual": price_usd, "unit": "run", "currency": "USD"}
    return entry


def input_schema_document(name: str, drift: tuple[str, ...] = ()) -> dict[str, Any]:
    """The OpenAPI document of a model's inputs (`components.schemas.Input`)."""
    unknown = [d for d in drift if d not in DRIFTS]
    if unknown:
        raise ValueError(f"unknown schema_drift {unknown}; known: {', '.join(DRIFTS)}")
    if name in ZOO:
        return _document(name, zoo_input(ZOO[name]))
    spec = _spec(name)
    props: dict[str, dict[str, Any]] = {}
    required: list[str] = []
    if spec.needs_image:
        props["image"] = {
            "type": "string",
            "description": "The first frame: an https URL or a data:image/...;base64 URI. "
            "JPG/JPEG/PNG, at most 20 MB, short side over 300 px, aspect ratio strictly "
            "between 2:5 and 5:2.",
        }
        required.append("image")
    props["prompt"] = {
        "type": "string",
        "maxLength": spec.max_prompt_chars,
        "description": "What happens; camera moves read best as verbs.",
    }
    if not spec.needs_image:
        required.append("prompt")
    if spec.durations is not None:
        durations = [5, 8] if "other_durations" in drift else list(spec.durations)
        props["duration"] = {
            "type": "integer",
            "enum": durations,
            "default": durations[0],
            "description": "Length of the video in seconds.",
        }
    for option in sorted(spec.options):
        props[option] = {"type": "boolean", "default": False}
    if "renamed_field" in drift:
        old = "image" if "image" in props else "prompt"
        props = {(f"{old}_url" if k == old else k): v for k, v in props.items()}
        required = [f"{old}_url" if k == old else k for k in required]
    if "new_required_field" in drift:
        props["resolution"] = {"type": "string", "enum": ["768P", "1080P"]}
        required.append("resolution")
    inputs = {
        "type": "object",
        "required": required,
        "properties": props,
        "x-order-properties": list(props),
    }
    return _document(name, inputs)


def _document(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.0.1",
        "info": {"title": name, "version": "1.0.0"},
        "paths": {
            "/api/v1/model/generateVideo": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Input"}}
                        }
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "Input": inputs,
                "Output": {
                    "type": "object",
                    "properties": {"outputs": {"type": "array", "items": {"type": "string"}}},
                },
            }
        },
    }
