"""A simulated prediction (job): its status follows from the clock, its prompt may ask
for a defect, and the JSON the API answers about it when it is made and when polled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from i2v.simulator.config import SimulatorConfig
from i2v.simulator.pages import iso

MODERATION_ERROR_CODE = 1039
Defect = Literal["short", "frozen", "corrupt"]


@dataclass(frozen=True)
class Job:
    """One prediction; its status follows from the clock."""

    id: str
    model: str
    prompt: str
    duration_s: int
    image_sha: str
    motion: str
    width: int
    fps: int
    created: float  # time.monotonic()
    created_wall: float  # time.time()
    latency_s: float
    outcome: Literal["completed", "failed", "stuck"]
    no_output: bool = False  # completes without listing an output URL
    # A broken video it serves (the defect triggers): too short, frozen, or corrupt.
    defect: Defect | None = None

    @property
    def ends_at(self) -> float:
        return float("inf") if self.outcome == "stuck" else self.created + self.latency_s

    def status(self, now: float) -> str:
        return "processing" if now < self.ends_at else self.outcome


def defect_of(cfg: SimulatorConfig, prompt: str) -> Defect | None:
    """The defect a prompt asks for through the trigger knobs (lower-cased prompt)."""
    triggers: tuple[tuple[Defect, str], ...] = (
        ("short", cfg.short_trigger),
        ("frozen", cfg.frozen_trigger),
        ("corrupt", cfg.corrupt_trigger),
    )
    for defect, trigger in triggers:
        if trigger and trigger.lower() in prompt:
            return defect
    return None


def accepted_data(job: Job, base: str, cfg: SimulatorConfig) -> dict[str, Any]:
    """What generateVideo answers about a job it just made."""
    return {
        "id": job.id,
        "model": job.model,
        "status": cfg.status_aliases.get("processing", "processing"),
        "outputs": None if cfg.outputs_as_string else [],
        "urls": {"get": f"{base}/api/v1/model/prediction/{job.id}"},
        "created_at": iso(job.created_wall),
    }


def prediction_data(job: Job, now: float, base: str, cfg: SimulatorConfig) -> dict[str, Any]:
    """What a poll of the job answers at `now` (time.monotonic())."""
    status = job.status(now)
    done = status != "processing"
    url = f"{base}/_sim/outputs/{job.id}.mp4"
    listed = status == "completed" and not job.no_output
    outputs: Any = [url] if listed else []
    if cfg.outputs_as_string:
        outputs = url if listed else None
    failed = status == "failed"
    return {
        "id": job.id,
        "model": job.model,
        "status": cfg.status_aliases.get(status, status),
        "outputs": outputs,
        "error": (
            "the input was rejected by content moderation (sensitive content)" if failed else None
        ),
        "error_code": MODERATION_ERROR_CODE if failed else None,
        "metrics": {"predict_time": round(job.latency_s if done else now - job.created, 3)},
        "created_at": iso(job.created_wall),
        "completed_at": iso(job.created_wall + job.latency_s) if done else None,
    }
