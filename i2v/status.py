"""What a DEST holds and what in it needs a person: `i2v status` and the i2v-status flow.

Reads only the DEST, never the API: the durable records `_state/<identity>.json` (one
small read each, in parallel), the current table `results.parquet` (rows, their ids
and why rows were not submitted) and the summaries `runs/<run-id>/summary.json`.
`dest_status` builds one `DestStatus`; `render_text` and `render_markdown` show it.

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

import contextlib
import io
import json
import shlex
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from i2v.concurrency import parallel_map
from i2v.config import ApiSettings
from i2v.errors import StorageError
from i2v.lifecycle import CLAIM_SLACK_S
from i2v.qc import is_flagged
from i2v.results import RunSummary
from i2v.run import RowStatus
from i2v.state import NO_OUTPUT, PURGED, STATE_PREFIX, InputRecord, Phase, claim_is_live
from i2v.status_index import Entry, etag, indexed, load_index, save_index
from i2v.storage import Storage

if TYPE_CHECKING:
    from i2v.s3_storage import S3Storage

READ_WORKERS = 64  # parallel record reads: S3 GETs are latency-bound, not CPU-bound
LAST_RUNS = 10
SHOWN_PER_GROUP = 10  # items per group in the text and markdown (the JSON has all)
MODERATION_CODE = "1039"
LANDING = "landing"  # the group key of paid videos that did not land

GroupKind = Literal["ambiguous", "timed_out", "failed", "not_submitted", "rejected", "qc"]
# The order groups are shown in: what may have cost money first.
KINDS: tuple[GroupKind, ...] = (
    "ambiguous",
    "timed_out",
    "failed",
    "not_submitted",
    "rejected",
    "qc",
)


class Item(BaseModel):
    """One input (or, for rows never paid, one row) that needs a person."""

    ids: list[str] = Field(default_factory=list)  # its rows in the current table
    identity: str | None = None
    prediction_id: str | None = None
    at: str | None = None  # submit time (ambiguous) or submission time (others)
    error: str | None = None
    video_uri: str | None = None
    qc: str | None = None


class Group(BaseModel):
    """Items needing the same action."""

    kind: GroupKind
    key: str = ""  # error code, reason, or "" when the kind says it all
    title: str
    what_to_do: str
    command: str | None = None  # the exact command that does it, when there is one
    rows: int = 0  # rows affected (an input may stand for several rows)
    items: list[Item] = Field(default_factory=list)


class RunLine(BaseModel):
    run_id: str
    source: str
    rows: int
    counts: dict[str, int]
    spent_usd: float
    elapsed_s: float
    simulated: bool = False
    dry_run: bool = False
    stop_reason: str | None = None
    qc_flagged: int = 0


class Spend(BaseModel):
    usd: float = 0.0  # inputs with a prediction id: paid
    inputs: int = 0
    maybe_usd: float = 0.0  # ambiguous submissions: a paid job may exist
    maybe_inputs: int = 0
    simulated: bool = False  # every run summary says the provider was the simulator
    first_at: str | None = None
    last_at: str | None = None
    by_day: dict[str, float] = Field(default_factory=dict)


class DestStatus(BaseModel):
    """Everything `i2v status` says about one DEST."""

    dest: str
    generated_at: str
    table_uri: str | None = None
    rows: int | None = None  # rows of the current table (None: no table yet)
    rows_by_status: dict[str, int] = Field(default_factory=dict)
    inputs: int = 0
    inputs_by_status: dict[str, int] = Field(default_factory=dict)
    spent: Spend = Field(default_factory=Spend)
    runs: list[RunLine] = Field(default_factory=list)
    runs_total: int = 0
    needs_person: list[Group] = Field(default_factory=list)
    unreadable: list[str] = Field(default_factory=list)  # records that do not parse
    read_s: float = 0.0
    records_read: int = 0  # records read from DEST this time
    records_from_index: int = 0  # unchanged since a run or status indexed them (S3: ETag)

    @property
    def needs_person_rows(self) -> int:
        return sum(g.rows for g in self.needs_person) + len(self.unreadable)

    @property
    def exit_code(self) -> int:
        """0 when nothing needs a person, 1 otherwise."""
        return 1 if self.needs_person or self.unreadable else 0

    def as_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["needs_person_rows"] = self.needs_person_rows
        data["exit_code"] = self.exit_code
        return data


# ------------------------------------------------------------------------------ reading


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
    summaries = [s for s in parallel_map(lambda r: _summary(storage, r), wanted, 8) if s]
    return summaries, len(run_ids)


def _summary(storage: Storage, run_id: str) -> RunSummary | None:
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


# ----------------------------------------------------------------------------- building


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
        summary_of=lambda run_id: _summary(storage, run_id),
    )
    status.read_s = round(time.monotonic() - started, 3)
    status.records_read, status.records_from_index = read.fetched, read.from_index
    return status


def _default_claim_ttl_s() -> float:
    # The same liveness a run with default options gives another run's claim.
    return float(ApiSettings().generate_timeout_s) + CLAIM_SLACK_S


def build_status(
    storage: Storage,
    records: Sequence[InputRecord],
    table: Any,
    runs: Sequence[RunSummary],
    *,
    runs_total: int | None = None,
    unreadable: Sequence[str] = (),
    claim_ttl_s: float = 120.0,
    now: datetime | None = None,
    summary_of: Callable[[str], RunSummary | None] | None = None,
) -> DestStatus:
    """The status from what was read (pure: `dest_status` does the reading)."""
    ids_of: dict[str, list[str]] = defaultdict(list)
    status = DestStatus(
        dest=storage.uri,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        runs_total=runs_total if runs_total is not None else len(runs),
        unreadable=list(unreadable),
    )
    if table is not None:
        status.table_uri = storage.key_uri("results.parquet")
        status.rows = len(table)
        counts = Counter(str(s) for s in table["status"].dropna())
        status.rows_by_status = {str(s): counts[str(s)] for s in RowStatus if counts[str(s)]}
        for row_id, identity in zip(table["id"], table["input_identity"], strict=True):
            if isinstance(identity, str):
                ids_of[identity].append(str(row_id))
    status.runs = [_run_line(s) for s in runs]
    commands = _Commands(storage.uri, runs, summary_of)

    groups: dict[tuple[GroupKind, str], Group] = {}

    def add(kind: GroupKind, key: str, item: Item, rows: int | None = None) -> None:
        group = groups.get((kind, key))
        if group is None:
            title, todo = _advice(kind, key)
            group = groups[(kind, key)] = Group(kind=kind, key=key, title=title, what_to_do=todo)
        group.items.append(item)
        group.rows += rows if rows is not None else max(1, len(item.ids))

    by_input: Counter[str] = Counter()
    spend = status.spent
    days: dict[str, float] = defaultdict(float)
    ambiguous_runs: list[str | None] = []
    # Identity breaks ties so the index and a full read list a group in one order.
    for rec in sorted(
        records, key=lambda r: (r.submit_started_at or r.updated_at or "", r.identity)
    ):
        ids = ids_of.get(rec.identity, [])
        kind = _input_status(rec, claim_ttl_s, now)
        by_input[kind] += 1
        if kind == "ambiguous":
            spend.maybe_usd += rec.cost_usd or 0.0
            spend.maybe_inputs += 1
        elif rec.cost_usd and rec.prediction_id:
            spend.usd += rec.cost_usd
            spend.inputs += 1
            when = rec.submitted_at or rec.submit_started_at
            if when:
                spend.first_at = min(spend.first_at or when, when)
                spend.last_at = max(spend.last_at or when, when)
                days[when[:10]] += rec.cost_usd
        base = Item(ids=ids, identity=rec.identity, prediction_id=rec.prediction_id)
        if kind == "ambiguous":
            ambiguous_runs.append(rec.owner_run)
            add("ambiguous", "", base.model_copy(update={"at": rec.submit_started_at}))
        elif kind == "timed_out":
            add("timed_out", "", base.model_copy(update={"at": rec.submitted_at}))
        elif kind == "failed":
            key = LANDING if rec.phase is Phase.SUCCEEDED else (rec.error_code or "")
            add("failed", key, base.model_copy(update={"error": rec.error}))
        elif kind == "landed" and is_flagged(rec.qc):
            uri = storage.key_uri(rec.video_key) if rec.video_key else None
            add("qc", "", base.model_copy(update={"qc": rec.qc, "video_uri": uri}))
    status.inputs = len(records)
    status.inputs_by_status = dict(by_input.most_common())
    spend.usd, spend.maybe_usd = round(spend.usd, 4), round(spend.maybe_usd, 4)
    spend.by_day = {d: round(v, 4) for d, v in sorted(days.items())}
    spend.simulated = bool(runs) and all(r.simulated for r in runs if not r.dry_run)

    # Rows never paid have no record: the table says why.
    if table is not None:
        known = {r.identity for r in records}
        for row in table.itertuples(index=False):
            row_status, identity = str(row.status), row.input_identity
            if isinstance(identity, str) and identity in known:
                continue
            error = row.error if isinstance(row.error, str) else None  # NA: no error
            item = Item(ids=[str(row.id)], identity=identity if isinstance(identity, str) else None)
            item.error = error
            if row_status == RowStatus.NOT_SUBMITTED:
                add("not_submitted", _not_submitted_reason(error), item, 1)
            elif row_status == RowStatus.REJECTED:
                add("rejected", "", item, 1)
            elif row_status in _TABLE_ONLY:
                add(_TABLE_ONLY[row_status], "", item, 1)

    for (kind, key), group in groups.items():
        if kind == "ambiguous":
            group.command = commands.resubmit(ambiguous_runs)
        elif (kind == "timed_out" or (kind == "failed" and key in (NO_OUTPUT, LANDING))) or (
            kind == "not_submitted" and key not in ("another_run",)
        ):
            group.command = commands.rerun(new_budget=key == "budget")
    status.needs_person = sorted(
        groups.values(), key=lambda g: (KINDS.index(g.kind), -g.rows, g.key)
    )
    return status


# Rows whose input has no record (an error before its first write): the table tells.
_TABLE_ONLY: dict[str, GroupKind] = {
    RowStatus.FAILED: "failed",
    RowStatus.TIMED_OUT: "timed_out",
    RowStatus.AMBIGUOUS: "ambiguous",
}


def _input_status(rec: InputRecord, claim_ttl_s: float, now: datetime | None) -> str:
    phase = rec.phase
    if phase is Phase.LANDED:
        return "landed"
    if phase in (Phase.FAILED, Phase.SUCCEEDED):
        return "failed"
    if phase in (Phase.SUBMITTED, Phase.TIMED_OUT):
        return "timed_out" if rec.prediction_id else "ambiguous"
    if phase is Phase.SUBMITTING and claim_is_live(rec, ttl_s=claim_ttl_s, now=now):
        return "in_flight"
    return "ambiguous"


def _run_line(s: RunSummary) -> RunLine:
    return RunLine(
        run_id=s.run_id,
        source=s.source,
        rows=s.rows,
        counts={k: v for k, v in s.counts.items() if v},
        spent_usd=s.spent_usd,
        elapsed_s=s.elapsed_s,
        simulated=s.simulated,
        dry_run=s.dry_run,
        stop_reason=s.stop_reason,
        qc_flagged=len(s.qc_flagged),
    )


_NOT_SUBMITTED_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("budget", ("budget",)),
    ("balance", ("balance", "top up", "quota")),
    ("stopped", ("stopped by", "stopped while", "cancellation")),
    ("rate_limited", ("rate limited",)),
    ("another_run", ("another run",)),
    ("key", ("api key", "user-agent", "block", "region")),
    ("model", ("model",)),
    ("not_processed", ("not processed",)),
)


def _not_submitted_reason(error: str | None) -> str:
    text = (error or "").lower()
    for reason, words in _NOT_SUBMITTED_REASONS:
        if any(w in text for w in words):
            return reason
    return "other"


def _advice(kind: GroupKind, key: str) -> tuple[str, str]:
    """(title, what to do) of a group."""
    if kind == "ambiguous":
        return (
            "ambiguous: a generate answer was lost, a paid job may exist",
            "look the submit time up in the Atlas Cloud console; if no job was made there "
            "(or you want another anyway), resubmit: it pays again for these inputs",
        )
    if kind == "timed_out":
        return (
            "timed_out: paid, not finished when the run ended; the prediction ids are kept",
            "rerun the same command: it polls these ids and pays nothing",
        )
    if kind == "failed":
        failed = {
            MODERATION_CODE: (
                "failed, error 1039: refused by content moderation",
                "change the picture or the prompt (the same input is never retried)",
            ),
            NO_OUTPUT: (
                "failed, no_output: the provider said done but gave no video",
                "rerun: it polls the same ids again and pays nothing",
            ),
            PURGED: (
                "failed, purged: the provider no longer knows these paid predictions",
                "look the prediction ids up in the Atlas Cloud console (never resubmitted on "
                "our own)",
            ),
            LANDING: (
                "failed, landing: paid and done, but the video did not reach DEST",
                "rerun within 14 days of completion: it lands without paying",
            ),
        }
        if key in failed:
            return failed[key]
        code = f", error {key}" if key else ""
        return (
            f"failed{code}: the provider ended these predictions as failed",
            "read each error; the same input is never retried: change the picture or the "
            "prompt to try again",
        )
    if kind == "not_submitted":
        todo = {
            "budget": "raise --budget-usd (budget_usd) and rerun",
            "balance": "top up the Atlas Cloud balance and rerun",
            "stopped": "rerun the same command to go on",
            "rate_limited": "rerun, with a lower --concurrency if it keeps happening",
            "another_run": "another run was submitting them: rerun once it has ended",
            "key": "fix the key or the block (see the error; `i2v doctor` checks it) and rerun",
            "model": "fix the model option (`i2v doctor` checks it) and rerun",
            "not_processed": "rerun: nothing was paid for them",
        }.get(key, "read the error and rerun")
        return f"not_submitted ({key.replace('_', ' ')}): never paid", todo
    if kind == "rejected":
        return "rejected: the row failed a check", "fix each row (see its error) and rerun"
    return (
        "quality check: landed and paid, but the video looks broken",
        "look at each video; for another one change its prompt or picture (a rerun of the "
        "same input keeps this video and pays nothing)",
    )


class _Commands:
    """The exact commands to rerun or resubmit, from the runs' recorded command lines."""

    def __init__(
        self,
        dest: str,
        runs: Sequence[RunSummary],
        summary_of: Callable[[str], RunSummary | None] | None,
    ) -> None:
        self.dest = dest
        self.runs = list(runs)  # newest first
        self.summary_of = summary_of
        self._by_id = {r.run_id: r for r in runs}

    def _summary(self, run_id: str | None) -> RunSummary | None:
        if not run_id:
            return None
        if run_id not in self._by_id and self.summary_of is not None:
            found = self.summary_of(run_id)
            if found is not None:
                self._by_id[run_id] = found
        return self._by_id.get(run_id)

    def _latest(self, wanted: Iterable[str | None] = ()) -> RunSummary | None:
        for run_id in wanted:
            found = self._summary(run_id)
            if found is not None and not found.dry_run:
                return found
        return next((r for r in self.runs if not r.dry_run), None)

    def rerun(self, *, new_budget: bool = False) -> str:
        command = self._command(self._latest(), resubmit=False)
        if not new_budget or not command.startswith("i2v run "):
            return command
        argv = shlex.split(command)
        if "--budget-usd" in argv:  # the old limit is what stopped them
            at = argv.index("--budget-usd")
            del argv[at : at + 2]
        return shlex.join([*argv, "--budget-usd", "NEW_LIMIT"])

    def resubmit(self, owner_runs: Sequence[str | None]) -> str:
        # The run that lost the answer knows the manifest; a kill -9 leaves it no
        # summary, and then the newest run's command is the best guess.
        return self._command(self._latest(dict.fromkeys(owner_runs)), resubmit=True)

    def _command(self, run: RunSummary | None, *, resubmit: bool) -> str:
        if run is not None and run.command:
            argv = [a for a in run.command if a not in ("--resubmit-ambiguous", "--dry-run")]
            return shlex.join(argv + (["--resubmit-ambiguous"] if resubmit else []))
        source = run.source if run is not None else "MANIFEST"
        if run is not None:  # a flow run: no command line; its deployment takes the same
            opts = ', "resubmit_ambiguous": true' if resubmit else ""
            return (
                f"prefect deployment run i2v-batch/batch -p source={shlex.quote(source)} "
                f"-p dest={shlex.quote(self.dest)} --params "
                f"'{{\"options\": {{...the run's options{opts}}}}}'"
            )
        argv = ["i2v", "run", source, "--dest", self.dest, "--config", "FILE"]
        return " ".join(argv + (["--resubmit-ambiguous"] if resubmit else []))


# ---------------------------------------------------------------------------- rendering


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _money(usd: float, simulated: bool) -> str:
    return f"${usd:.2f}" + (" (simulated)" if simulated else "")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none"


def _when(stamp: str | None) -> str:
    return stamp.replace("T", " ")[:19] + " UTC" if stamp else "?"


def _item_text(group: Group, item: Item) -> str:
    name = ", ".join(item.ids) if item.ids else f"input {(item.identity or '?')[:12]}"
    if group.kind == "ambiguous":
        which = f" (input {(item.identity or '?')[:12]})" if item.ids else ""
        return f"{name}: submit began {_when(item.at)}{which}"
    if group.kind == "timed_out":
        return f"{name}: prediction {item.prediction_id}"
    if group.kind == "qc":
        return f"{name}: {item.qc}  {item.video_uri or ''}".rstrip()
    if group.kind == "failed" and item.prediction_id:
        detail = f": {item.error[:120]}" if item.error and not group.key else ""
        return f"{name}: prediction {item.prediction_id}{detail}"
    return f"{name}: {item.error[:160]}" if item.error else name


def render_text(status: DestStatus) -> str:
    """The status as `i2v status` prints it: plain lines, at most 10 items a group."""
    spend = status.spent
    lines = [f"DEST {status.dest}  (read in {status.read_s:.1f} s; no API call)"]
    if status.rows is None:
        lines.append("rows: no results table yet")
    else:
        lines.append(f"rows: {status.rows} in the current table: {_counts(status.rows_by_status)}")
    lines.append(f"inputs: {status.inputs} with a record: {_counts(status.inputs_by_status)}")
    spent = f"spent: {_money(spend.usd, spend.simulated)} on {spend.inputs} paid inputs"
    if spend.first_at:
        spent += f", {_when(spend.first_at)} to {_when(spend.last_at)}"
    lines.append(spent)
    if spend.maybe_inputs:
        lines.append(
            f"  and up to {_money(spend.maybe_usd, spend.simulated)} more: "
            f"{spend.maybe_inputs} ambiguous submissions may have been paid"
        )
    if len(spend.by_day) > 1:
        lines.append("  by day: " + ", ".join(f"{d} ${v:.2f}" for d, v in spend.by_day.items()))
    if status.runs:
        shown = len(status.runs)
        lines.append(f"last runs ({shown} of {status.runs_total}, newest first):")
        for run in status.runs:
            extras = [
                f"{_money(run.spent_usd, run.simulated)}, {run.elapsed_s:.0f} s",
                *(["dry run"] if run.dry_run else []),
                *([f"stopped: {run.stop_reason}"] if run.stop_reason else []),
                *([f"{run.qc_flagged} flagged by QC"] if run.qc_flagged else []),
            ]
            lines.append(
                f"  {run.run_id}  {run.rows} rows: {_counts(run.counts)}; " + "; ".join(extras)
            )
            lines.append(f"      source {run.source}")
    if status.unreadable:
        lines.append(f"unreadable records ({len(status.unreadable)}): inspect or remove them")
        lines += [f"  {uri}" for uri in status.unreadable[:SHOWN_PER_GROUP]]
    if not status.needs_person:
        lines.append("nothing needs a person.")
        return "\n".join(lines)
    lines.append(f"needs a person ({_rows(status.needs_person_rows)}):")
    for group in status.needs_person:
        lines.append(f"  {group.title} ({_rows(group.rows)})")
        lines.append(f"    what to do: {group.what_to_do}")
        if group.command:
            lines.append(f"    command: {group.command}")
        for item in group.items[:SHOWN_PER_GROUP]:
            lines.append(f"    - {_item_text(group, item)}")
        if len(group.items) > SHOWN_PER_GROUP:
            more = len(group.items) - SHOWN_PER_GROUP
            lines.append(f"    ... and {more} more (--json lists all)")
    return "\n".join(lines)


def render_markdown(status: DestStatus) -> str:
    """The status as the i2v-status flow's markdown artifact."""
    spend = status.spent

    def cell(text: str) -> str:
        return text.replace("|", "/").replace("\n", " ")

    lines = [
        f"# i2v status of `{status.dest}`",
        "",
        f"- rows: {status.rows if status.rows is not None else 'no results table yet'}"
        + (f" ({_counts(status.rows_by_status)})" if status.rows else ""),
        f"- inputs with a record: {status.inputs} ({_counts(status.inputs_by_status)})",
        f"- spent: {_money(spend.usd, spend.simulated)} on {spend.inputs} paid inputs"
        + (f", {_when(spend.first_at)} to {_when(spend.last_at)}" if spend.first_at else ""),
    ]
    if spend.maybe_inputs:
        lines.append(
            f"- up to {_money(spend.maybe_usd, spend.simulated)} more on "
            f"{spend.maybe_inputs} ambiguous submissions"
        )
    lines.append(
        f"- needs a person: {_rows(status.needs_person_rows)}"
        if status.needs_person
        else "- **nothing needs a person**"
    )
    if status.runs:
        lines += ["", "## Last runs", "", "| run | rows | statuses | spent | time |"]
        lines.append("|---|---|---|---|---|")
        for run in status.runs:
            lines.append(
                f"| `{run.run_id}` | {run.rows} | {cell(_counts(run.counts))} | "
                f"{_money(run.spent_usd, run.simulated)} | {run.elapsed_s:.0f} s |"
            )
    for group in status.needs_person:
        lines += ["", f"## {cell(group.title)} ({_rows(group.rows)})", "", group.what_to_do]
        if group.command:
            lines += ["", "```", group.command, "```"]
        lines += [""]
        lines += [f"- {cell(_item_text(group, i))}" for i in group.items[:50]]
        if len(group.items) > 50:
            lines.append(f"- … and {len(group.items) - 50} more")
    if status.unreadable:
        lines += ["", "## Unreadable records", ""]
        lines += [f"- `{u}`" for u in status.unreadable[:50]]
    return "\n".join(lines)
