"""Claims: two runs sharing a DEST never both pay for one input.

Every write of an input's record is a compare-and-swap against the version this run last
saw. The first write of a submission (the write-ahead `submitting` record) is the claim:
it is created only if absent, or swapped in only over the exact record this run decided
on. The run that loses a claim pays nothing and follows the winner's record instead.
Later writes by the winner (the prediction id, the landing) and by followers (the same
prediction landed twice is the same video) swap over whatever is there, unless DEST
already holds something further along for the same prediction.
"""

from __future__ import annotations

import threading

from i2v.state import InputRecord, Phase, StateStore

# How far along a record is, for the same prediction: a later write never goes back.
_RANK = {
    Phase.SUBMITTING: 0,
    Phase.AMBIGUOUS: 1,
    Phase.SUBMITTED: 2,
    Phase.TIMED_OUT: 2,
    Phase.SUCCEEDED: 3,
    Phase.FAILED: 3,
    Phase.LANDED: 4,
}
_CAS_ATTEMPTS = 8


class Records:
    """One run's reads and writes of the durable records, with the versions it saw.

    Thread-safe: the pipeline calls it from worker threads.
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._versions: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def _seen(self, identity: str, version: str | None) -> None:
        with self._lock:
            self._versions[identity] = version

    def _version(self, identity: str) -> str | None:
        with self._lock:
            return self._versions.get(identity)

    def get(self, identity: str) -> InputRecord | None:
        """The current record (None: never claimed), remembering its version."""
        record, version = self.store.get_versioned(identity)
        self._seen(identity, version)
        return record

    def _write(self, record: InputRecord) -> bool:
        """Compare-and-swap `record` over the version last seen; True if it was written."""
        new = self.store.replace(record, self._version(record.identity))
        if new is None:
            return False
        self._seen(record.identity, new)
        return True

    def claim(self, intent: InputRecord) -> InputRecord | None:
        """Write the `submitting` intent only over the record this run last saw.

        Returns None when this run holds the claim (it may POST now), else the record
        another run wrote meanwhile (do not POST: follow it).
        """
        for _ in range(_CAS_ATTEMPTS):
            if self._write(intent):
                return None
            current = self.get(intent.identity)
            if current is not None:
                return current
            # Withdrawn between our write and this read: nobody holds it, try again.
        raise RuntimeError(f"state record of {intent.identity[:12]} keeps changing")

    def put(self, record: InputRecord) -> InputRecord:
        """Advance the record; returns what DEST holds now (ours, or one further along
        for the same prediction written by another run)."""
        for _ in range(_CAS_ATTEMPTS):
            if self._write(record):
                return record
            current = self.get(record.identity)
            if (
                current is not None
                and current.prediction_id == record.prediction_id
                and _RANK[current.phase] > _RANK[record.phase]
            ):
                return current
        raise RuntimeError(f"state record of {record.identity[:12]} keeps changing")

    def withdraw(self, intent: InputRecord, before: InputRecord | None) -> None:
        """The POST provably created no job: put the record back as it was (or remove
        it), unless another run has written since."""
        identity = intent.identity
        if before is not None:
            self._write(before)
            return
        current, version = self.store.get_versioned(identity)
        if current is not None and version == self._version(identity):
            self.store.delete(identity)
            self._seen(identity, None)
