"""The index `i2v status` reads an S3 DEST with, as batch runs refresh it: real runs
(simulator over HTTP, Prefect's engine) into a moto S3 DEST, then the status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from i2v.claims import Records
from i2v.dest import open_storage
from i2v.s3_storage import S3Storage
from i2v.state import InputRecord, Phase, StateStore
from i2v.status import dest_status
from i2v.status_index import INDEX_KEY, etag, load_index, refresh_index, save_index
from i2v.status_model import DestStatus
from i2v.status_read import read_table
from tests.helpers import options_for, run_batch, write_manifest

pytestmark = [pytest.mark.timeout(300)]

VARYING = {"generated_at", "read_s", "records_read", "records_from_index"}


def same_answer(a: DestStatus, b: DestStatus) -> bool:
    return a.model_dump(exclude=VARYING) == b.model_dump(exclude=VARYING)


def _record(i: int, **changes: Any) -> InputRecord:
    return InputRecord(identity=f"{i:064x}", model="m", phase=Phase.LANDED, **changes)


@pytest.mark.usefixtures("prefect_harness")
def test_the_first_status_after_runs_reads_no_record(
    simulator: Any, pictures: Path, s3_bucket: str
) -> None:
    rows = [
        {"id": "a", "image": "astronaut.png", "prompt": "pan right"},
        {"id": "a-copy", "image": "astronaut.png", "prompt": "pan right"},
        {"id": "b", "image": "rocket.jpg", "prompt": "zoom in"},
        {"id": "c", "image": "coffee.png", "prompt": "tilt up"},
        {"id": "short", "image": "coffee.png", "prompt": "a short clip"},
        {"id": "mod", "image": "rocket.jpg", "prompt": "something nsfw"},
    ]
    dest = f"s3://{s3_bucket}/out"
    first = run_batch(write_manifest(pictures, rows), dest, options_for(simulator))
    assert first.inputs == 5
    storage = open_storage(dest)
    assert storage.exists(INDEX_KEY)  # the run wrote it: no status has run yet
    table = read_table(storage)
    identity = dict(zip(table["id"], table["input_identity"], strict=True))

    status = dest_status(storage)
    assert (status.records_read, status.records_from_index) == (0, 5)
    assert status.inputs_by_status == {"landed": 4, "failed": 1}
    assert {g.kind for g in status.needs_person} == {"failed", "qc"}
    assert same_answer(status, dest_status(storage, use_index=False))

    # A run over one new input merges it in: the first run's entries stay.
    late = [{"id": "d", "image": "astronaut.png", "prompt": "orbit"}]
    run_batch(write_manifest(pictures, late, "late.csv"), dest, options_for(simulator))
    after = dest_status(open_storage(dest))
    assert (after.records_read, after.records_from_index) == (0, 6)
    assert after.inputs_by_status == {"landed": 5, "failed": 1}
    assert same_answer(after, dest_status(storage, use_index=False))

    # A record rewritten since (another writer, a different ETag) is read again.
    store = StateStore(storage)
    record = store.get(identity["a"])
    assert record is not None and record.qc == "ok"
    store.put(record.model_copy(update={"qc": "frozen"}))
    changed = dest_status(open_storage(dest))
    assert (changed.records_read, changed.records_from_index) == (1, 5)
    (qc,) = [g for g in changed.needs_person if g.kind == "qc"]
    assert {(i.identity, i.qc) for i in qc.items} == {
        (identity["a"], "frozen"),
        (identity["short"], "short:4.1s"),
    }
    assert same_answer(changed, dest_status(storage, use_index=False))


def test_records_remember_versions_as_the_listing_gives_them(
    s3_bucket: str, tmp_path: Path
) -> None:
    storage = open_storage(f"s3://{s3_bucket}/d")
    assert isinstance(storage, S3Storage)
    records = Records(StateStore(storage))
    records.put(_record(1))
    records.get(f"{2:064x}")  # absent: nothing to index
    records.put(_record(3))
    records.put(_record(3, qc="frozen"))  # the latest write wins
    listing = storage.list_versions("_state/")
    got = {
        key: (version, InputRecord.model_validate_json(data))
        for key, (version, data) in records.latest().items()
    }
    assert set(got) == set(listing) == {f"_state/{1:064x}.json", f"_state/{3:064x}.json"}
    for key, (version, record) in got.items():
        assert version == listing[key]
        assert record == StateStore(storage).get(record.identity)
    assert got[f"_state/{3:064x}.json"][1].qc == "frozen"

    folder = Records(StateStore(open_storage(tmp_path)))
    folder.put(_record(1))
    assert folder.latest() == {}  # a folder keeps no index
    assert refresh_index(open_storage(tmp_path), {"_state/x.json": ("v", b"{}")}) == 0
    assert not (tmp_path / "_status").exists()


def test_refresh_merges_and_an_index_is_only_a_cache(s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}/d")
    one = {f"_state/{i}.json": (f'"tag{i}"', b'{"n":%d}' % i) for i in range(3)}
    assert refresh_index(storage, one) == 3
    index, version = load_index(storage)
    assert index == {f"_state/{i}.json": (f"tag{i}", b'{"n":%d}' % i) for i in range(3)}
    assert version

    # A later run's entry wins; the ones it did not touch stay.
    assert refresh_index(storage, {"_state/1.json": ('W/"new"', b'{"n":"new"}')}) == 1
    index, _ = load_index(storage)
    assert index["_state/1.json"] == ("new", b'{"n":"new"}')
    assert index["_state/0.json"] == ("tag0", b'{"n":0}') and len(index) == 3

    # Written over a version another writer replaced since: refused, nothing lost.
    assert save_index(storage, [("_state/9.json", "x", b"{}")], version) is False
    assert set(load_index(storage)[0]) == {f"_state/{i}.json" for i in range(3)}

    # A broken index reads as empty, and the next refresh replaces it.
    storage.write_bytes(INDEX_KEY, b"garbage")
    assert load_index(storage)[0] == {}
    refresh_index(storage, {"_state/0.json": one["_state/0.json"]})
    assert set(load_index(storage)[0]) == {"_state/0.json"}
    assert etag('"abc"') == etag("abc") == etag('W/"abc"') == "abc"
