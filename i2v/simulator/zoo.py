"""Other hosts' models the simulator lists, with the field names and duration shapes of
their real published schemas (ATLAS_API.md: Kling 3.0 std takes `image_url` and
`end_image_url`, Veo 4/6/8 s with audio and a resolution, Seedance a 2-12 s range with a
seed and cfg_scale, reference models an `images` list, Wan 2.6 5/10/15 s with a
`last_image`), plus a text-to-image model that generateVideo refuses.

The generate endpoint checks a body for these models against exactly this schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from i2v.model_schema import body_problems, read_schema

# The listed names, for tests and examples that pick one.
KLING = "kwaivgi/kling-v3.0-std/image-to-video"
VEO = "google/veo3.1-fast/image-to-video"
SEEDANCE = "bytedance/seedance-v1-pro-fast/image-to-video"
WAN = "alibaba/wan-2.6/image-to-video"
VIDU = "vidu/q3/reference-to-video"
T2I = "google/nano-banana/text-to-image"

_IMAGE = {"type": "string", "description": "An https URL or a data: URI (JPG/PNG)."}
_PROMPT = {"type": "string", "maxLength": 2000}
_NEG = {"type": "string", "maxLength": 1000}


@dataclass(frozen=True)
class ZooModel:
    """One listed model: its category, listing type, price and Input schema."""

    name: str
    category: str
    type: str
    price_usd: float
    properties: dict[str, dict[str, Any]]
    required: tuple[str, ...]


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            KLING,
            "IMAGE-TO-VIDEO",
            "Video",
            0.42,
            {
                "image_url": _IMAGE,
                "end_image_url": _IMAGE,
                "prompt": _PROMPT,
                "negative_prompt": _NEG,
                "duration": {"type": "integer", "enum": [5, 10], "default": 5},
                "cfg_scale": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
            },
            ("image_url",),
        ),
        ZooModel(
            VEO,
            "IMAGE-TO-VIDEO",
            "Video",
            0.80,
            {
                "image": _IMAGE,
                "prompt": _PROMPT,
                "duration": {"type": "integer", "enum": [4, 6, 8], "default": 8},
                "generate_audio": {"type": "boolean", "default": True},
                "resolution": {"type": "string", "enum": ["720p", "1080p"], "default": "720p"},
                "negative_prompt": _NEG,
            },
            ("image", "prompt"),
        ),
        ZooModel(
            SEEDANCE,
            "IMAGE-TO-VIDEO",
            "Video",
            0.12,
            {
                "image": _IMAGE,
                "prompt": _PROMPT,
                "duration": {"type": "integer", "minimum": 2, "maximum": 12, "default": 5},
                "seed": {"type": "integer", "minimum": -1, "maximum": 2147483647, "default": -1},
                "cfg_scale": {"type": "number", "minimum": 1, "maximum": 10, "default": 5},
            },
            ("image",),
        ),
        ZooModel(
            WAN,
            "IMAGE-TO-VIDEO",
            "Video",
            0.35,
            {
                "image": _IMAGE,
                "last_image": _IMAGE,
                "prompt": _PROMPT,
                "negative_prompt": _NEG,
                "duration": {"type": "integer", "enum": [5, 10, 15], "default": 5},
                "seed": {"type": "integer", "minimum": -1, "maximum": 2147483647},
            },
            ("image",),
        ),
        ZooModel(
            VIDU,
            "IMAGE-TO-VIDEO",
            "Video",
            0.30,
            {
                "images": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                "prompt": _PROMPT,
                "duration": {"type": "integer", "enum": [4, 8], "default": 4},
            },
            ("images", "prompt"),
        ),
        ZooModel(
            T2I,
            "TEXT-TO-IMAGE",
            "Image",
            0.04,
            {"prompt": _PROMPT, "aspect_ratio": {"type": "string", "enum": ["1:1", "16:9"]}},
            ("prompt",),
        ),
    )
}


def zoo_input(model: ZooModel) -> dict[str, Any]:
    """The `components.schemas.Input` object of a zoo model."""
    return {
        "type": "object",
        "required": list(model.required),
        "properties": model.properties,
        "x-order-properties": list(model.properties),
    }


def check_zoo_body(model: ZooModel, payload: dict[str, Any]) -> tuple[str, int, list[str]]:
    """(prompt, duration, pictures: first frame then end frame) of a body that fits the
    model's schema; ValueError with the 400 message otherwise."""
    if model.category != "IMAGE-TO-VIDEO":
        raise ValueError(f"{model.name} is a {model.category.lower()} model, not a video model")
    schema = read_schema(model.name, zoo_input(model))
    problems = body_problems(schema, payload)
    if problems:
        raise ValueError("; ".join(problems))
    prompt = str(payload.get("prompt") or "")
    duration = payload.get("duration", schema.default_duration())
    pictures: list[str] = []
    for key in (schema.first_frame, schema.end_frame):
        value = payload.get(key) if key else None
        pictures += value if isinstance(value, list) else [value] if value else []
    return prompt, int(duration or 5), [p.strip() for p in pictures]
