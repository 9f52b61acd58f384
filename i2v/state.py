"""The durable record of each input, kept WITH the destination.

One small JSON object per input identity under `DEST/_state/`, so any machine pointed at
the same DEST resumes where another stopped. Prefect's own result storage is a cache,
never the source of truth: correctness depends only on these records.

Write-ahead: a record says `submitting` before the generate POST leaves, and the
prediction id is written as soon as the answer arrives. A record stuck at `submitting`
means the answer was lost and a paid job may exist: it becomes `ambiguous` and is not
resubmitted unless the user asks.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from i2v.errors import UnreadableRecord
from i2v.storage import Storage

STATE_PREFIX = "_state/"
IDENTITY_VERSION = "v1"
# error_code of a FAILED record that is still worth polling, and of one that is not.
NO_OUTPUT = "no_output"  # the provider said done but gave no video: paid, poll again
PURGED = "purged"  # the provider forgot a paid prediction: never resubmitted on our own
UNREADABLE_RECORD = "unreadable_record"  # the record does not parse: a person decides


def utcnow() -> str:
    """Now, as an ISO-8601 UTC timestamp with millisecond precision."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age_s(stamp: str | None, now: datetime | None = None) -> float:
    """Seconds since a `utcnow()` timestamp (0 for none or one in the future)."""
    if not stamp:
        return 0.0
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, ((now or datetime.now(UTC)) - then).total_seconds())


def input_identity(
    *,
    picture_sha256: str | None,
    prompt: str,
    duration: int | None,
    model: str,
    options: dict[str, Any],
) -> str:
    """What makes two inputs the same paid job: picture bytes, prompt, duration, model,
    model options. Row ids, order and file names are deliberately not part of it."""
    canonical = json.dumps(
        {
            "v": IDENTITY_VERSION,
            "picture": picture_sha256,
            "prompt": prompt,
            "duration": duration,
            "model": model,
            "options": options,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class Phase(StrEnum):
    """Where an input is in its life; persisted."""

    SUBMITTING = "submitting"  # write-ahead: the POST may be on the wire
    SUBMITTED = "submitted"  # the provider gave a prediction id: paid, resumable by polling
    SUCCEEDED = "succeeded"  # the video exists at the provider; not landed yet
    LANDED = "landed"  # the video is in DEST
    FAILED = "failed"  # the provider said failed: final for this input
    TIMED_OUT = "timed_out"  # our deadline passed; the id is kept and polled next run
    AMBIGUOUS = "ambiguous"  # the POST's answer was lost: a paid job may exist


class Action(StrEnum):
    """What a run does next for an input, given its record."""

    SUBMIT = "submit"
    POLL = "poll"  # resume a known prediction id
    LAND = "land"  # the provider finished; fetch the video
    FOLLOW = "follow"  # another live run is submitting it: wait for its prediction id
    DONE = "done"  # landed: nothing to pay or download
    FINAL = "final"  # failed at the provider: not retried
    HOLD_AMBIGUOUS = "hold_ambiguous"


class InputRecord(BaseModel):
    """The persisted state of one input identity."""

    identity: str
    model: str
    picture_sha256: str | None = None
    prompt: str = ""
    duration: int | None = None
    phase: Phase
    prediction_id: str | None = None
    attempts: int = 0
    submit_started_at: str | None = None
    submitted_at: str | None = None
    completed_at: str | None = None
    predict_time_s: float | None = None
    output_url: str | None = None
    error: str | None = None
    error_code: str | None = None
    video_key: str | None = None
    video_sha256: str | None = None
    video_bytes: int | None = None
    # The landed video's quality check (`i2v.qc`): its facts and "ok" or the reasons it
    # was flagged ("short:4.1s", "frozen", "undecodable"); None when not checked.
    video_duration_s: float | None = None
    video_width: int | None = None
    video_height: int | None = None
    video_fps: float | None = None
    qc: str | None = None
    cost_usd: float | None = None
    # The published schema's version the input was sent with (None: a hand-table model).
    schema_version: str | None = None
    # Who claimed the input for its submission: a run on this host whose process is gone
    # holds no live claim, whatever the clock says.
    owner_run: str | None = None
    owner_host: str | None = None
    owner_pid: int | None = None
    # Unique to each write (`i2v.claims`): a conditional write whose answer was lost
    # and that was refused when resent is ours if DEST holds this token.
    write_token: str | None = None
    updated_at: str = Field(default_factory=utcnow)
    history: list[dict[str, Any]] = Field(default_factory=list)

    def moved(self, phase: Phase, run_id: str | None = None, **changes: Any) -> InputRecord:
        """A copy in `phase` with `changes`, its history extended by one event."""
        now = utcnow()
        event: dict[str, Any] = {"at": now, "phase": str(phase)}
        if run_id:
            event["run"] = run_id
        # Bounded so a record stays a small object even after many reruns.
        history = [*self.history, event][-20:]
        return self.model_copy(
            update={"phase": phase, "updated_at": now, "history": history, **changes}
        )


def next_action(
    record: InputRecord | None,
    *,
    resubmit_ambiguous: bool = False,
    claim_ttl_s: float = 120.0,
    now: datetime | None = None,
) -> Action:
    """The one rule that keeps us from paying twice or losing a paid video.

    A `submitting` record younger than `claim_ttl_s` is another run's live claim: its
    POST may be on the wire, so it is followed, never resubmitted.
    """
    if record is None:
        return Action.SUBMIT
    phase = record.phase
    if phase is Phase.LANDED:
        return Action.DONE
    if phase is Phase.SUCCEEDED:
        return Action.LAND
    if phase in (Phase.SUBMITTED, Phase.TIMED_OUT) and record.prediction_id:
        return Action.POLL
    if phase is Phase.FAILED:
        # Done without a video is paid and may yet show one: poll, never pay again.
        if record.error_code == NO_OUTPUT and record.prediction_id:
            return Action.POLL
        return Action.FINAL
    if phase is Phase.SUBMITTING and claim_is_live(record, ttl_s=claim_ttl_s, now=now):
        return Action.FOLLOW
    # SUBMITTING past its claim, or AMBIGUOUS: a job may exist that we cannot see.
    return Action.SUBMIT if resubmit_ambiguous else Action.HOLD_AMBIGUOUS


HOST = socket.gethostname()


def claim_is_live(record: InputRecord, *, ttl_s: float, now: datetime | None = None) -> bool:
    """Whether a `submitting` record may still have its POST on the wire."""
    if not record.submit_started_at or age_s(record.submit_started_at, now) >= ttl_s:
        return False
    if record.owner_host == HOST and record.owner_pid:
        try:
            os.kill(record.owner_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


class StateStore:
    """Reads and writes input records under `_state/` of a destination.

    `create` and `replace` are the conditional forms (write-if-absent, compare-and-swap
    on the version from `get_versioned`): of runs racing on one identity, one wins.
    """

    def __init__(self, storage: Storage, prefix: str = STATE_PREFIX) -> None:
        self.storage = storage
        self.prefix = prefix

    def key(self, identity: str) -> str:
        return f"{self.prefix}{identity}.json"

    def get(self, identity: str) -> InputRecord | None:
        data = self.storage.read_bytes(self.key(identity))
        return None if data is None else self._parse(identity, data)

    def get_versioned(self, identity: str) -> tuple[InputRecord | None, str | None]:
        """The record and its version for `replace`; (None, None) when there is none."""
        data, version = self.storage.read_versioned(self.key(identity))
        return (None if data is None else self._parse(identity, data)), version

    def put(self, record: InputRecord) -> None:
        self.storage.write_bytes(self.key(record.identity), _dump(record), content_type=_JSON)

    def create(self, record: InputRecord) -> str | None:
        """Write `record` only if its identity has no record yet: its version, or None
        when one exists."""
        return self.storage.write_if_absent(
            self.key(record.identity), _dump(record), content_type=_JSON
        )

    def replace(self, record: InputRecord, version: str | None) -> str | None:
        """Write `record` only if the stored one is still at `version` (None: absent);
        its new version, or None when another writer got there first."""
        return self.storage.replace_if(
            self.key(record.identity), _dump(record), version, content_type=_JSON
        )

    def delete(self, identity: str) -> None:
        self.storage.delete(self.key(identity))

    def _parse(self, identity: str, data: bytes) -> InputRecord:
        try:
            return InputRecord.model_validate_json(data)
        except ValidationError as exc:
            # A corrupt record must stop us from guessing: guessing could pay twice.
            uri = self.storage.key_uri(self.key(identity))
            raise UnreadableRecord(
                f"its state record {uri} does not parse ({exc.error_count()} problems: cut "
                "short or edited?); a paid job may exist, so it is not submitted again. "
                "Repair the file from a copy, or delete it to pay again for this input",
                uri=uri,
            ) from None


_JSON = "application/json"


def _dump(record: InputRecord) -> bytes:
    return record.model_dump_json(indent=1).encode()
