"""A model's published input schema (`components.schemas.Input`), read into the rules a
generate body must follow: its fields and their types, the required ones, the first-
and end-frame fields and the durations it takes.

One definition of "does this body fit the schema", used by the pipeline before paying
and by the simulator when it answers 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from i2v.errors import InputError

# The first-frame field by rule, in order of preference; a config override wins.
FIRST_FRAME_FIELDS = ("image", "image_url", "first_frame", "first_frame_image", "start_image")
END_FRAME_FIELDS = ("end_image", "end_image_url", "last_image", "last_frame", "tail_image")
LIST_FRAME_FIELDS = ("images", "image_urls", "reference_images")
# Fields the API takes besides a model's inputs.
TRANSPORT_FIELDS = frozenset({"model", "webhook_url"})


@dataclass(frozen=True)
class ModelSchema:
    """What one model takes, read from its published Input schema."""

    name: str
    properties: Mapping[str, Mapping[str, Any]]
    required: frozenset[str]
    first_frame: str | None = None
    end_frame: str | None = None
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def durations(self) -> tuple[int, ...] | tuple[int, int, str] | None:
        """The enum of durations, `(low, high, "range")`, or None (no duration input)."""
        node = self.properties.get("duration")
        if node is None:
            return None
        enum = node.get("enum")
        if isinstance(enum, list):
            return tuple(int(x) for x in enum)
        low, high = node.get("minimum"), node.get("maximum")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)):
            return (int(low), int(high), "range")
        return None

    def durations_text(self) -> str:
        d = self.durations
        if d is None:
            return "-"
        if len(d) == 3 and d[2] == "range":
            return f"{d[0]}-{d[1]}"
        return "|".join(str(x) for x in d)

    def default_duration(self) -> int | None:
        node = self.properties.get("duration")
        if node is None:
            return None
        default = node.get("default")
        if isinstance(default, int) and not isinstance(default, bool):
            return default
        d = self.durations
        return int(d[0]) if d else None

    def takes_picture(self) -> bool:
        return self.first_frame is not None


def read_schema(
    name: str, inputs: Mapping[str, Any], *, version: str = "", first_frame: str | None = None
) -> ModelSchema:
    """The rules of a resolved Input schema; `first_frame` overrides the naming rule."""
    raw = inputs.get("properties")
    props: dict[str, Mapping[str, Any]] = {
        k: v
        for k, v in (raw.items() if isinstance(raw, Mapping) else [])
        if isinstance(v, Mapping) and not v.get("hidden") and not v.get("disabled")
    }
    req = inputs.get("required")
    required = frozenset(r for r in (req if isinstance(req, list) else []) if isinstance(r, str))
    if first_frame is None:
        names = (*FIRST_FRAME_FIELDS, *LIST_FRAME_FIELDS)
        first_frame = next((f for f in names if f in props), None)
    end = next((f for f in END_FRAME_FIELDS if f in props and f != first_frame), None)
    return ModelSchema(name, props, required, first_frame, end, version)


def _type_problem(key: str, node: Mapping[str, Any], value: Any) -> str | None:
    kind = node.get("type")
    if kind == "boolean" and not isinstance(value, bool):
        return f"{key} must be true or false"
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{key} must be an integer"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{key} must be a number"
    if kind == "string" and not isinstance(value, str):
        return f"{key} must be a string"
    if kind == "array":
        if not isinstance(value, list) or not value:
            return f"{key} must be a non-empty list"
        if not all(isinstance(v, str) for v in value):
            return f"{key} must be a list of strings"
    enum = node.get("enum")
    if isinstance(enum, list) and value not in enum:
        return f"{key} must be one of {', '.join(str(e) for e in enum)}, got {value!r}"
    low, high = node.get("minimum"), node.get("maximum")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(low, (int, float)) and value < low:
            return f"{key} must be at least {low}, got {value!r}"
        if isinstance(high, (int, float)) and value > high:
            return f"{key} must be at most {high}, got {value!r}"
    max_len = node.get("maxLength")
    if isinstance(value, str) and isinstance(max_len, int) and len(value) > max_len:
        return f"{key} has {len(value)} characters; at most {max_len}"
    return None


def body_problems(schema: ModelSchema, body: Mapping[str, Any]) -> list[str]:
    """Why a generate body (with or without `model`) breaks the schema; empty: it fits."""
    problems = [
        f"{k!r} is not an input of {schema.name}"
        for k in sorted(body)
        if k not in schema.properties and k not in TRANSPORT_FIELDS
    ]
    problems += [
        f"{k} is required by {schema.name}"
        for k in sorted(schema.required)
        if body.get(k) in (None, "", [])
    ]
    for key, value in body.items():
        node = schema.properties.get(key)
        if node is not None and value is not None:
            problem = _type_problem(key, node, value)
            if problem:
                problems.append(problem)
    return problems


def convert(schema: ModelSchema, key: str, text: str) -> Any:
    """A manifest cell as the schema's type for `key` (InputError when it cannot be)."""
    node = schema.properties[key]
    kind = node.get("type")
    value: Any = text.strip()
    try:
        if kind == "boolean":
            low = value.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            value = low in ("true", "1", "yes")
        elif kind == "integer":
            value = int(float(value)) if float(value).is_integer() else int(value)
        elif kind == "number":
            value = float(value)
        elif kind == "array":
            value = [v.strip() for v in value.split("|") if v.strip()]
    except ValueError:
        raise InputError(f"{key} must be {kind}, got {text!r}") from None
    problem = _type_problem(key, node, value)
    if problem:
        raise InputError(problem)
    return value


def build_body(
    schema: ModelSchema,
    *,
    image: str | None,
    prompt: str | None,
    duration: int | None,
    end_image: str | None = None,
    extras: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The generate body (without `model`) for one row; InputError names what does not fit."""
    body: dict[str, Any] = {}
    if image:
        if schema.first_frame is None:
            raise InputError(f"{schema.name} takes no picture")
        is_list = schema.properties[schema.first_frame].get("type") == "array"
        body[schema.first_frame] = [image] if is_list else image
    if end_image:
        if schema.end_frame is None:
            raise InputError(f"{schema.name} takes no end frame")
        body[schema.end_frame] = end_image
    if prompt:
        if "prompt" not in schema.properties:
            raise InputError(f"{schema.name} takes no prompt")
        body["prompt"] = prompt
    if "duration" in schema.properties:
        body["duration"] = schema.default_duration() if duration is None else duration
    elif duration is not None:
        raise InputError(f"{schema.name} takes no duration")
    body.update(extras or {})
    body = {k: v for k, v in body.items() if v is not None}
    problems = body_problems(schema, body)
    if problems:
        raise InputError("; ".join(problems))
    return body
