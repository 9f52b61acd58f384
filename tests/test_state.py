"""StateStore's conditional writes, on a real folder and a real (moto) S3 server."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from i2v.dest import open_storage
from i2v.errors import StorageError, UnreadableRecord
from i2v.state import InputRecord, Phase, StateStore


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "local":
        return StateStore(open_storage(tmp_path / "dest"))
    bucket = request.getfixturevalue("s3_bucket")
    return StateStore(open_storage(f"s3://{bucket}/dest"))


def record(**changes: object) -> InputRecord:
    base: dict[str, object] = {"identity": "abc123", "model": "m", "phase": Phase.SUBMITTING}
    return InputRecord.model_validate({**base, **changes})


def test_create_writes_only_the_first_record(store: StateStore) -> None:
    first = record(attempts=1)
    assert store.create(first)
    assert not store.create(record(attempts=2))
    assert store.get("abc123") == first
    assert store.storage.list("_state/") == ["_state/abc123.json"]


def test_replace_swaps_only_the_version_read(store: StateStore) -> None:
    assert store.get_versioned("abc123") == (None, None)
    fresh = record()
    assert store.replace(fresh, None)  # None: create
    assert not store.replace(record(), None)  # exists now: not a create
    got, version = store.get_versioned("abc123")
    assert got == fresh and version is not None

    submitted = fresh.moved(Phase.SUBMITTED, prediction_id="p-1")
    assert store.replace(submitted, version)
    assert not store.replace(fresh.moved(Phase.AMBIGUOUS), version)  # stale: another won
    got, current = store.get_versioned("abc123")
    assert got == submitted and current not in (None, version)

    store.put(submitted.moved(Phase.SUCCEEDED))  # an unconditional put is a new version too
    assert not store.replace(submitted.moved(Phase.FAILED), current)
    assert store.get_versioned("abc123")[0] == store.get("abc123")
    assert store.get("abc123").phase is Phase.SUCCEEDED  # type: ignore[union-attr]


def test_racing_claims_have_one_winner(store: StateStore) -> None:
    store.put(record())
    seen, version = store.get_versioned("abc123")
    assert seen is not None
    barrier = threading.Barrier(10)
    wins: list[str] = []

    def claim(run: str) -> None:
        barrier.wait()
        if store.replace(seen.moved(Phase.SUBMITTING, run_id=run), version):
            wins.append(run)

    threads = [threading.Thread(target=claim, args=(f"run-{i}",)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1, wins
    final = store.get("abc123")
    assert final is not None and final.history[-1]["run"] == wins[0]


def test_a_corrupt_record_is_an_error_not_a_guess(store: StateStore) -> None:
    store.storage.write_bytes(store.key("abc123"), b"{not json")
    with pytest.raises(UnreadableRecord, match="does not parse") as info:
        store.get_versioned("abc123")
    assert info.value.uri == store.storage.key_uri(store.key("abc123"))
    assert isinstance(info.value, StorageError)
