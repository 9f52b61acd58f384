"""The inbox flow: every manifest dropped into an inbox prefix is processed once.

Each tick (a cron schedule) lists the `*.csv` files directly under INBOX. A manifest
whose current content has no "done" entry in the ledger is claimed, run through the
batch flow (as a subflow) into DEST_ROOT/<manifest stem>/, and recorded as done, even if
some rows failed: their reasons are in that results table, and a rerun is a person's call.

The ledger is one small JSON object per manifest name under DEST_ROOT/_inbox/, kept with
the results it describes. It holds the manifest's sha256, so re-uploading different
content under the same name processes it again (into the same DEST, where inputs already
landed cost nothing), while re-uploading the same bytes does not.

A crashed or failed run is not recorded: its claim is released and the next tick retries.
Two runs ticking together (two workers, an overlapping schedule) claim with an atomic
create / compare-and-swap (S3 conditional writes; a file lock for a folder), so only one
processes a manifest; a claim older than the lease (default 6 h) is presumed dead and
taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, Literal

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from pydantic import BaseModel, Field

from flows.batch import i2v_batch
from flows.common import s3_client_for
from i2v.config import BatchOptions
from i2v.errors import ConfigError, I2VError
from i2v.state import utcnow
from i2v.storage import (
    S3_ERRORS,
    LocalStorage,
    S3Storage,
    Storage,
    open_storage,
    s3_error_code,
    split_s3_uri,
)

LEDGER_PREFIX = "_inbox/"
DEFAULT_LEASE_HOURS = 6.0
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


class InboxFailed(I2VError):
    """At least one manifest's run failed; it stays unrecorded and is retried next tick."""


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
    # Earlier contents processed under this name, newest last (bounded).
    history: list[dict[str, Any]] = Field(default_factory=list)


class Decision(StrEnum):
    CLAIM = "claim"
    DONE = "done"  # this content was processed already
    CLAIMED = "claimed"  # another live run holds it


def decide(
    entry: LedgerEntry | None,
    sha256: str,
    me: str,
    *,
    now: datetime,
    lease: timedelta,
) -> Decision:
    """What a tick does with a manifest whose content hashes to `sha256`."""
    if entry is None or entry.sha256 != sha256:
        return Decision.CLAIM
    if entry.status == "done":
        return Decision.DONE
    if entry.flow_run_id == me:  # this very run, retried by Prefect
        return Decision.CLAIM
    claimed = datetime.fromisoformat(entry.claimed_at.replace("Z", "+00:00"))
    return Decision.CLAIM if now - claimed > lease else Decision.CLAIMED


class Ledger:
    """One JSON object per manifest name, written with compare-and-swap.

    S3: `If-None-Match: *` to create and `If-Match: <etag>` to replace (AWS S3 and
    moto honour both; an S3-compatible store that ignores them degrades to
    last-writer-wins). Folder: an exclusive file lock around read-compare-write,
    which holds for every process on the machine.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    @staticmethod
    def key(name: str) -> str:
        return f"{LEDGER_PREFIX}{name}.json"

    def get(self, name: str) -> tuple[LedgerEntry | None, str | None]:
        """The entry and a token for `replace` (None when there is no entry)."""
        raw, token = self._read(self.key(name))
        if raw is None:
            return None, None
        try:
            return LedgerEntry.model_validate(json.loads(raw)), token
        except ValueError:  # a damaged entry: treat as absent but keep the CAS token
            return None, token

    def create(self, name: str, entry: LedgerEntry) -> bool:
        """Write `entry` only if no entry exists; False when another run got there first."""
        return self._write(self.key(name), _dump(entry), expect=None)

    def replace(self, name: str, entry: LedgerEntry, token: str | None) -> bool:
        """Write `entry` only if the object is still the one read with `token`."""
        if token is None:
            return self.create(name, entry)
        return self._write(self.key(name), _dump(entry), expect=token)

    def put(self, name: str, entry: LedgerEntry) -> None:
        self.storage.write_bytes(self.key(name), _dump(entry), content_type="application/json")

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

    # -- backends

    def _read(self, key: str) -> tuple[bytes | None, str | None]:
        storage = self.storage
        if isinstance(storage, S3Storage):
            bucket, full = split_s3_uri(storage.key_uri(key))
            try:
                resp = storage.client.get_object(Bucket=bucket, Key=full)
            except S3_ERRORS as exc:
                if s3_error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return None, None
                raise
            return resp["Body"].read(), str(resp["ETag"])
        raw = storage.read_bytes(key)
        return raw, (None if raw is None else hashlib.sha256(raw).hexdigest())

    def _write(self, key: str, data: bytes, *, expect: str | None) -> bool:
        storage = self.storage
        if isinstance(storage, S3Storage):
            bucket, full = split_s3_uri(storage.key_uri(key))
            cond = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": expect}
            try:
                storage.client.put_object(
                    Bucket=bucket,
                    Key=full,
                    Body=data,
                    ContentType="application/json",
                    **cond,
                )
            except S3_ERRORS as exc:
                if s3_error_code(exc) in _PRECONDITION_CODES:
                    return False
                raise
            return True
        with self._locked():
            _, current = self._read(key)
            if current != expect:
                return False
            storage.write_bytes(key, data, content_type="application/json")
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not isinstance(self.storage, LocalStorage):
            yield  # an unknown backend: best effort
            return
        import fcntl

        lock_dir = self.storage.root / LEDGER_PREFIX
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _dump(entry: LedgerEntry) -> bytes:
    return json.dumps(entry.model_dump(), indent=1).encode()


class InboxReport(BaseModel):
    """What one tick did."""

    inbox: str
    dest_root: str
    processed: list[LedgerEntry] = Field(default_factory=list)
    already_done: list[str] = Field(default_factory=list)
    claimed_elsewhere: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)


def list_manifests(inbox: Storage) -> list[str]:
    """Names of the `*.csv` files directly under the inbox (subfolders hold pictures or
    results, never manifests to pick up)."""
    return [k for k in inbox.list("") if "/" not in k and k.lower().endswith(".csv")]


def dest_for(dest_root: Storage, name: str) -> str:
    """DEST for a manifest: <dest_root>/<file name without .csv>/."""
    stem = PurePosixPath(name).stem or name
    return dest_root.key_uri(f"{stem}/")


@flow(name="i2v-inbox", log_prints=False)
async def i2v_inbox(
    inbox: str,
    dest_root: str,
    options: BatchOptions | None = None,
    lease_hours: float = DEFAULT_LEASE_HOURS,
) -> InboxReport:
    """Process each new manifest in INBOX into DEST_ROOT/<manifest stem>/, once.

    Args:
        inbox: A folder or `s3://bucket/prefix/` where manifests (`*.csv`) are dropped.
        dest_root: A folder or `s3://bucket/prefix/`; each manifest gets its own DEST
            under it, and the ledger lives in its `_inbox/`.
        options: Batch options for every manifest.
        lease_hours: A claim older than this is presumed dead and taken over.
    """
    for label, value in (("inbox", inbox), ("dest_root", dest_root)):
        if not value.strip() or "{{" in value:
            raise ConfigError(
                f"the {label} parameter is not set ({value!r}): deploy with I2V_INBOX and "
                "I2V_DEST_ROOT set, or edit the deployment's parameters"
            )
    options = options or BatchOptions.model_validate({})
    logger = get_run_logger()
    s3 = s3_client_for(options) if "s3://" in inbox + dest_root else None
    box = open_storage(inbox, s3_client=s3)
    root = open_storage(dest_root, s3_client=s3)
    ledger = Ledger(root)
    me = str(runtime_flow_run.get_id() or "local")
    lease = timedelta(hours=lease_hours)
    report = InboxReport(inbox=box.uri, dest_root=root.uri)

    names = await asyncio.to_thread(list_manifests, box)
    for name in names:
        data = await asyncio.to_thread(box.read_bytes, name)
        if data is None:  # removed between the listing and now
            continue
        sha = hashlib.sha256(data).hexdigest()
        entry, token = await asyncio.to_thread(ledger.get, name)
        decision = decide(entry, sha, me, now=datetime.now(UTC), lease=lease)
        if decision is Decision.DONE:
            report.already_done.append(name)
            continue
        if decision is Decision.CLAIMED:
            assert entry is not None
            logger.info(
                "%s: being processed by flow run %s since %s; skipping",
                name,
                entry.flow_run_id,
                entry.claimed_at,
            )
            report.claimed_elsewhere.append(name)
            continue
        dest = dest_for(root, name)
        claim = LedgerEntry(
            name=name,
            manifest=box.key_uri(name),
            sha256=sha,
            status="claimed",
            flow_run_id=me,
            claimed_at=utcnow(),
            dest=dest,
            history=_history(entry),
        )
        if not await asyncio.to_thread(ledger.replace, name, claim, token):
            logger.info("%s: claimed by another run a moment ago; skipping", name)
            report.claimed_elsewhere.append(name)
            continue
        logger.info("%s: new manifest (sha256 %s): processing into %s", name, sha[:12], dest)
        try:
            summary = await i2v_batch(source=claim.manifest, dest=dest, options=options)
        except Exception as exc:
            logger.error(
                "%s: the run failed (%s: %s); not recorded, the next tick retries it",
                name,
                type(exc).__name__,
                exc,
            )
            await asyncio.to_thread(ledger.release, name, me)
            report.failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        except BaseException:  # cancelled: leave nothing that blocks the next tick
            with contextlib.suppress(Exception):
                ledger.release(name, me)
            raise
        done = claim.model_copy(
            update={
                "status": "done",
                "finished_at": utcnow(),
                "run_id": summary.run_id,
                "counts": {k: v for k, v in summary.counts.items() if v},
                "spent_usd": summary.spent_usd,
                "results_uri": summary.results_uri,
            }
        )
        await asyncio.to_thread(ledger.put, name, done)
        report.processed.append(done)
        logger.info(
            "%s: recorded as processed (%s; spent $%.2f)",
            name,
            ", ".join(f"{v} {k}" for k, v in done.counts.items()) or "no rows",
            done.spent_usd,
        )
    logger.info(
        "inbox %s: %d manifests, %d processed now, %d already processed, %d held by other "
        "runs, %d failed",
        box.uri,
        len(names),
        len(report.processed),
        len(report.already_done),
        len(report.claimed_elsewhere),
        len(report.failed),
    )
    if report.failed:
        raise InboxFailed(
            f"{len(report.failed)} manifests failed and will be retried next tick: "
            + "; ".join(f"{k}: {v}" for k, v in report.failed.items())
        )
    return report


def _history(entry: LedgerEntry | None) -> list[dict[str, Any]]:
    """Carry what an earlier content of this name produced (done entries only)."""
    if entry is None:
        return []
    if entry.status != "done":
        return entry.history
    keep = entry.model_dump(exclude={"history"})
    return [*entry.history, keep][-10:]
