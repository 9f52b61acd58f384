"""What the simulated API accepts: request bodies, pictures and model inputs.

Each check raises `ApiError` with the status and message the real API would answer.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import io
import mimetypes
import re
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageDraw
from starlette.requests import Request

from i2v.models import DEFAULT_MODEL, MODELS, ModelSpec

MAX_BODY_BYTES = 50 * 1024 * 1024  # the real API answers 413 above 50 MB
_MAX_DRAIN_BYTES = 256 * 1024 * 1024
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MIN_SHORT_SIDE = 300  # the short side must be OVER this
# The published schema: the aspect ratio lies strictly between 2:5 and 5:2.
MAX_ASPECT = (5, 2)
FALLBACK_DURATION_S = 6  # for models without a duration input (i2v-pro, t2v-pro)


class ApiError(Exception):
    """An error answer: `{"code": status, "msg": msg}` with that HTTP status."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body; 413 past `limit`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit + _MAX_DRAIN_BYTES:
            break
    # An oversized body is read to its end (up to a cap) before answering 413: a
    # client still writing would otherwise see a reset instead of the answer.
    if size > limit:
        raise ApiError(413, "request body is larger than 50 MB; send the image as a URL")
    return b"".join(chunks)


def model_spec(model: Any, known: tuple[str, ...]) -> ModelSpec:
    """The spec of a `model` input; 400 when missing, 404 when not in `known`."""
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required")
    if model not in known:
        raise ApiError(404, f"model {model!r} not found")
    # A model added through the knob but absent from the table acts like the default.
    return MODELS.get(model) or dataclasses.replace(MODELS[DEFAULT_MODEL], name=model)


def picture_problem(data: bytes) -> str | None:
    """Why a picture is refused by the model's image rules, or None when it is fine."""
    if len(data) > MAX_IMAGE_BYTES:
        return f"image is {len(data)} bytes; the limit is 20 MB"
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if fmt not in ("JPEG", "PNG"):
                return f"image must be JPG or PNG, got {fmt or 'unknown format'}"
            im.load()  # a full decode: truncated files fail here, not in the model
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"image could not be decoded as JPG or PNG: {exc}"
    if min(w, h) <= MIN_SHORT_SIDE:
        return f"image is {w}x{h}; its short side must be over {MIN_SHORT_SIDE} px"
    long_parts, short_parts = MAX_ASPECT
    if max(w, h) * short_parts >= min(w, h) * long_parts:  # in integers: 5:2 exactly is out
        return f"image is {w}x{h}; its aspect ratio must be strictly between 2:5 and 5:2"
    return None


def synthesize_picture(prompt: str) -> bytes:
    """A 640x360 PNG derived from the prompt, for text-to-video models."""
    digest = hashlib.sha256(prompt.encode()).digest()
    w, h = 640, 360
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    hue = digest[0] / 255
    for y in range(h):
        r, g, b = colorsys.hsv_to_rgb((hue + 0.3 * y / h) % 1.0, 0.6, 0.35 + 0.5 * y / h)
        draw.line([(0, y), (w, y)], fill=(int(r * 255), int(g * 255), int(b * 255)))
    # Shapes give the camera something to move over.
    for i in range(8):
        x, y, r = (
            digest[3 * i + 1] * w // 256,
            digest[3 * i + 2] * h // 256,
            15 + digest[3 * i + 3] // 4,
        )
        fill = tuple(int(c * 255) for c in colorsys.hsv_to_rgb(digest[i + 20] / 255, 0.8, 0.9))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def parse_multipart_file(
    body: bytes, content_type: str, field: str = "file"
) -> tuple[str, str, bytes]:
    """(file name, content type, bytes) of one multipart/form-data field.

    Small on purpose: python-multipart is not a dependency of this project.
    """
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/form-data") or not m:
        raise ApiError(400, f"send the file as multipart/form-data in the field {field!r}")
    delimiter = b"--" + m.group(1).encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name_m = re.search(r'(?:^|;)\s*name="([^"]*)"', disposition)
        if not name_m or name_m.group(1) != field:
            continue
        file_m = re.search(r'filename="([^"]*)"', disposition)
        file_name = (file_m.group(1) if file_m else "") or "upload"
        part_type = headers.get("content-type") or (
            mimetypes.guess_type(file_name)[0] or "application/octet-stream"
        )
        return file_name, part_type, data.removesuffix(b"\r\n")
    raise ApiError(400, f"multipart field {field!r} is missing")


def check_inputs(spec: ModelSpec, payload: Mapping[str, Any]) -> tuple[str, int]:
    """(prompt, duration in seconds) after checking every input against the model."""
    allowed = {"model", "prompt", "webhook_url", *spec.options}
    if spec.needs_image:
        allowed.add("image")
    if spec.durations is not None:
        allowed.add("duration")
    extra = sorted(set(payload) - allowed)
    if extra:
        names = ", ".join(repr(k) for k in extra)
        raise ApiError(400, f"{names} not an input of this model ({spec.name})")
    prompt = payload.get("prompt")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    if len(prompt) > spec.max_prompt_chars:
        raise ApiError(400, f"prompt is {len(prompt)} characters; at most {spec.max_prompt_chars}")
    if not spec.needs_image and not prompt.strip():
        raise ApiError(400, "prompt is required")
    duration = FALLBACK_DURATION_S
    if spec.durations is not None:
        raw = payload.get("duration", spec.default_duration)
        if isinstance(raw, bool) or not isinstance(raw, int) or raw not in spec.durations:
            allowed_d = " or ".join(str(d) for d in spec.durations)
            raise ApiError(400, f"duration must be {allowed_d} (seconds), got {raw!r}")
        duration = raw
    for option in spec.options:
        if option in payload and not isinstance(payload[option], bool):
            raise ApiError(400, f"{option} must be true or false")
    webhook = payload.get("webhook_url")
    if webhook is not None and not isinstance(webhook, str):
        raise ApiError(400, "webhook_url must be a string")
    if spec.needs_image:
        image = payload.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ApiError(400, "image is required: an https URL or a data: URI")
    return prompt, duration
