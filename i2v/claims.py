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

import itertools
import os
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping

from i2v.errors import StorageError
from i2v.state import HOST, InputRecord, Phase, StateStore
from i2v.status_index import indexed

# How far along a record is, for the same prediction: a later write never goes back.
RANK = {
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

    Every write carries a token unique to it (`InputRecord.write_token`). A conditional
    write whose answer was lost is resent by the storage and refused (412: the object
    is no longer at the version it names): reading the record back tells our own write
    from another run's. Thread-safe: the pipeline calls it from worker threads; writes
    of one input are serialized.
    """

    def __init__(self, store: StateStore, writer: str | None = None) -> None:
        self.store = store
        # This run's token prefix: unique per Records (one per run), so a record whose
        # token has it was written by this run.
        self.writer = writer or f"{HOST}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self._tokens = itertools.count(1)
        self._versions: dict[str, str | None] = {}
        # Where `i2v status` keeps an index, also the record each version stands for,
        # for `latest`: deflated, ~360 B a record (its JSON is ~1.4 KB, parsed ~4.7 KB).
        self._latest: dict[str, tuple[str, bytes]] | None = {} if indexed(store.storage) else None
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(64)]

    def _seen(self, identity: str, version: str | None, record: InputRecord | None) -> None:
        kept = None
        if self._latest is not None and version is not None and record is not None:
            kept = (version, _pack(record))
        with self._lock:
            self._versions[identity] = version
            if self._latest is not None:
                if kept is not None:
                    self._latest[identity] = kept
                else:
                    self._latest.pop(identity, None)

    def latest(self) -> Mapping[str, tuple[str, bytes]]:
        """Record key -> (version, record JSON) of each record as this run last read or
        wrote it: what `i2v.status_index.refresh_index` takes. Each record is inflated
        as it is looked up, so the run's records never sit in memory as JSON all at
        once. Empty where no index is kept."""
        with self._lock:
            held = dict(self._latest or {})
        return _Latest(self.store, held)

    def _version(self, identity: str) -> str | None:
        with self._lock:
            return self._versions.get(identity)

    def mine(self, record: InputRecord | None) -> bool:
        """Whether this run wrote `record`."""
        token = record.write_token if record is not None else None
        return bool(token) and str(token).rpartition(":")[0] == self.writer

    def get(self, identity: str) -> InputRecord | None:
        """The current record (None: never claimed), remembering its version.

        Raises UnreadableRecord when it does not parse."""
        record, version = self.store.get_versioned(identity)
        self._seen(identity, version, record)
        return record

    def _swap(self, record: InputRecord) -> tuple[bool, InputRecord | None]:
        """Compare-and-swap `record` over the version last seen: (True, the record as
        written) or (False, what DEST holds instead).

        Raises StorageError when DEST does not answer, and the record is then as it
        was (a lost answer is settled by reading back before giving up)."""
        identity = record.identity
        stamped = record.model_copy(update={"write_token": f"{self.writer}:{next(self._tokens)}"})
        with self._stripes[hash(identity) % len(self._stripes)]:
            version = self._version(identity)
            for _ in range(_CAS_ATTEMPTS):
                lost: StorageError | None = None
                try:
                    new = self.store.replace(stamped, version)
                except StorageError as exc:  # no answer: the write may have landed
                    new, lost = None, exc
                if new is not None:
                    self._seen(identity, new, stamped)
                    return True, stamped
                current, now = self.store.get_versioned(identity)
                self._seen(identity, now, current)
                if current is not None and current.write_token == stamped.write_token:
                    return True, current  # ours: its answer was lost, or refused on resend
                if now == version:
                    if lost is not None:
                        raise lost  # not written: DEST holds what we saw
                    time.sleep(0.05)  # refused without a change: a conflicting write in flight
                    continue
                if self.mine(current):
                    version = now  # an earlier write of ours landed after its answer was lost
                    continue
                return False, current
        raise RuntimeError(f"state record of {identity[:12]} keeps changing")

    def claim(self, intent: InputRecord) -> InputRecord | None:
        """Write the `submitting` intent only over the record this run last saw.

        Returns None when this run holds the claim (it may POST now), else the record
        another run wrote meanwhile (do not POST: follow it).
        """
        for _ in range(_CAS_ATTEMPTS):
            ok, current = self._swap(intent)
            if ok:
                return None
            if current is not None:
                return current
            # Withdrawn between our write and this read: nobody holds it, try again.
        raise RuntimeError(f"state record of {intent.identity[:12]} keeps changing")

    def put(self, record: InputRecord) -> InputRecord:
        """Advance the record; returns what DEST holds now (ours, or one further along
        for the same prediction written by another run)."""
        for _ in range(_CAS_ATTEMPTS):
            ok, current = self._swap(record)
            if ok:
                assert current is not None
                return current
            if (
                current is not None
                and current.prediction_id == record.prediction_id
                and RANK[current.phase] > RANK[record.phase]
            ):
                return current
        raise RuntimeError(f"state record of {record.identity[:12]} keeps changing")

    def withdraw(self, intent: InputRecord, before: InputRecord | None) -> None:
        """The POST provably created no job: put the record back as it was (or remove
        it), unless another run has written since."""
        identity = intent.identity
        if before is not None:
            self._swap(before)
            return
        current, version = self.store.get_versioned(identity)
        if current is not None and (
            self.mine(current) or (version is not None and version == self._version(identity))
        ):
            self.store.delete(identity)
            self._seen(identity, None, None)


class _Latest(Mapping[str, tuple[str, bytes]]):
    """`Records.latest`: record keys over a snapshot of identity -> (version, packed)."""

    def __init__(self, store: StateStore, held: dict[str, tuple[str, bytes]]) -> None:
        self._store = store
        self._held = held

    def _identity(self, key: object) -> str | None:
        if not isinstance(key, str):
            return None
        identity = key.removeprefix(self._store.prefix).removesuffix(".json")
        return identity if self._store.key(identity) == key else None

    def __contains__(self, key: object) -> bool:  # without inflating the record
        return self._identity(key) in self._held

    def __getitem__(self, key: str) -> tuple[str, bytes]:
        identity = self._identity(key)
        if identity is None or identity not in self._held:
            raise KeyError(key)
        version, packed = self._held[identity]
        return version, _unpack(packed)

    def __iter__(self) -> Iterator[str]:
        return (self._store.key(identity) for identity in self._held)

    def __len__(self) -> int:
        return len(self._held)


# Records differ from one another mostly in their hashes, ids and times: deflated
# against a full sample record they keep about a quarter of their JSON's size.
_SAMPLE = (
    InputRecord(
        identity="0" * 64,
        model="minimax/hailuo-2.3/i2v-standard",
        picture_sha256="0" * 64,
        prompt="slow push in on the subject",
        duration=6,
        phase=Phase.LANDED,
        prediction_id="0" * 32,
        attempts=1,
        submit_started_at="2026-01-01T00:00:00.000Z",
        submitted_at="2026-01-01T00:00:00.000Z",
        completed_at="2026-01-01T00:00:00.000Z",
        predict_time_s=60.0,
        output_url="https://example.com/outputs/0.mp4",
        video_key="videos/0.mp4",
        video_sha256="0" * 64,
        video_bytes=1000000,
        video_duration_s=6.0,
        video_width=1280,
        video_height=720,
        video_fps=24.0,
        qc="ok",
        cost_usd=0.28,
        owner_run="20260101T000000Z-00000000",
        owner_host="host",
        owner_pid=1,
        updated_at="2026-01-01T00:00:00.000Z",
        history=[
            {"at": "2026-01-01T00:00:00.000Z", "phase": str(p), "run": "20260101T000000Z-00000000"}
            for p in (Phase.SUBMITTING, Phase.SUBMITTED, Phase.SUCCEEDED, Phase.LANDED)
        ],
    )
    .model_dump_json()
    .encode()
)


def _pack(record: InputRecord) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=_SAMPLE)
    return packer.compress(record.model_dump_json().encode()) + packer.flush()


def _unpack(packed: bytes) -> bytes:
    unpacker = zlib.decompressobj(-15, zdict=_SAMPLE)
    return unpacker.decompress(packed) + unpacker.flush()
