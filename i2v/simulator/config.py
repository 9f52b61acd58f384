"""The simulator's knobs: one mutable dataclass, read on every request.

Tests flip knobs on a running simulator (`handle.config.rate_429 = 1.0`); a simulator
in another process takes the same names as JSON (`POST /_sim/config`) or CLI flags.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from i2v.models import MODELS
from i2v.simulator.zoo import ZOO


@dataclass
class SimulatorConfig:
    """Behaviour of the simulated Atlas Cloud API; every field may change at runtime."""

    latency_s: float = 2.0  # processing time of a job
    latency_jitter_s: float = 0.0  # uniform +- jitter on latency_s
    rate_429: float = 0.0  # probability any /api request answers 429 (no job created)
    rate_5xx: float = 0.0  # probability a prediction poll / output download answers 500/503
    moderation_trigger: str = "nsfw"  # prompt containing it -> failed, error_code 1039
    stuck_trigger: str = "never finishes"  # prompt containing it -> processing forever
    # Broken videos, for the quality check: a prompt containing the trigger completes
    # normally, but its video is short (lasts short_output_s), frozen (every frame the
    # same picture), or corrupt (an mp4 `ftyp` box, then bytes no decoder reads).
    short_trigger: str = "short clip"
    short_output_s: float = 4.1
    frozen_trigger: str = "frozen clip"
    corrupt_trigger: str = "corrupt file"
    balance_jobs: int | None = None  # after this many accepted jobs, generate refuses
    balance_status: int = 402  # ... with this status ("insufficient balance" either way)
    # The account's money (`i2v.simulator.billing`): None is unlimited; otherwise generate
    # answers 402 once what is left after charges and open reservations can't pay a video.
    balance_usd: float | None = None
    prices_usd: dict[str, float] = field(default_factory=dict)  # 'MODEL[:DURATION]' -> USD
    account_api_status: int | None = None  # /public/v1/* answer this (403, 404, 500)
    generate_delay_s: float = 0.0  # the job is created, THEN the answer waits this long
    not_visible_s: float = 0.0  # prediction GET answers 404 this long after creation
    max_concurrent: int | None = None  # generate answers 429 while this many jobs process
    api_key: str | None = None  # only this bearer key is accepted; None: any non-empty key
    known_models: tuple[str, ...] = field(default_factory=lambda: (*MODELS, *ZOO))
    width: int = 320  # rendered video width; height keeps the picture's aspect (even)
    fps: int = 24
    pad_output_to_bytes: int = 0  # >0: pad each mp4 with a trailing 'free' box to this size
    download_failures: int = 0  # the next N output downloads are cut off mid-stream
    outputs_expired: bool = False  # output URLs answer 403 "Request has expired"
    top_level_id: bool = False  # generate answers with a top-level "id", no "data"
    outputs_as_string: bool = False  # "outputs": "url" instead of ["url"]
    # The provider's untidy answers:
    html_poll_answers: int = 0  # the first N polls of each job answer 200 with an HTML page
    completed_without_output_rate: float = 0.0  # probability a job completes with no output
    blocked_user_agents: tuple[str, ...] = ()  # UA containing one -> Cloudflare 403 (1010)
    retention_s: float | None = None  # jobs older than this are purged: their GET is 404
    # Status names reported instead of the simulator's own (processing, completed,
    # failed), e.g. {"processing": "pending", "completed": "succeeded"}.
    status_aliases: dict[str, str] = field(default_factory=dict)
    # The models listing's price per model (USD per run); absent models list no price.
    catalog_prices: dict[str, float] = field(default_factory=dict)
    # The published input schema disagrees with what the pipeline sends (the listing's
    # `schema` URL): any of "renamed_field", "new_required_field", "other_durations".
    schema_drift: tuple[str, ...] = ()
    seed: int | None = None  # RNG seed for the probabilities

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply knob changes given as JSON-like values (lists become tuples).

        All names and types are checked before anything changes, so a bad request
        leaves the configuration as it was.
        """
        coerced = {name: coerce_knob(name, value) for name, value in changes.items()}
        for name, value in coerced.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        """The knobs as JSON-ready values."""
        out = dataclasses.asdict(self)
        out["known_models"] = list(self.known_models)
        out["blocked_user_agents"] = list(self.blocked_user_agents)
        return out


def knob_names() -> tuple[str, ...]:
    """Names of all knobs, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(SimulatorConfig))


def _knob_type(name: str) -> Any:
    hints = typing.get_type_hints(SimulatorConfig)
    if name not in hints:
        raise ValueError(f"unknown simulator knob {name!r}; known: {', '.join(knob_names())}")
    return hints[name]


def coerce_knob(name: str, value: Any) -> Any:
    """`value` converted to the type of knob `name`, or ValueError."""
    hint = _knob_type(name)
    nullable = False
    if isinstance(hint, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(hint))
        hint = members[0]
    if value is None:
        if nullable:
            return None
        raise ValueError(f"knob {name!r} cannot be null")
    if typing.get_origin(hint) is dict:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError(f"knob {name!r} takes an object of strings")
        return dict(value)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"knob {name!r} takes a list of strings")
        return tuple(value)
    # bool is checked first: it is an int subclass, and an int must not pass as a bool.
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"knob {name!r} takes true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"knob {name!r} takes an integer")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"knob {name!r} takes a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"knob {name!r} takes a string")
    raise ValueError(f"knob {name!r} has an unsupported type {hint!r}")  # pragma: no cover


def parse_knob(name: str, text: str) -> Any:
    """A knob value from command-line text: JSON when it parses, else the raw string."""
    hint = _knob_type(name)
    if text.lower() in ("none", "null"):
        return coerce_knob(name, None)
    if hint is str or (isinstance(hint, types.UnionType) and str in typing.get_args(hint)):
        return coerce_knob(name, text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return coerce_knob(name, value)
