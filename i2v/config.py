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
from pydantic.json_schema import SkipJsonSchema

from i2v.errors import ConfigError
from i2v.models import DEFAULT_MODEL, MODELS, get_model

# The image-to-video models (a run turns pictures into videos; i2v.models also knows the
# text-to-video ones). Spelled out (not built from MODELS) so type checkers and the
# Prefect form see an enum.
ModelName = Literal[
    "minimax/hailuo-2.3/i2v-standard",
    "minimax/hailuo-2.3/i2v-pro",
    "minimax/hailuo-2.3/fast",
]
IMAGE_MODELS = {name for name, spec in MODELS.items() if spec.needs_image}
assert set(get_args(ModelName)) == IMAGE_MODELS, "ModelName must list the image-to-video MODELS"
assert get_args(ModelName)[0] == DEFAULT_MODEL

# $0.28 per run is the model page's price; the 10 s price is not published and peers
# charge twice the 6 s price for it, so a budget never undercounts a 10 s clip.
DEFAULT_PRICES_USD: dict[str, float] = {
    **{name: 0.28 for name in sorted(IMAGE_MODELS)},
    **{
        f"{name}:10": 0.56
        for name, spec in sorted(MODELS.items())
        if name in IMAGE_MODELS and spec.durations and 10 in spec.durations
    },
}
# Simulator-only options: left out of the deployments' forms (the JSON schema) and of
# dumps (so a form's defaults and a fan-out's shard parameters pass the schema): the
# deployments run against the real API. A YAML config or the CLI still sets them.
_FORMLESS = "not in deployment forms"


class ApiSettings(BaseModel):
    """Where the Atlas Cloud API is and how to authenticate."""

    model_config = ConfigDict(extra="forbid")

    simulator: SkipJsonSchema[bool] = Field(
        False,
        exclude=True,
        description="Start the Atlas-compatible simulator in-process: no key, no network, no "
        f"cost ({_FORMLESS}).",
    )
    simulator_latency_s: SkipJsonSchema[float] = Field(
        2.0,
        ge=0,
        exclude=True,
        description=f"Simulator processing time in seconds ({_FORMLESS}).",
    )
    base_url: str | None = Field(
        None,
        title="API base URL",
        description="Where the key is sent. Default: ATLASCLOUD_BASE_URL, else "
        "https://api.atlascloud.ai. A deployment run may name only the worker's own API or "
        "an origin in the worker's I2V_ALLOWED_BASE_URLS.",
    )
    generate_timeout_s: float = Field(
        60.0,
        gt=0,
        title="Generate answer timeout (s)",
        description="How long to wait for a generate POST's answer before calling it ambiguous.",
    )
    api_key_secret_block: str | None = Field(
        None,
        title="API key Secret block",
        description="Name of a Prefect Secret block holding the key; else ATLASCLOUD_API_KEY.",
    )
    user_agent: str | None = Field(
        None,
        title="User-Agent",
        description=(
            "User-Agent header sent to the API; default ATLASCLOUD_USER_AGENT or "
            "i2v-pipeline/VERSION. Change it if Cloudflare blocks requests (error 1010)."
        ),
        min_length=1,
        max_length=512,
        pattern=r"^[^\r\n\x00]+$",
    )


class BatchOptions(BaseModel):
    """Everything that shapes one batch run, except where it reads from and writes to."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    model: ModelName = Field(
        "minimax/hailuo-2.3/i2v-standard",
        title="Model",
        description="Atlas Cloud image-to-video model to run.",
    )
    models: list[str] = Field(
        [],
        title="Bake-off models",
        description="Run every row through each of these models (row ids become ID--MODEL, "
        "one table, a comparison sheet); empty: one model per row.",
    )
    catalog_model: str = Field(
        "",
        title="Model from the catalog",
        description="Any Atlas image-to-video model (see `i2v models`) for rows whose "
        "`model` cell is empty, built from its published schema; empty: Model.",
    )
    duration: Literal[6, 10] = Field(
        6, title="Duration (s)", description="Video length, for rows that leave it empty."
    )
    prompt: str = Field(
        "",
        title="Default prompt",
        description="Prompt for rows that leave it empty.",
        max_length=2000,
    )
    enable_prompt_expansion: bool = Field(
        False, title="Prompt expansion", description="Let the provider rewrite prompts."
    )
    concurrency: int = Field(
        8, ge=1, le=1000, title="Concurrency", description="Predictions in flight at once."
    )
    poll_interval_s: float = Field(
        1.0,
        ge=0,
        title="Poll interval (s)",
        description="Minimum time between two polls of one prediction.",
    )
    expected_duration_s: float = Field(
        45.0,
        gt=0,
        title="Expected job time (s)",
        description="First guess of a prediction's time, refined as jobs finish.",
    )
    timeout_s: float = Field(
        900.0,
        gt=0,
        title="Timeout per prediction (s)",
        description="Later ones are timed_out (resumable: a rerun polls them, no new payment).",
    )
    budget_usd: float | None = Field(
        None,
        ge=0,
        title="Budget (USD)",
        description="Never submit work that would take this run past this spend; empty: no cap.",
    )
    approve_over_usd: float | None = Field(
        None,
        ge=0,
        title="Ask for approval over (USD)",
        description="A run whose new inputs would cost more waits for a person's OK before "
        "its first paid call (a flow run pauses; the CLI asks, or needs --yes); empty: never.",
    )
    approve_timeout_s: int = Field(
        3600, ge=1, title="Approval timeout (s)", description="Unanswered: the run pays nothing."
    )
    dry_run: bool = Field(
        False, title="Dry run", description="Check every row and estimate cost; call no API."
    )
    qc: bool = Field(
        True,
        title="Video quality check",
        description=(
            "Check every landed video (decodes, duration, size, frame rate, not frozen); "
            "a flagged video stays landed. `qc: off` skips it."
        ),
    )
    resubmit_ambiguous: bool = Field(
        False,
        title="Resubmit ambiguous",
        description="Resubmit inputs whose earlier submission answer was lost (may pay).",
    )
    # A plain default (copied per instance), not a factory: the form shows its values.
    prices_usd: dict[str, float] = Field(
        DEFAULT_PRICES_USD,
        title="Prices (USD per video)",
        description="Keys 'MODEL' or 'MODEL:DURATION'; a budget uses the higher of this "
        "and the catalog's price.",
    )
    s3_pictures: Literal["presign", "upload"] = Field(
        "presign",
        title="s3:// pictures",
        description="Send a presigned URL, or upload the bytes.",
    )
    allow_outside_base: bool = Field(
        False,
        title="Allow pictures outside the manifest's folder",
        description="Allow picture paths outside the manifest's folder; in a deployment run "
        "only where the worker sets I2V_ALLOW_OUTSIDE_BASE=1.",
    )
    global_concurrency_limit: str | None = Field(
        "atlascloud",
        title="Global concurrency limit",
        description="Prefect global concurrency limit shared by all runs and workers.",
    )
    aws_credentials_block: str | None = Field(
        None,
        title="AWS credentials block",
        description="prefect-aws AwsCredentials block; else the standard AWS chain.",
    )
    dest_wait_s: float = Field(
        600.0,
        ge=0,
        title="Wait for DEST (s)",
        description="How long a run waits for a DEST that stops answering before it stops: "
        "nothing new is paid meanwhile, and prediction ids in hand are kept and written "
        "when DEST answers.",
    )
    link_hours: float = Field(
        24.0,
        gt=0,
        le=168,
        title="Link lifetime (h)",
        description="How long the S3 links in the run's artifacts (videos, results, "
        "contact sheet) stay valid; 168 at most.",
    )
    api: ApiSettings = Field(ApiSettings(), title="API")

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
