"""The inbox ledger: which manifests were processed, kept with the results.

One small JSON object per manifest name under DEST_ROOT/_inbox/. It holds the
manifest's sha256, so re-uploading different content under the same name processes it
again, while re-uploading the same bytes does not. Runs ticking together claim with the
storage's conditional writes (create if absent, compare-and-swap), so only one
processes a manifest. A claim whose flow run is gone (Crashed, ended, deleted, or
silent past its heartbeats: the flow asks Prefect) is taken over at once; a live run's
claim is respected; one nobody can vouch for is presumed dead after the lease.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field

from i2v.manifest_formats import JSONL_SUFFIXES, PARQUET_SUFFIXES
from i2v.storage import Storage

MANIFEST_SUFFIXES = (".csv", *PARQUET_SUFFIXES, *JSONL_SUFFIXES)

LEDGER_PREFIX = "_inbox/"
DEFAULT_LEASE_HOURS = 6.0
_JSON = "application/json"


class LedgerEntry(BaseModel):
    """What the inbox knows about one manifest name."""

    name: str
    manifest: str
    sha256: str
    status: Literal["claimed", "done"]
    flow_run_id: str
    claimed_at: str
    dest: str
    finished_at: str | None = None
    run_id: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    spent_usd: float = 0.0
    results_uri: str | None = None
    # How often the claiming flow run sends heartbeats (None: it sends none, or an
    # older entry): what its silence is judged by.
    heartbeat_s: int | None = None
    # Earlier contents processed under this name, newest last (bounded).
    history: list[dict[str, Any]] = Field(default_factory=list)


class Decision(StrEnum):
    CLAIM = "claim"
    DONE = "done"  # this content was processed already
    CLAIMED = "claimed"  # another live run holds it


class Holder(StrEnum):
    """What the orchestrator says of the flow run holding a claim."""

    LIVE = "live"  # running, its heartbeats fresh
    GONE = "gone"  # ended (Crashed, Failed, Cancelled, Completed) or no such flow run
    UNKNOWN = "unknown"  # not asked, or no answer to judge by: the lease decides


def decide(
    entry: LedgerEntry | None,
    sha256: str,
    me: str,
    *,
    now: datetime,
    lease: timedelta,
    holder: Holder = Holder.UNKNOWN,
) -> Decision:
    """What a tick does with a manifest whose content hashes to `sha256`, given what
    the orchestrator said of the flow run holding its claim (`holder`)."""
    if entry is None or entry.sha256 != sha256:
        return Decision.CLAIM
    if entry.status == "done":
        return Decision.DONE
    if entry.flow_run_id == me:  # this very run, retried by Prefect
        return Decision.CLAIM
    if holder is Holder.GONE:  # its machine died, or it failed before releasing
        return Decision.CLAIM
    if holder is Holder.LIVE:  # still at it, however long that takes
        return Decision.CLAIMED
    claimed = datetime.fromisoformat(entry.claimed_at.replace("Z", "+00:00"))
    return Decision.CLAIM if now - claimed > lease else Decision.CLAIMED


def held_by_another(entry: LedgerEntry | None, sha256: str, me: str) -> bool:
    """Whether `decide` would need to know about the claim's flow run: a claim on this
    content by another run."""
    return (
        entry is not None
        and entry.sha256 == sha256
        and entry.status == "claimed"
        and entry.flow_run_id != me
    )


class Ledger:
    """One JSON object per manifest name, written with the storage's compare-and-swap.

    An S3-compatible store that ignores conditional PUTs degrades to last-writer-wins.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @staticmethod
    def key(name: str) -> str:
        return f"{LEDGER_PREFIX}{name}.json"

    def get(self, name: str) -> tuple[LedgerEntry | None, str | None]:
        """The entry and a token for `replace` (None when there is no entry)."""
        raw, token = self.storage.read_versioned(self.key(name))
        if raw is None:
            return None, None
        try:
            return LedgerEntry.model_validate(json.loads(raw)), token
        except ValueError:  # a damaged entry: treat as absent but keep the CAS token
            return None, token

    def create(self, name: str, entry: LedgerEntry) -> bool:
        """Write `entry` only if no entry exists; False when another run got there first."""
        created = self.storage.write_if_absent(self.key(name), _dump(entry), content_type=_JSON)
        return created is not None

    def replace(self, name: str, entry: LedgerEntry, token: str | None) -> bool:
        """Write `entry` only if the object is still the one read with `token`.

        A write whose answer was lost is resent by the storage and refused (the object
        moved on: to this very entry). Reading back tells: the same run and claim time
        mean it was ours, so a tick never skips the claim it just took.
        """
        written = self.storage.replace_if(self.key(name), _dump(entry), token, content_type=_JSON)
        if written is not None:
            return True
        current, _ = self.get(name)
        return current is not None and (
            current.flow_run_id,
            current.claimed_at,
            current.status,
        ) == (
            entry.flow_run_id,
            entry.claimed_at,
            entry.status,
        )

    def put(self, name: str, entry: LedgerEntry) -> None:
        self.storage.write_bytes(self.key(name), _dump(entry), content_type=_JSON)

    def release(self, name: str, me: str) -> None:
        """Remove this run's claim so the next tick retries the manifest."""
        entry, token = self.get(name)
        if entry is None or entry.flow_run_id != me or entry.status != "claimed":
            return
        if entry.history:  # keep what earlier contents produced
            last = entry.history[-1]
            restored = entry.model_copy(update={**last, "history": entry.history[:-1]})
            self.replace(name, restored, token)
        else:
            self.storage.delete(self.key(name))


def _dump(entry: LedgerEntry) -> bytes:
    return json.dumps(entry.model_dump(), indent=1).encode()


def carried_history(entry: LedgerEntry | None) -> list[dict[str, Any]]:
    """The history a new claim carries: what earlier contents of this name produced
    (a done entry is added to it, a claim's is kept as is)."""
    if entry is None:
        return []
    if entry.status != "done":
        return entry.history
    keep = entry.model_dump(exclude={"history"})
    return [*entry.history, keep][-10:]


def list_manifests(inbox: Storage) -> list[str]:
    """Names of the manifests (`*.csv`, `*.parquet`, `*.jsonl`, `*.ndjson`) directly
    under the inbox (subfolders hold pictures or results, never manifests to pick up)."""
    return [k for k in inbox.list("") if "/" not in k and k.lower().endswith(MANIFEST_SUFFIXES)]


def dest_for(dest_root: Storage, name: str) -> str:
    """DEST for a manifest: <dest_root>/<file name without its suffix>/."""
    stem = PurePosixPath(name).stem or name
    return dest_root.key_uri(f"{stem}/")
