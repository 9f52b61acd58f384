"""Reading a DEST for `i2v status`: its records, its run summaries and its results table.

Reads only the DEST, never the API: the durable records `_state/<identity>.json` (one
small read each, in parallel; on S3 only those changed since the index,
`i2v.status_index`), the current table `results.parquet` and the summaries
`runs/<run-id>/summary.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from i2v.concurrency import parallel_map
from i2v.errors import StorageError
from i2v.results import RunSummary
from i2v.state import STATE_PREFIX, InputRecord
from i2v.status_index import Entry, etag, indexed, load_index, save_index
from i2v.storage import Storage

if TYPE_CHECKING:
    from i2v.s3_storage import S3Storage

READ_WORKERS = 64  # parallel record reads: S3 GETs are latency-bound, not CPU-bound
LAST_RUNS = 10


def read_records(
    storage: Storage, workers: int = READ_WORKERS, *, use_index: bool = True
) -> RecordsRead:
    """Every `_state/` record, read in parallel; and the keys of those that do not parse.

    On S3 the listing carries each record's ETag, and the index (`i2v.status_index`)
    keeps the records the runs wrote and this command read last time with their ETags:
    only records whose ETag differs (or that are new) are read. A record is only ever
    taken from the index when S3 says it still has exactly those bytes (same ETag), so
    the answer is the same as reading all of them, and a DEST of 10,000 inputs answers
    in seconds instead of one GET per record. The index is only a cache: rewritten when
    something changed, ignored when unreadable, and not written where DEST is read-only.
    """
    if use_index and indexed(storage):
        return _read_indexed(storage, workers)
    keys = [k for k in storage.list(STATE_PREFIX) if k.endswith(".json")]
    found = RecordsRead()
    for key, got in zip(
        keys, parallel_map(lambda k: _fetch(storage, k), keys, workers), strict=True
    ):
        found.add(storage, key, got)
    found.fetched = len(keys)
    return found


class RecordsRead:
    """The records of a DEST, the ones that do not parse, and what reading them cost."""

    def __init__(self) -> None:
        self.records: list[InputRecord] = []
        self.unreadable: list[str] = []
        self.fetched = 0  # records read from DEST
        self.from_index = 0  # records taken from the index (unchanged since)

    def add(self, storage: Storage, key: str, got: InputRecord | bool | None) -> None:
        if isinstance(got, InputRecord):
            self.records.append(got)
        elif got is False:
            self.unreadable.append(storage.key_uri(key))


def _fetch(storage: Storage, key: str) -> InputRecord | bool | None:
    """The record under `key`; None if it vanished since the listing, False if unreadable."""
    data = storage.read_bytes(key)
    if data is None:
        return None
    try:
        return InputRecord.model_validate_json(data)
    except ValidationError:
        return False


def _read_indexed(storage: S3Storage, workers: int) -> RecordsRead:
    # Identities are sha256 hex: 16 listings in parallel overlap their round trips.
    listing: dict[str, str] = {}
    for part in parallel_map(lambda c: storage.list_versions(f"{STATE_PREFIX}{c}"), _HEX, 16):
        listing.update({k: v for k, v in part.items() if k.endswith(".json")})
    index, version = load_index(storage)
    found = RecordsRead()
    kept: list[Entry] = []
    todo: list[str] = []
    for key, tag in listing.items():
        hit = index.get(key)
        if hit is not None and hit[0] == etag(tag):
            try:
                found.records.append(InputRecord.model_validate_json(hit[1]))
            except ValidationError:
                todo.append(key)
                continue
            kept.append((key, hit[0], hit[1]))
            found.from_index += 1
        else:
            todo.append(key)

    def fetch(key: str) -> tuple[InputRecord | bool | None, str | None]:
        data, tag = storage.read_versioned(key)
        if data is None:
            return None, None
        try:
            return InputRecord.model_validate_json(data), tag
        except ValidationError:
            return False, None

    for key, (got, got_tag) in zip(todo, parallel_map(fetch, todo, workers), strict=True):
        found.add(storage, key, got)
        if isinstance(got, InputRecord) and got_tag:
            kept.append((key, got_tag, got.model_dump_json().encode()))
    found.fetched = len(todo)
    if todo or len(kept) != len(index):
        # Lost to a run refreshing it meanwhile, or a read-only DEST: answer without.
        with contextlib.suppress(StorageError):
            save_index(storage, kept, version)
    return found


_HEX = "0123456789abcdef"


def read_runs(storage: Storage, last: int = LAST_RUNS) -> tuple[list[RunSummary], int]:
    """The newest `last` run summaries (run ids sort by time), newest first; and how
    many runs have a summary."""
    run_ids = sorted(
        {k.split("/")[1] for k in storage.list("runs/") if k.endswith("/summary.json")}
    )
    wanted = run_ids[::-1][:last]
    summaries = [s for s in parallel_map(lambda r: read_summary(storage, r), wanted, 8) if s]
    return summaries, len(run_ids)


def read_summary(storage: Storage, run_id: str) -> RunSummary | None:
    try:
        raw = storage.read_bytes(f"runs/{run_id}/summary.json")
        return RunSummary.model_validate(json.loads(raw)) if raw else None
    except (ValueError, ValidationError, StorageError):
        return None


def read_table(storage: Storage) -> Any:
    """The current results table (a DataFrame), or None when there is none."""
    import pandas as pd

    raw = storage.read_bytes("results.parquet")
    return None if raw is None else pd.read_parquet(io.BytesIO(raw))
