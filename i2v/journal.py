"""Records a run could not write to DEST, kept on this machine until DEST takes them.

A run that holds a prediction id it cannot record (DEST unreachable, or refusing the
write) keeps the record here, one JSON Lines file per run under a folder per DEST:
`$I2V_JOURNAL_DIR/<sha256(DEST)[:16]>/<run-id>.jsonl` (default
`~/.local/state/i2v/journal`). The next run on this machine into the same DEST writes
them into DEST before it decides anything (`adopt`); on another machine,
`i2v status DEST --attach FILE` does the same with a copy of the file, which is
self-contained. A run holds an exclusive lock on its file while it lives, so a run
never adopts what a live run is still writing.

Each line is either a kept record ({"identity", "record", "posted", "before"}) or a
note that one was written after all ({"identity", "written": true}); a torn last line
(a crash mid-write) is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from i2v.claims import RANK, Records
from i2v.state import InputRecord, Phase

JOURNAL_ENV = "I2V_JOURNAL_DIR"
log = logging.getLogger("i2v.journal")


def journal_root() -> Path:
    """Where journals live: $I2V_JOURNAL_DIR, else $XDG_STATE_HOME/i2v/journal, else
    ~/.local/state/i2v/journal (a DEST's own machine-local bookkeeping, like a cache
    that must not be lost)."""
    if os.environ.get(JOURNAL_ENV):
        return Path(os.environ[JOURNAL_ENV]).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "i2v" / "journal"


def dest_folder(dest_uri: str, root: Path | None = None) -> Path:
    return (root or journal_root()) / hashlib.sha256(dest_uri.encode()).hexdigest()[:16]


@dataclass
class Entry:
    """One kept record: `posted` False for a claim whose POST never left (the next run
    withdraws it if it reached DEST), True for a paid record to write."""

    record: InputRecord
    posted: bool = True
    before: InputRecord | None = None


class Journal:
    """This run's journal file for one DEST; nothing is created until a record is kept."""

    def __init__(self, dest_uri: str, run_id: str, root: Path | None = None) -> None:
        self.dest_uri = dest_uri
        self.path = dest_folder(dest_uri, root) / f"{run_id}.jsonl"
        self._file: IO[str] | None = None
        self._open: set[str] = set()  # identities kept and not written since
        self._lock = threading.Lock()

    @property
    def kept(self) -> int:
        return len(self._open)

    def keep(
        self, record: InputRecord, *, posted: bool = True, before: InputRecord | None = None
    ) -> None:
        """Append `record` (fsync'd: it may be the only copy of a paid prediction id)."""
        line = {
            "dest": self.dest_uri,
            "identity": record.identity,
            "posted": posted,
            "record": record.model_dump(mode="json"),
            "before": before.model_dump(mode="json") if before is not None else None,
        }
        with self._lock:
            self._append(line)
            self._open.add(record.identity)

    def written(self, identity: str) -> None:
        """DEST took a newer record of `identity`: the kept one is no longer needed."""
        with self._lock:
            if identity in self._open:
                self._append({"identity": identity, "written": True})
                self._open.discard(identity)

    def close(self) -> None:
        """Release the file; remove it when nothing in it is still needed."""
        with self._lock:
            if self._file is None:
                return
            if not self._open:
                with contextlib.suppress(OSError):
                    self.path.unlink()
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()  # only when empty
            self._file.close()
            self._file = None

    def _append(self, line: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the run
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)  # this run is alive
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def read_journal(path: Path) -> dict[str, Entry]:
    """The records a journal file still holds, by identity (later lines win)."""
    entries: dict[str, Entry] = {}
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
            identity = str(line["identity"])
            if line.get("written"):
                entries.pop(identity, None)
                continue
            before = line.get("before")
            entries[identity] = Entry(
                record=InputRecord.model_validate(line["record"]),
                posted=bool(line.get("posted", True)),
                before=InputRecord.model_validate(before) if before else None,
            )
        except (ValueError, KeyError, TypeError, ValidationError):
            continue  # a torn line: the crash came mid-write
    return entries


def left_for(dest_uri: str, root: Path | None = None) -> list[Path]:
    """The journal files earlier runs left for this DEST on this machine."""
    folder = dest_folder(dest_uri, root)
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def _is_news(kept: InputRecord, current: InputRecord | None) -> bool:
    """Whether DEST should take the kept record over what it holds."""
    if current is None:
        return True  # the claim went missing: a paid id is never dropped
    if kept.prediction_id and current.prediction_id == kept.prediction_id:
        return RANK[current.phase] < RANK[kept.phase]
    # The claim this record grew from, still waiting for its answer.
    return (
        current.phase is Phase.SUBMITTING
        and current.owner_run == kept.owner_run
        and current.submit_started_at == kept.submit_started_at
    )


def adopt_entries(records: Records, entries: dict[str, Entry]) -> tuple[int, list[str]]:
    """Write kept records into DEST where they are news, and withdraw claims whose POST
    never left. Returns (records written, messages about entries DEST contradicts).

    StorageError when DEST does not answer: nothing is lost, the file stays."""
    written, conflicts = 0, []
    for identity, entry in entries.items():
        current = records.get(identity)
        kept = entry.record
        if not entry.posted:
            if current is not None and current.write_token == kept.write_token:
                records.withdraw(kept, entry.before)
            continue
        if _is_news(kept, current):
            records.put(kept)
            written += 1
        elif current is None or current.prediction_id != kept.prediction_id:
            conflicts.append(
                f"input {identity[:12]}: prediction {kept.prediction_id} ({kept.phase}) kept "
                f"by run {kept.owner_run}, but DEST holds "
                f"{current.prediction_id if current else 'nothing'} "
                f"({current.phase if current else '-'}); look it up in the Atlas console"
            )
    return written, conflicts


def adopt(records: Records, dest_uri: str, root: Path | None = None) -> tuple[int, list[str]]:
    """Everything earlier runs on this machine kept for this DEST, into DEST; files of
    live runs are left alone, and a file is removed once DEST has all of it.

    Returns (records written, messages about entries DEST contradicts, which stay in
    their file)."""
    written, conflicts = 0, []
    for path in left_for(dest_uri, root):
        with open(path, "r+", encoding="utf-8") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its run is alive and writes it itself
            entries = read_journal(path)
            n, problems = adopt_entries(records, entries)
            written += n
            conflicts += problems
            if problems:
                continue
            path.unlink()
    with contextlib.suppress(OSError):
        dest_folder(dest_uri, root).rmdir()
    if written or conflicts:
        log.info("journal: %d kept records written into %s", written, dest_uri)
    return written, conflicts
