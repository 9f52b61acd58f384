"""The results table: one row per manifest row, written as Parquet and CSV."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from i2v.lifecycle import not_processed, rejected
from i2v.manifest_formats import typed_column
from i2v.qc import is_flagged
from i2v.row_plans import MODEL_COLUMN, model_inputs_of, model_of
from i2v.run import Job, RowPlan, RowStatus
from i2v.spend import money_note, tally
from i2v.storage import Storage

if TYPE_CHECKING:
    import pandas as pd

COLUMNS: list[str] = [
    "id",
    "image",
    "prompt",
    "duration",
    "model",
    "status",
    "error",
    "error_code",
    "prediction_id",
    "video_uri",
    "video_sha256",
    "video_bytes",
    "predict_time_s",
    "cost_usd",
    "submitted_at",
    "completed_at",
    "billing",
    "refund_usd",
    "line",
    "input_identity",
    "model_inputs",
    "video_duration_s",
    "video_width",
    "video_height",
    "video_fps",
    "qc",
]

DTYPES: dict[str, str] = {
    "duration": "Int64",
    "video_bytes": "Int64",
    "line": "Int64",
    "predict_time_s": "Float64",
    "cost_usd": "Float64",
    "refund_usd": "Float64",
    "video_duration_s": "Float64",
    "video_width": "Int64",
    "video_height": "Int64",
    "video_fps": "Float64",
}


def result_rows(
    plans: Sequence[RowPlan],
    jobs: Sequence[Job],
    *,
    model: str,
    dest: Storage,
    extra_columns: Sequence[str],
    extra_types: Mapping[str, str] | None = None,
    catalog_model: str = "",
) -> pd.DataFrame:
    """Build the table from the checked rows and each job's outcome (`extra_types`: the
    manifest's typed columns, given back typed: `i2v.manifest_formats`).

    Built column by column (no dict per row), so a 100,000-row table costs its columns
    and not 100,000 dicts on top of them at the end of the run.
    """
    by_identity = {job.identity: job for job in jobs}
    carried = {c: carried_name(c) for c in extra_columns if c != MODEL_COLUMN}
    columns = table_columns(extra_columns)
    data: dict[str, list[Any]] = {c: [] for c in columns}
    add = {c: data[c].append for c in columns}
    for plan in plans:
        row = plan.row
        job = by_identity.get(plan.identity or "")
        processed = not plan.error and job is not None and job.outcome is not None
        if processed:
            assert job is not None and job.outcome is not None
            outcome = job.outcome
        else:
            outcome = rejected(plan) if plan.error else not_processed()
        rec = outcome.shown
        is_primary = job is not None and job.primary is plan
        landed = outcome.status is RowStatus.LANDED
        kept = rec if landed else None  # what only a landed video has
        add["id"](plan.row_id)
        add["image"](row.image)
        add["prompt"](row.prompt)
        add["duration"](plan.row_model.duration if plan.row_model else row.duration)
        add["model"](model_of(plan, model, catalog_model))
        add["model_inputs"](model_inputs_of(plan, job.options if job else None))
        add["line"](row.line)
        add["input_identity"](plan.identity)
        add["status"](str(outcome.status))
        add["error"](outcome.error)
        add["error_code"](outcome.error_code)
        add["prediction_id"](rec.prediction_id if rec else None)
        add["video_uri"](dest.key_uri(plan.video_key) if landed else None)
        add["video_sha256"](kept.video_sha256 if kept else None)
        add["video_bytes"](kept.video_bytes if kept else None)
        add["predict_time_s"](rec.predict_time_s if rec else None)
        # The input's bill once, on its first row; duplicates were copies.
        bill = outcome.billing if is_primary else None
        price = (rec.cost_usd or 0.0) if rec else 0.0
        add["cost_usd"]((price if bill == "charged" else 0.0) if processed else None)
        add["billing"](bill)
        add["refund_usd"](price if bill == "refunded" else None)
        add["submitted_at"](rec.submitted_at if rec else None)
        add["completed_at"](rec.completed_at if rec else None)
        add["video_duration_s"](kept.video_duration_s if kept else None)
        add["video_width"](kept.video_width if kept else None)
        add["video_height"](kept.video_height if kept else None)
        add["video_fps"](kept.video_fps if kept else None)
        add["qc"](kept.qc if kept else None)
        for col, name in carried.items():
            add[name](row.extras.get(col, ""))
    import pandas as pd  # deferred: importing the flows need not load pandas

    frame = pd.DataFrame({c: pd.Series(data.pop(c), dtype=_dtype(c)) for c in columns})
    for col, dtype in (extra_types or {}).items():
        frame[carried[col]] = typed_column(frame[carried[col]], dtype)
    return frame


def table_columns(extra_columns: Sequence[str]) -> list[str]:
    """The results table's columns: ours, then the manifest's own, in its order."""
    # The manifest's `model` column is the row's model: the table's own `model`.
    return COLUMNS + [carried_name(c) for c in extra_columns if c != MODEL_COLUMN]


def carried_name(column: str) -> str:
    """A manifest's own column in the results: under its name, or `manifest_<name>` where
    the name is one of ours (a CSV's `status` must not overwrite the run's)."""
    return f"manifest_{column}" if column in COLUMNS else column


def _dtype(column: str) -> Any:
    return DTYPES.get(column, "string")


class RunSummary(BaseModel):
    """What a run did, for the CLI, the flow's return value and the artifacts."""

    run_id: str
    source: str
    dest: str
    rows: int
    inputs: int
    counts: dict[str, int]
    spent_usd: float = 0.0  # charged + reserved (`i2v.spend`)
    charged_usd: float = 0.0  # videos made
    reserved_usd: float = 0.0  # submitted, still in flight
    refunded_usd: float = 0.0  # failed at the provider, given back
    maybe_usd: float = 0.0  # ambiguous: a paid job may exist
    estimated_usd: float = 0.0
    # The dry run's `model: rows, new inputs, dollars` lines (`i2v.dry_run`).
    by_model: list[str] = Field(default_factory=list)
    submissions: int = 0
    uploads: int = 0
    polls: int = 0
    downloads: int = 0
    elapsed_s: float = 0.0
    dry_run: bool = False
    stop_reason: str | None = None
    stop_message: str | None = None
    stopped_by: str | None = None  # the signal that wound the run down ("SIGTERM")
    simulated: bool = False  # the provider was the simulator: nothing was really spent
    command: list[str] | None = None  # the `i2v run` command line, when the CLI started it
    top_errors: list[tuple[str, int]] = Field(default_factory=list)
    # Landed videos the quality check flagged: (row id, reasons), in table order.
    qc_flagged: list[tuple[str, str]] = Field(default_factory=list)
    results_uri: str | None = None

    @staticmethod
    def money_of(jobs: Sequence[Job]) -> dict[str, float]:
        """The money fields over what THIS run submitted (`run_bill`)."""
        return run_bill(jobs)

    @property
    def bill_note(self) -> str:
        """The spent figure's parts (`i2v.spend`)."""
        return money_note(self.charged_usd, self.reserved_usd, self.refunded_usd, self.maybe_usd)

    @property
    def all_landed(self) -> bool:
        return self.rows > 0 and self.counts.get(str(RowStatus.LANDED), 0) == self.rows

    @property
    def exit_code(self) -> int:
        if self.stop_reason in ("auth", "model"):
            return 2
        if self.stopped_by:
            return 128 + int(getattr(signal.Signals, self.stopped_by, signal.SIGTERM))
        if self.dry_run:
            return 0
        return 0 if self.all_landed else 1


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = {str(s): 0 for s in RowStatus}
    for status, n in Counter(frame["status"].dropna()).items():
        counts[str(status)] = int(n)
    return counts


def qc_flags(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(row id, reasons) of every landed row whose video the quality check flagged."""
    if "qc" not in frame.columns:
        return []
    return [
        (str(i), str(q)) for i, q in zip(frame["id"], frame["qc"], strict=True) if is_flagged(q)
    ]


def qc_section(flagged: Sequence[tuple[str, str]], limit: int = 50) -> list[str]:
    """Markdown lines listing the flagged videos (none when nothing was flagged)."""
    if not flagged:
        return []
    lines = [
        "",
        f"## Videos flagged by the quality check ({len(flagged)})",
        "",
        "They are landed and paid for; nothing was deleted or paid again. Look at each "
        "one; for another video change its prompt or picture (a rerun of the same input "
        "keeps this one and pays nothing).",
        "",
        "| id | qc |",
        "|---|---|",
    ]
    lines += [f"| {row_id} | {qc} |" for row_id, qc in flagged[:limit]]
    if len(flagged) > limit:
        lines.append(f"| … | {len(flagged) - limit} more in the results table (`qc` column) |")
    return lines


def top_errors(frame: pd.DataFrame, n: int = 5) -> list[tuple[str, int]]:
    errors = frame.loc[frame["status"] != str(RowStatus.LANDED), "error"].dropna()
    # Group by the message's first clause so per-row details don't split a cause.
    keys = errors.map(lambda e: str(e).split(";")[0][:160])
    return [(k, int(v)) for k, v in Counter(keys).most_common(n)]


def write_tables(
    storage: Storage,
    frame: pd.DataFrame,
    run_id: str,
    summary: RunSummary | None = None,
    *,
    publish: bool = True,
) -> dict[str, str]:
    """Write the table and summary under runs/<run-id>/ and, if `publish`, as the
    current table at the root. Returns where the current (or run's) table is."""
    run_prefix = f"runs/{run_id}/"
    where = "" if publish else run_prefix
    uris = {
        "parquet": storage.key_uri(f"{where}results.parquet"),
        "csv": storage.key_uri(f"{where}results.csv"),
        "run": storage.key_uri(run_prefix),
    }
    # Staged files, never whole tables in memory: at 100,000 rows the CSV text, its
    # bytes and the parquet buffer were ~100 MiB on top of the frame at a run's end.
    staged = Path(tempfile.mkdtemp(prefix="i2v-table-", dir=storage.staging_dir()))
    try:
        parquet, csv = staged / "results.parquet", staged / "results.csv"
        frame.to_parquet(parquet, index=False)
        frame.to_csv(csv, index=False, encoding="utf-8")
        # History first: if the root write fails, the run's own copy is already there.
        storage.put_file(f"{run_prefix}results.parquet", parquet)
        storage.put_file(f"{run_prefix}results.csv", csv, content_type="text/csv")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if summary is not None:
        told = summary.model_copy(update={"results_uri": uris["parquet"]})
        summary_json = json.dumps(told.model_dump(), indent=1, default=str).encode()
        storage.write_bytes(
            f"{run_prefix}summary.json", summary_json, content_type="application/json"
        )
    if publish:
        storage.copy(f"{run_prefix}results.parquet", "results.parquet")
        storage.copy(f"{run_prefix}results.csv", "results.csv")
    return uris


def run_bill(jobs: Sequence[Job]) -> dict[str, float]:
    """The summary's money fields over what THIS run submitted (`i2v.spend`)."""
    bill = tally((j.outcome.billing, j.outcome.paid_usd) for j in jobs if j.outcome)
    return {
        "spent_usd": bill.spent_usd,
        "charged_usd": bill.charged_usd,
        "reserved_usd": bill.reserved_usd,
        "refunded_usd": bill.refunded_usd,
        "maybe_usd": bill.maybe_usd,
    }
