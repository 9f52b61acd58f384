"""The inbox flow: every manifest dropped into an inbox prefix is processed once.

Each tick (a cron schedule) lists the manifests (`*.csv`, `*.parquet`, `*.jsonl`)
directly under INBOX. A manifest whose current content has no "done" entry in the
ledger is claimed, run through the batch flow (as a subflow) into
DEST_ROOT/<manifest stem>/, and recorded as done, even if some rows failed: their
reasons are in that results table, and a rerun is a person's call.

The ledger (`i2v.ledger`) is one JSON object per manifest name under DEST_ROOT/_inbox/,
kept with the results it describes. It holds the manifest's sha256, so re-uploading
different content under the same name processes it again (into the same DEST, where
inputs already landed cost nothing), while re-uploading the same bytes does not.

A crashed or failed run is not recorded: its claim is released and the next tick retries.
Two runs ticking together (two workers, an overlapping schedule) claim with an atomic
create / compare-and-swap (S3 conditional writes; a file lock for a folder), so only one
processes a manifest. A claim left by a run that could not release it (its machine
died) is taken over at the next tick once Prefect says that flow run is over: Crashed
or otherwise final, deleted, or Running but silent past its heartbeats (the tick marks
it Crashed). A claim whose run Prefect cannot judge is presumed dead after the lease
(default 6 h).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from pydantic import BaseModel, Field

from flows.authority import check_worker_settings
from flows.batch import i2v_batch
from flows.clients import s3_client_for
from flows.lost_runs import mark_lost_runs, own_heartbeat_s
from i2v.config import BatchOptions
from i2v.dest import open_storage
from i2v.errors import I2VError
from i2v.ledger import (
    DEFAULT_LEASE_HOURS,
    Decision,
    Holder,
    Ledger,
    LedgerEntry,
    carried_history,
    decide,
    dest_for,
    held_by_another,
    list_manifests,
)
from i2v.state import utcnow


class InboxFailed(I2VError):
    """At least one manifest's run failed; it stays unrecorded and is retried next tick."""


class InboxReport(BaseModel):
    """What one tick did."""

    inbox: str
    dest_root: str
    processed: list[LedgerEntry] = Field(default_factory=list)
    already_done: list[str] = Field(default_factory=list)
    claimed_elsewhere: list[str] = Field(default_factory=list)
    taken_over: list[str] = Field(default_factory=list)  # claims of runs that are gone
    failed: dict[str, str] = Field(default_factory=dict)
    not_configured: str | None = None  # why the tick did nothing: what to set


@flow(name="i2v-inbox", log_prints=False)
async def i2v_inbox(
    inbox: str = "",
    dest_root: str = "",
    options: BatchOptions = BatchOptions(),
    lease_hours: float = DEFAULT_LEASE_HOURS,
) -> InboxReport:
    """Process each new manifest in INBOX into DEST_ROOT/STEM/ (STEM: the manifest's
    name without its suffix), once.

    Args:
        inbox: A folder or `s3://bucket/prefix/` where manifests (`*.csv`, `*.parquet`,
            `*.jsonl`) are dropped.
        dest_root: A folder or `s3://bucket/prefix/`; each manifest gets its own DEST
            under it, and the ledger lives in its `_inbox/`.
        options: Batch options for every manifest.
        lease_hours: A claim whose flow run Prefect cannot judge (not found is judged:
            gone) is presumed dead after this long and taken over.

    A tick whose inbox or dest_root is not set (deployed without I2V_INBOX /
    I2V_DEST_ROOT) does nothing, says once what to set, and completes: a schedule
    shipped before its configuration must not fail every ten minutes.
    """
    logger = get_run_logger()
    await check_worker_settings(options)  # before the inbox is read
    missing = [
        label
        for label, value in (("inbox", inbox), ("dest_root", dest_root))
        if not value.strip() or "{{" in value
    ]
    if missing:
        why = (
            f"not configured, nothing to do: set {' and '.join(missing)} (deploy with "
            "I2V_INBOX and I2V_DEST_ROOT in the environment, or edit the deployment's "
            "parameters)"
        )
        logger.warning("inbox %s", why)
        return InboxReport(inbox=inbox, dest_root=dest_root, not_configured=why)
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
        holder = Holder.UNKNOWN
        if entry is not None and held_by_another(entry, sha, me):
            holder = await _holder(entry, me)
        decision = decide(entry, sha, me, now=datetime.now(UTC), lease=lease, holder=holder)
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
        if holder is Holder.GONE:
            assert entry is not None
            logger.warning(
                "%s: claimed by flow run %s, which is over without having released it; "
                "taking the claim over",
                name,
                entry.flow_run_id,
            )
            report.taken_over.append(name)
        dest = dest_for(root, name)
        claim = LedgerEntry(
            name=name,
            manifest=box.key_uri(name),
            sha256=sha,
            status="claimed",
            flow_run_id=me,
            claimed_at=utcnow(),
            dest=dest,
            history=carried_history(entry),
            heartbeat_s=own_heartbeat_s(),
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


async def _holder(entry: LedgerEntry, me: str) -> Holder:
    """What the Prefect API says of the flow run holding `entry`'s claim. One that is
    Running but silent past its heartbeats is marked Crashed here: its machine is gone."""
    try:
        run_id = UUID(entry.flow_run_id)
    except ValueError:  # a run outside the API ("local"): only the lease can tell
        return Holder.UNKNOWN
    try:
        async with get_client() as client:
            try:
                run = await client.read_flow_run(run_id)
            except ObjectNotFound:
                return Holder.GONE
            if run.state is None:
                return Holder.UNKNOWN
            if run.state.is_final():
                return Holder.GONE
            if run.state.type != StateType.RUNNING:
                return Holder.UNKNOWN
            lost = await mark_lost_runs(client, [run], entry.heartbeat_s, me=_uuid(me))
    except Exception as exc:  # the API did not answer: the lease decides
        get_run_logger().warning(
            "could not ask about flow run %s (%s: %s); its claim stands until the lease ends",
            run_id,
            type(exc).__name__,
            exc,
        )
        return Holder.UNKNOWN
    if lost is None:
        return Holder.UNKNOWN
    if run_id in lost:
        get_run_logger().warning("flow run %s marked Crashed: %s", run_id, lost[run_id])
        return Holder.GONE
    return Holder.LIVE


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None
