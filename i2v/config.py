"""Run options: one pydantic model, filled from a YAML file and then from overrides.

The same model is the batch flow's parameter, so the Prefect UI renders it as a form.
Secrets are never options: the key comes from a Prefect Secret block (named here) or
from `ATLASCLOUD_API_KEY`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from i2v.errors import ConfigError
from i2v.models import DEFAULT_MODEL, MODELS, get_model

# Spelled out (not built from MODELS) so type checkers and the Prefect form see an enum.
ModelName = Literal[
    "minimax/hailuo-2.3/i2v-standard",
    "minimax/hailuo-2.3/i2v-pro",
    "minimax/hailuo-2.3/fast",
    "minimax/hailuo-2.3/t2v-standard",
    "minimax/hailuo-2.3/t2v-pro",
]
assert set(get_args(ModelName)) == set(MODELS), "ModelName must list exactly i2v.models.MODELS"
assert get_args(ModelName)[0] == DEFAULT_MODEL

# $0.28 per run is the model page's price; the 10 s price is not published and peers
# charge twice the 6 s price for it, so a budget never undercounts a 10 s clip.
DEFAULT_PRICES_USD: dict[str, float] = {
    **{name: 0.28 for name in MODELS},
    **{
        f"{name}:10": 0.56
        for name, spec in MODELS.items()
        if spec.durations and 10 in spec.durations
    },
}


class ApiSettings(BaseModel):
    """Where the Atlas Cloud API is and how to authenticate."""

    model_config = ConfigDict(extra="forbid")

    simulator: bool = Field(
        False,
        description="Start the Atlas-compatible simulator in-process: no key, no network, no cost.",
    )
    simulator_latency_s: float = Field(2.0, ge=0, description="Simulator processing time.")
    base_url: str | None = Field(
        None, description="API base URL; default ATLASCLOUD_BASE_URL or https://api.atlascloud.ai."
    )
    generate_timeout_s: float = Field(
        60.0,
        gt=0,
        description="How long to wait for a generate POST's answer before calling it ambiguous.",
    )
    api_key_secret_block: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding the key; else ATLASCLOUD_API_KEY.",
    )
    user_agent: str | None = Field(
        None,
        title="User-Agent",
        description=(
            "User-Agent header sent to the API; default ATLASCLOUD_USER_AGENT or "
            "i2v-pipeline/<version>. Change it if Cloudflare blocks requests (error 1010)."
        ),
        min_length=1,
        max_length=512,
        pattern=r"^[^\r\n\x00]+$",
    )


class BatchOptions(BaseModel):
    """Everything that shapes one batch run, except where it reads from and writes to."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    model: ModelName = Field(
        "minimax/hailuo-2.3/i2v-standard", description="Atlas Cloud model to run."
    )
    duration: Literal[6, 10] = Field(6, description="Seconds, for rows that leave it empty.")
    prompt: str = Field("", description="Prompt for rows that leave it empty.", max_length=2000)
    enable_prompt_expansion: bool = Field(False, description="Let the provider rewrite prompts.")
    concurrency: int = Field(8, ge=1, le=1000, description="Predictions in flight at once.")
    poll_interval_s: float = Field(
        1.0, ge=0, description="Minimum seconds between two polls of one prediction."
    )
    expected_duration_s: float = Field(
        45.0, gt=0, description="First guess of a prediction's time, refined as jobs finish."
    )
    timeout_s: float = Field(
        900.0, gt=0, description="Per-prediction deadline; later ones are timed_out (resumable)."
    )
    budget_usd: float | None = Field(
        None, ge=0, description="Never submit work that would take this run past this spend."
    )
    dry_run: bool = Field(False, description="Check every row and estimate cost; call no API.")
    resubmit_ambiguous: bool = Field(
        False, description="Resubmit inputs whose earlier submission answer was lost (may pay)."
    )
    prices_usd: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES_USD),
        description="Price per video: keys 'model' or 'model:duration'.",
    )
    s3_pictures: Literal["presign", "upload"] = Field(
        "presign", description="s3:// pictures: send a presigned URL, or upload the bytes."
    )
    allow_outside_base: bool = Field(
        False, description="Allow local picture paths outside the manifest's folder."
    )
    global_concurrency_limit: str | None = Field(
        "atlascloud",
        description="Prefect global concurrency limit shared by all runs and workers.",
    )
    aws_credentials_block: str | None = Field(
        None, description="prefect-aws AwsCredentials block; else the standard AWS chain."
    )
    api: ApiSettings = Field(default_factory=ApiSettings)

    def price(self, duration: int | None, *, catalog_usd: float | None = None) -> float:
        """Price of one video of this run's model at `duration`, for the budget.

        Never less than the provider's catalog: it lists one price per model, for its
        default duration, and other durations keep the configured ratio to it (a 10 s
        clip at twice the 6 s price).
        """
        configured = self._configured_price(duration)
        if not catalog_usd:
            return configured
        base = self._configured_price(get_model(str(self.model)).default_duration)
        return max(configured, catalog_usd * (configured / base if base else 1.0))

    def _configured_price(self, duration: int | None) -> float:
        model = str(self.model)
        for key in (f"{model}:{duration}", model):
            if key in self.prices_usd:
                return float(self.prices_usd[key])
        raise ConfigError(f"no price configured for {model}; add it under prices_usd")


def load_options(path: str | Path | None = None, **overrides: Any) -> BatchOptions:
    """Options from a YAML file (if any), then `overrides` that are not None."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of option names")
        data.update(loaded)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "api" and isinstance(value, dict):
            data["api"] = {**data.get("api", {}), **value}
        else:
            data[key] = value
    try:
        return BatchOptions.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid options{where}: {problems}") from None
