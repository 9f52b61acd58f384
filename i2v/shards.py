"""Fan-out without Prefect: split a manifest into shards and merge their tables.

Rows with the same input identity always go to the same shard, so shards never race
for an input; the merged table is in manifest order. Rows of a shard that left no table
(it crashed, or its machine was lost) come back as landed when their records say the
shard landed them, otherwise as not_submitted with the shard's fate as the reason.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from i2v.concurrency import parallel_map
from i2v.config import BatchOptions
from i2v.errors import ConfigError, StorageError
from i2v.lifecycle import all_videos_in, outcome_of
from i2v.manifest_formats import typed_column
from i2v.results import DTYPES, RunSummary, carried_name, result_rows, status_counts, table_columns
from i2v.rows import group_jobs
from i2v.run import Job, RowPlan, RowStatus
from i2v.state import InputRecord, Phase, StateStore
from i2v.storage import Storage

if TYPE_CHECKING:
    import pandas as pd

STATS = ("submissions", "uploads", "polls", "downloads")


class ShardReport(BaseModel):
    """One shard's flow run and what it did."""

    index: int
    rows: int
    first_line: int | None = None
    last_line: int | None = None
    flow_run_id: str
    flow_run_name: str
    state: str = "Unknown"
    message: str | None = None
    run_id: str | None = None  # the shard's i2v run id (its DEST/runs/<run-id>/ folder)
    counts: dict[str, int] = Field(default_factory=dict)
    spent_usd: float = 0.0
    money: dict[str, float] = Field(default_factory=dict)  # charged_usd, refunded_usd, ...
    stats: dict[str, int] = Field(default_factory=dict)  # submissions, uploads, polls, ...


# A run summary's money fields beside spent_usd (`i2v.spend`), summed over shards.
MONEY = ("charged_usd", "reserved_usd", "refunded_usd", "maybe_usd")


@dataclass(frozen=True)
class ShardRun:
    """How one shard's flow run ended, as the orchestrator reported it."""

    flow_run_id: str
    name: str
    state: str
    message: str | None = None


def auto_shard_size(rows: int, workers: int, *, concurrency: int, limit: int | None) -> int:
    """Rows per shard when the fan-out is not told: one shard per online worker (the
    parent's own worker runs the first in its process), and at least as many as it
    takes, at `concurrency` in flight per shard, to fill the global limit `limit`.

    More shards than that only start more processes: on the bench's two workers, 4
    shards of 150 rows reached 0.63 of ideal against 0.66 for 2 of 300, because a
    shard's process costs 15-20 s of CPU before its first submission.
    """
    shards = max(1, workers)
    if limit:
        shards = max(shards, -(-limit // max(1, concurrency)))
    return max(1, -(-rows // shards))


def plan_shards(plans: Sequence[RowPlan], shard_size: int) -> list[list[int]]:
    """Manifest line numbers per shard, in manifest order, about `shard_size` rows each.

    Rows that share an input identity, or a manifest line (a bake-off's pairs: a shard
    runs whole lines), form one group that is never split: two shards holding the same
    input could both pay for it. A group bigger than `shard_size` becomes a shard of its
    own. Rows rejected by the checks join only their line's group.
    """
    if shard_size < 1:
        raise ConfigError(f"shard_size must be at least 1, not {shard_size}")
    root: dict[str, str] = {}

    def find(key: str) -> str:
        while root.setdefault(key, key) != key:
            root[key] = root[root[key]]
            key = root[key]
        return key

    for plan in plans:
        line = find(f"line:{plan.row.line}")
        if plan.identity and not plan.error:
            same = find(f"input:{plan.identity}")
            if same != line:
                root[same] = line
    groups: dict[str, list[int]] = {}
    for plan in plans:  # dicts keep first-seen (manifest) order
        groups.setdefault(find(f"line:{plan.row.line}"), []).append(plan.row.line)
    shards: list[list[int]] = []
    current: list[int] = []
    for lines in groups.values():
        if current and len(current) + len(lines) > shard_size:
            shards.append(current)
            current = []
        current.extend(lines)
    if current:
        shards.append(current)
    return [sorted(set(s)) for s in shards]


def merge_shards(
    storage: Storage,
    plans: Sequence[RowPlan],
    shards: list[list[int]],
    runs: Sequence[ShardRun],
    options: BatchOptions,
    extra_columns: Sequence[str],
    extra_types: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, list[ShardReport]]:
    """One table in manifest order from the shards' run tables. Rows of a shard that
    left no table are landed when their records say so (with every video in DEST), else
    not_submitted with the shard's fate as the error."""
    model = str(options.model)
    by_line: dict[int, list[RowPlan]] = {}
    for plan in plans:  # a bake-off's pairs share their line
        by_line.setdefault(plan.row.line, []).append(plan)
    run_dirs = sorted({k.split("/")[1] for k in storage.list("runs/") if k.count("/") >= 2})
    frames: list[pd.DataFrame] = []
    reports: list[ShardReport] = []
    for i, (lines, run) in enumerate(zip(shards, runs, strict=True), 1):
        state = run.state
        report = ShardReport(
            index=i,
            rows=len(lines),
            first_line=lines[0],
            last_line=lines[-1],
            flow_run_id=run.flow_run_id,
            flow_run_name=run.name,
            state=state,
            message=run.message or None,
        )
        wanted = set(lines)
        found = _shard_table(storage, run_dirs, run.flow_run_id, wanted)
        table = found[1] if found else None
        if found is not None and table is not None:
            table = table[table["line"].isin(wanted)]
            _read_summary(storage, found[0], report)
            frames.append(table)
        covered = set(table["line"].dropna().astype(int)) if table is not None else set()
        missing = [p for n in lines if n not in covered for p in by_line.get(n, [])]
        if missing:
            why = (
                f"shard {i}/{len(shards)} (flow run {run.name}) ended {state}"
                + (f" ({report.message})" if report.message else "")
                + " before this row's result was known; not processed. Run the fan-out "
                "again: inputs already paid for are not paid again"
            )
            landed = _landed_by_records(storage, missing, options)
            lost = result_rows(
                missing, landed, model=model, dest=storage, extra_columns=extra_columns
            )  # typed below, with the shards' tables
            lost.loc[lost["status"] == str(RowStatus.NOT_SUBMITTED), "error"] = why
            if table is None:
                report.counts = {k: v for k, v in status_counts(lost).items() if v}
            frames.append(lost)
        reports.append(report)
    columns = table_columns(extra_columns)
    if frames:
        import pandas as pd  # deferred: importing the flows need not load pandas

        frame = pd.concat([f.reindex(columns=columns) for f in frames], ignore_index=True)
    else:
        frame = result_rows([], [], model=model, dest=storage, extra_columns=extra_columns)
    frame = frame.sort_values("line", kind="stable").reset_index(drop=True)
    for col in columns:
        frame[col] = frame[col].astype(DTYPES.get(col, "string"))  # type: ignore[call-overload]
    for col, dtype in (extra_types or {}).items():  # the manifest's typed columns
        frame[carried_name(col)] = typed_column(frame[carried_name(col)], dtype)
    return frame, reports


def helper_reports(storage: Storage, runs: Sequence[ShardRun]) -> list[ShardReport]:
    """What the fan-out parent's runs of waiting shards' rows paid and did
    (`flows/helping.py`): their rows are in their shards' tables, their money here."""
    run_dirs = sorted({k.split("/")[1] for k in storage.list("runs/") if k.count("/") >= 2})
    reports: list[ShardReport] = []
    for run in runs:
        report = ShardReport(
            index=0, rows=0, flow_run_id=run.flow_run_id, flow_run_name=run.name, state=run.state
        )
        suffix = f"-{run.flow_run_id[:8]}"
        for run_dir in reversed([d for d in run_dirs if d.endswith(suffix)]):
            if _read_summary(storage, run_dir, report):
                break
        reports.append(report)
    return reports


def _read_summary(storage: Storage, run_dir: str, report: ShardReport) -> bool:
    """`report` filled from DEST/runs/<run_dir>/summary.json; False when there is none."""
    report.run_id = run_dir
    raw = storage.read_bytes(f"runs/{run_dir}/summary.json")
    if not raw:
        return False
    summary = RunSummary.model_validate(json.loads(raw))
    report.spent_usd = summary.spent_usd
    report.money = {k: float(getattr(summary, k)) for k in MONEY}
    report.counts = {k: v for k, v in summary.counts.items() if v}
    report.stats = {k: int(getattr(summary, k)) for k in STATS}
    return True


def _landed_by_records(
    storage: Storage, plans: Sequence[RowPlan], options: BatchOptions
) -> list[Job]:
    """The jobs of `plans` (rows a shard left no result for) that the shard landed
    before it ended: their records say landed and every row's video is in DEST."""
    jobs = group_jobs(plans, options)
    store = StateStore(storage)

    def record(identity: str) -> InputRecord | None:
        try:
            return store.get(identity)
        except StorageError:  # unreadable: not shown as landed; the rerun says why
            return None

    records = parallel_map(record, [job.identity for job in jobs], 16)
    landed = [
        (job, rec)
        for job, rec in zip(jobs, records, strict=True)
        if rec and rec.phase is Phase.LANDED
    ]
    present = frozenset(storage.list("videos/")) if landed else frozenset()
    for job, rec in landed:
        if all_videos_in(job, rec, present):
            job.outcome = outcome_of(rec).settled()
    return [job for job, _ in landed if job.outcome is not None]


def _shard_table(
    storage: Storage, run_dirs: list[str], flow_run_id: str, lines: set[int]
) -> tuple[str, pd.DataFrame] | None:
    """The shard's run folder and table: named <UTC stamp>-<flow run id[:8]>, newest
    first (a retried shard writes one per attempt), and holding only this shard's lines
    (a guard should two flow run ids ever share their first 8 characters)."""
    suffix = f"-{flow_run_id[:8]}"
    for run_dir in reversed([d for d in run_dirs if d.endswith(suffix)]):
        raw = storage.read_bytes(f"runs/{run_dir}/results.parquet")
        if raw is None:
            continue
        import pandas as pd

        table = pd.read_parquet(io.BytesIO(raw))
        got = set(table["line"].dropna().astype(int))
        if got and got <= lines:
            return run_dir, table
    return None
