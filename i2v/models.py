"""Per-model capabilities: which inputs each Atlas Cloud model takes.

One table, so the client, the checks and the simulator agree on what a model accepts.
Prices are configuration (see `i2v.config`), not constants here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from i2v.errors import ConfigError, InputError

DEFAULT_MODEL = "minimax/hailuo-2.3/i2v-standard"


@dataclass(frozen=True)
class ModelSpec:
    """What one model takes."""

    name: str
    needs_image: bool
    durations: tuple[int, ...] | None  # None: the model takes no duration input
    default_duration: int | None
    options: frozenset[str]  # extra boolean/str options the model accepts
    max_prompt_chars: int = 2000


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "minimax/hailuo-2.3/i2v-standard",
            needs_image=True,
            durations=(6, 10),
            default_duration=6,
            options=frozenset({"enable_prompt_expansion"}),
        ),
        ModelSpec(
            "minimax/hailuo-2.3/i2v-pro",
            needs_image=True,
            durations=None,
            default_duration=None,
            options=frozenset({"enable_prompt_expansion"}),
        ),
        ModelSpec(
            "minimax/hailuo-2.3/fast",
            needs_image=True,
            durations=(6, 10),
            default_duration=6,
            options=frozenset({"enable_prompt_expansion", "go_fast"}),
        ),
        ModelSpec(
            "minimax/hailuo-2.3/t2v-standard",
            needs_image=False,
            durations=(6, 10),
            default_duration=6,
            options=frozenset({"enable_prompt_expansion"}),
        ),
        ModelSpec(
            "minimax/hailuo-2.3/t2v-pro",
            needs_image=False,
            durations=None,
            default_duration=None,
            options=frozenset({"enable_prompt_expansion"}),
        ),
    )
}


def get_model(name: str) -> ModelSpec:
    """The spec of a known model, or a ConfigError naming the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ConfigError(f"unknown model {name!r}; known models: {known}") from None


def build_inputs(
    spec: ModelSpec,
    *,
    image: str | None,
    prompt: str | None,
    duration: int | None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The flat generateVideo body (without `model`) for one input.

    Only inputs the model takes are sent: width/height/fps/seed are not inputs of these
    models even though generic sample code shows them.
    """
    body: dict[str, Any] = {}
    if spec.needs_image:
        if not image:
            raise InputError(f"{spec.name} needs an image")
        body["image"] = image
    if prompt:
        if len(prompt) > spec.max_prompt_chars:
            raise InputError(
                f"prompt has {len(prompt)} characters; {spec.name} takes at most "
                f"{spec.max_prompt_chars}"
            )
        body["prompt"] = prompt
    if spec.durations is not None:
        d = spec.default_duration if duration is None else duration
        if d not in spec.durations:
            allowed = " or ".join(str(x) for x in spec.durations)
            raise InputError(f"duration {duration!r} is not allowed; use {allowed} seconds")
        body["duration"] = d
    for key, value in (options or {}).items():
        if key not in spec.options:
            raise ConfigError(f"{spec.name} does not take the option {key!r}")
        body[key] = value
    return body
