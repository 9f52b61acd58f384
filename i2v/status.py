"""What a DEST holds and what in it needs a person: `i2v status` and the i2v-status flow.

Reads only the DEST, never the API: the durable records `_state/<identity>.json` (one
small read each, in parallel), the current table `results.parquet` (rows, their ids
and why rows were not submitted) and the summaries `runs/<run-id>/summary.json`.
`dest_status` reads them (`i2v.status_read`) and builds one `DestStatus`
(`i2v.needs_person`); `i2v.status_render` shows it as text or markdown.

What needs a person (groups, most costly first), and what to tell them:

- ambiguous: records `ambiguous`, or `submitting` past its claim. A paid job may exist:
  look the submit time up in the Atlas console; resubmit (pays again) with the exact
  command.
- timed_out: records `submitted` / `timed_out` (ids kept). Rerun: it polls, pays nothing.
- failed, by error code: 1039 moderation (change picture or prompt); `no_output` and
  landing failures (`succeeded` records) rerun for free; `purged`: the Atlas console.
- not_submitted (never paid, so only the table knows them), by reason: budget,
  balance, stop, rate limit, another run.
- rejected: table rows that failed a check: fix the row.
- qc: landed videos the quality check flagged: look at them.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from i2v.config import ApiSettings
from i2v.lifecycle import CLAIM_SLACK_S
from i2v.needs_person import build_status
from i2v.status_model import DestStatus
from i2v.status_read import READ_WORKERS, read_records, read_runs, read_summary, read_table
from i2v.storage import Storage


def dest_status(
    storage: Storage,
    *,
    claim_ttl_s: float | None = None,
    workers: int = READ_WORKERS,
    now: datetime | None = None,
    use_index: bool = True,
) -> DestStatus:
    """Read a DEST and say what it holds and what needs a person. No API call."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as side:
        table_f = side.submit(read_table, storage)
        runs_f = side.submit(read_runs, storage)
        read = read_records(storage, workers, use_index=use_index)
        table, (runs, runs_total) = table_f.result(), runs_f.result()
    ttl = claim_ttl_s if claim_ttl_s is not None else _default_claim_ttl_s()
    status = build_status(
        storage,
        read.records,
        table,
        runs,
        runs_total=runs_total,
        unreadable=read.unreadable,
        claim_ttl_s=ttl,
        now=now,
        summary_of=lambda run_id: read_summary(storage, run_id),
    )
    status.read_s = round(time.monotonic() - started, 3)
    status.records_read, status.records_from_index = read.fetched, read.from_index
    return status


def _default_claim_ttl_s() -> float:
    # The same liveness a run with default options gives another run's claim.
    return float(ApiSettings().generate_timeout_s) + CLAIM_SLACK_S
