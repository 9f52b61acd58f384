"""What `i2v status` says about a DEST, as data: the groups of what needs a person, the
runs, the money spent. Built by `i2v.needs_person`, shown by `i2v.status_render`, and
printed as JSON by `i2v status --json` (`DestStatus.as_json`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from i2v.spend import Bill

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
    usd: float = 0.0  # videos made + reservations still open (`i2v.spend`)
    inputs: int = 0
    charged_usd: float = 0.0  # videos made
    reserved_usd: float = 0.0  # submitted, not finished
    reserved_inputs: int = 0
    refunded_usd: float = 0.0  # failed at the provider: given back, not spent
    refunded_inputs: int = 0
    maybe_usd: float = 0.0  # ambiguous submissions: a paid job may exist
    maybe_inputs: int = 0
    simulated: bool = False  # every run summary says the provider was the simulator
    first_at: str | None = None
    last_at: str | None = None
    by_day: dict[str, float] = Field(default_factory=dict)  # spent per UTC day
    days: dict[str, Bill] = Field(default_factory=dict)  # the bill per UTC day
    by_model: dict[str, Bill] = Field(default_factory=dict)
    cells: dict[str, Bill] = Field(default_factory=dict)  # "DAY MODEL" (`i2v.reconcile`)


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
