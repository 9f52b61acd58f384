"""Plain data shared by the client, the simulator and the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class PredictionStatus(StrEnum):
    """A prediction's state, normalised from the many spellings the API uses."""

    RUNNING = "running"  # processing / starting / created / queued / anything unknown
    SUCCEEDED = "succeeded"  # completed / succeeded
    FAILED = "failed"  # failed / canceled / cancelled / error
    TIMED_OUT = "timed_out"  # the provider's own terminal "timed out"
    NOT_VISIBLE = "not_visible"  # 400/404 in the first seconds after creation


@dataclass(frozen=True)
class UploadedMedia:
    """Answer of uploadMedia: a temporary URL the model can read."""

    download_url: str
    file_name: str | None = None
    content_type: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Prediction:
    """One prediction as last seen."""

    id: str
    status: PredictionStatus
    raw_status: str | None = None
    outputs: tuple[str, ...] = ()
    error: str | None = None
    error_code: str | None = None
    predict_time_s: float | None = None
    created_at: str | None = None
    completed_at: str | None = None
    request_id: str | None = None
    raw: dict[str, object] = field(default_factory=dict, repr=False, compare=False)

    @property
    def output_url(self) -> str | None:
        return self.outputs[0] if self.outputs else None
