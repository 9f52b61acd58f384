"""The inbox flow: manifests dropped into an inbox are each processed once, across ticks,
re-uploads and runs racing each other; a failed run is retried, never recorded."""

from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from flows.inbox import InboxFailed, InboxReport, i2v_inbox
from i2v.config import BatchOptions
from i2v.dest import open_storage
from i2v.ledger import (
    Decision,
    Holder,
    Ledger,
    LedgerEntry,
    carried_history,
    decide,
    dest_for,
    held_by_another,
)
from tests.helpers import EXAMPLES
from tests.helpers import options_for as batch_options_for

PICTURES = ("astronaut.png", "coffee.png", "rocket.jpg")


# The batch tests' options, with 4 rows in flight.
options_for = functools.partial(batch_options_for, concurrency=4)


def manifest_csv(rows: list[tuple[str, str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "image", "prompt"])
    writer.writerows(rows)
    return out.getvalue().encode()


def local_inbox(
    tmp_path: Path, pictures: tuple[str, ...], rows: list[tuple[str, str, str]]
) -> Path:
    """tmp_path/inbox holding copies of the example `pictures` and m.csv with `rows`."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in pictures:
        (inbox / name).write_bytes((EXAMPLES / name).read_bytes())
    (inbox / "m.csv").write_bytes(manifest_csv(rows))
    return inbox


def tick(inbox: str, dest_root: str, options: BatchOptions) -> InboxReport:
    return asyncio.run(i2v_inbox(inbox=inbox, dest_root=dest_root, options=options))


# -------------------------------------------------------------------------- the rules


def _entry(**changes: Any) -> LedgerEntry:
    base: dict[str, Any] = {
        "name": "a.csv",
        "manifest": "s3://b/inbox/a.csv",
        "sha256": "s1",
        "status": "done",
        "flow_run_id": "run-a",
        "claimed_at": "2026-01-01T00:00:00.000Z",
        "dest": "s3://b/out/a/",
    }
    return LedgerEntry.model_validate({**base, **changes})


CLAIMED = {"status": "claimed"}


@pytest.mark.parametrize(
    ("entry", "sha", "me", "hours_later", "holder", "expected"),
    [
        (None, "s1", "run-b", 0, Holder.UNKNOWN, Decision.CLAIM),
        ({}, "s1", "run-b", 0, Holder.UNKNOWN, Decision.DONE),
        ({}, "s1", "run-b", 0, Holder.GONE, Decision.DONE),  # done stays done
        ({}, "s2", "run-b", 0, Holder.UNKNOWN, Decision.CLAIM),  # same name, new content
        (CLAIMED, "s1", "run-b", 1, Holder.UNKNOWN, Decision.CLAIMED),
        (CLAIMED, "s1", "run-b", 7, Holder.UNKNOWN, Decision.CLAIM),  # lease (6 h) expired
        (CLAIMED, "s1", "run-a", 1, Holder.UNKNOWN, Decision.CLAIM),  # our own, retried
        (CLAIMED, "s2", "run-b", 1, Holder.UNKNOWN, Decision.CLAIM),  # re-uploaded meanwhile
        # What Prefect says of the claiming run decides before the lease does.
        (CLAIMED, "s1", "run-b", 0, Holder.GONE, Decision.CLAIM),  # crashed / deleted
        (CLAIMED, "s1", "run-b", 1, Holder.LIVE, Decision.CLAIMED),
        (CLAIMED, "s1", "run-b", 7, Holder.LIVE, Decision.CLAIMED),  # a long, live run
    ],
)
def test_decide(
    entry: dict[str, Any] | None,
    sha: str,
    me: str,
    hours_later: float,
    holder: Holder,
    expected: Decision,
) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hours_later)
    found = None if entry is None else _entry(**entry)
    got = decide(found, sha, me, now=now, lease=timedelta(hours=6), holder=holder)
    assert got is expected
    # The flow asks Prefect only about a claim on this content by another run.
    asked = held_by_another(found, sha, me)
    assert asked == (
        found is not None and found.status == "claimed" and sha == "s1" and me != "run-a"
    )


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_ledger_compare_and_swap(backend: str, tmp_path: Path, request: Any) -> None:
    if backend == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        storage = open_storage(f"s3://{bucket}/results")
    else:
        storage = open_storage(tmp_path / "results")
    ledger = Ledger(storage)
    first = _entry(status="claimed", flow_run_id="run-a")
    assert ledger.create("a.csv", first)
    assert not ledger.create("a.csv", _entry(status="claimed", flow_run_id="run-b"))
    got, token = ledger.get("a.csv")
    assert got == first and token
    # Another run replaces it: our token is stale now, so our replace must fail.
    assert ledger.replace("a.csv", _entry(flow_run_id="run-b", status="claimed"), token)
    assert not ledger.replace("a.csv", _entry(flow_run_id="run-a"), token)
    assert ledger.get("a.csv")[0].flow_run_id == "run-b"  # type: ignore[union-attr]
    ledger.release("a.csv", "run-a")  # not ours: kept
    assert ledger.get("a.csv")[0] is not None
    ledger.release("a.csv", "run-b")
    assert ledger.get("a.csv") == (None, None)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_released_reclaim_restores_what_the_earlier_content_produced(
    backend: str, tmp_path: Path, request: Any
) -> None:
    if backend == "s3":
        storage = open_storage(f"s3://{request.getfixturevalue('s3_bucket')}/results")
    else:
        storage = open_storage(tmp_path / "results")
    ledger = Ledger(storage)
    done = _entry(counts={"landed": 2})
    ledger.put("a.csv", done)
    old, token = ledger.get("a.csv")
    claim = _entry(sha256="s2", status="claimed", flow_run_id="run-b", history=carried_history(old))
    assert ledger.replace("a.csv", claim, token)
    ledger.release("a.csv", "run-b")  # the new content's run failed
    assert ledger.get("a.csv")[0] == done


def test_a_damaged_entry_can_be_claimed_over(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "results")
    storage.write_bytes(Ledger.key("a.csv"), b"{half an entr")
    ledger = Ledger(storage)
    entry, token = ledger.get("a.csv")
    assert entry is None and token is not None
    assert not ledger.create("a.csv", _entry())  # something is there
    assert ledger.replace("a.csv", _entry(), token)
    assert dest_for(storage, "a.csv") == str(tmp_path / "results" / "a")


# ------------------------------------------------------------------------- the flow


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(300)
def test_two_manifests_each_processed_once_across_three_ticks(
    simulator: Any, s3_bucket: str
) -> None:
    s3 = boto3.client("s3")
    for name in PICTURES:
        s3.upload_file(str(EXAMPLES / name), s3_bucket, f"inbox/pics/{name}")
    inbox, dest_root = f"s3://{s3_bucket}/inbox/", f"s3://{s3_bucket}/results/"
    opts = options_for(simulator)
    first = manifest_csv(
        [
            ("a1", "pics/astronaut.png", "pan left"),
            ("a2", "pics/coffee.png", "zoom in"),
            ("a3", "pics/coffee.png", "zoom in"),  # a duplicate: paid once
        ]
    )
    s3.put_object(Bucket=s3_bucket, Key="inbox/first.csv", Body=first)

    one = tick(inbox, dest_root, opts)
    assert [e.name for e in one.processed] == ["first.csv"]
    assert one.processed[0].counts == {"landed": 3}
    assert simulator.stats.jobs_created == 2

    second = manifest_csv(
        [("b1", "pics/rocket.jpg", "tilt up"), ("b2", "pics/astronaut.png", "orbit")]
    )
    s3.put_object(Bucket=s3_bucket, Key="inbox/second.csv", Body=second)
    two = tick(inbox, dest_root, opts)
    assert [e.name for e in two.processed] == ["second.csv"]
    assert two.already_done == ["first.csv"]

    three = tick(inbox, dest_root, opts)
    assert three.processed == [] and three.already_done == ["first.csv", "second.csv"]

    # Each manifest once: one job per distinct input, none paid twice.
    assert simulator.stats.jobs_created == 4
    assert set(simulator.stats.submissions_per_input.values()) == {1}
    for stem, ids in (("first", ["a1", "a2", "a3"]), ("second", ["b1", "b2"])):
        body = s3.get_object(Bucket=s3_bucket, Key=f"results/{stem}/results.parquet")["Body"]
        table = pd.read_parquet(io.BytesIO(body.read()))
        assert list(table["id"]) == ids and set(table["status"]) == {"landed"}
        raw = s3.get_object(Bucket=s3_bucket, Key=f"results/_inbox/{stem}.csv.json")["Body"]
        entry = json.loads(raw.read())
        assert entry["status"] == "done" and entry["dest"] == f"{dest_root}{stem}/"
        assert entry["results_uri"] == f"{dest_root}{stem}/results.parquet"
    # Results never become manifests: nothing under results/ or inbox/pics/ was picked up.
    assert len(three.already_done) == 2


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(300)
def test_reupload_with_new_content_runs_again_same_content_does_not(
    simulator: Any, tmp_path: Path
) -> None:
    rows = [("r1", "rocket.jpg", "push in")]
    inbox = local_inbox(tmp_path, PICTURES, rows)
    opts = options_for(simulator)
    assert len(tick(str(inbox), str(tmp_path / "out"), opts).processed) == 1

    (inbox / "m.csv").write_bytes(manifest_csv(rows))  # the same bytes again
    assert tick(str(inbox), str(tmp_path / "out"), opts).already_done == ["m.csv"]

    (inbox / "m.csv").write_bytes(manifest_csv([*rows, ("r2", "coffee.png", "pan right")]))
    again = tick(str(inbox), str(tmp_path / "out"), opts)
    assert [e.name for e in again.processed] == ["m.csv"]
    assert again.processed[0].counts == {"landed": 2}
    # Only the new row was paid for; r1 was already landed in the same DEST.
    assert simulator.stats.jobs_created == 2
    entry = json.loads((tmp_path / "out" / "_inbox" / "m.csv.json").read_text())
    assert len(entry["history"]) == 1 and entry["history"][0]["counts"] == {"landed": 1}


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(300)
def test_failed_run_is_not_recorded_and_the_next_tick_retries(
    make_simulator: Any, tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=0.2, api_key="the-right-key")  # our env key is wrong
    inbox = local_inbox(tmp_path, ("astronaut.png",), [("r1", "astronaut.png", "orbit")])
    opts = options_for(sim)
    with pytest.raises(InboxFailed, match=r"m\.csv"):
        tick(str(inbox), str(tmp_path / "out"), opts)
    assert not (tmp_path / "out" / "_inbox" / "m.csv.json").exists(), "a failure was recorded"

    sim.config.api_key = None  # the key problem is fixed
    retried = tick(str(inbox), str(tmp_path / "out"), opts)
    assert [e.name for e in retried.processed] == ["m.csv"]
    assert sim.stats.jobs_created == 1


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(300)
def test_claims_by_other_runs_are_respected_until_the_lease_ends(
    simulator: Any, tmp_path: Path
) -> None:
    inbox = local_inbox(tmp_path, ("coffee.png",), [("c1", "coffee.png", "steam rises")])
    data = (inbox / "m.csv").read_bytes()
    out = open_storage(tmp_path / "out")
    live = _entry(
        name="m.csv",
        sha256=hashlib.sha256(data).hexdigest(),
        status="claimed",
        flow_run_id="another-worker",
        claimed_at=(datetime.now(UTC) - timedelta(minutes=5)).isoformat(),
    )
    assert Ledger(out).create("m.csv", live)
    opts = options_for(simulator)
    held = tick(str(inbox), str(tmp_path / "out"), opts)
    assert held.claimed_elsewhere == ["m.csv"] and simulator.stats.jobs_created == 0

    stale = live.model_copy(
        update={"claimed_at": (datetime.now(UTC) - timedelta(hours=7)).isoformat()}
    )
    Ledger(out).put("m.csv", stale)
    taken = tick(str(inbox), str(tmp_path / "out"), opts)
    assert [e.name for e in taken.processed] == ["m.csv"]
    assert simulator.stats.jobs_created == 1


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(300)
def test_claims_of_runs_that_are_gone_are_taken_over_at_the_next_tick(
    simulator: Any, tmp_path: Path
) -> None:
    """Claims held by a Crashed flow run and by a flow run id that does not exist are
    processed at once, not after the 6 h lease; a Running flow run that sends heartbeats
    keeps its claim, even one older than the lease. (A Running run gone silent is marked
    Crashed by the same rule as a fan-out's shards: tests/test_lost_worker.py.)"""
    from uuid import uuid4

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.states import Crashed, Running

    @flow(name="inbox-claimer")
    def claimer() -> None:
        """Only a name for flow runs made through the API."""

    with get_client(sync_client=True) as client:
        crashed = client.create_flow_run(claimer, state=Running())
        client.set_flow_run_state(crashed.id, Crashed(message="its machine died"))
        live = client.create_flow_run(claimer, state=Running())
    beat = {"prefect.resource.id": f"prefect.flow-run.{live.id}"}
    emit_event("prefect.flow-run.heartbeat", resource=beat)
    wanted = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[beat["prefect.resource.id"]]),
    )
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while not client.read_events(filter=wanted, limit=10).events:  # written async
            assert time.monotonic() < deadline, "the heartbeat never reached the server"
            time.sleep(0.5)

    now = datetime.now(UTC)
    holders = {
        "crashed.csv": (str(crashed.id), now - timedelta(minutes=5)),
        "ghost.csv": (str(uuid4()), now - timedelta(minutes=5)),
        "live.csv": (str(live.id), now - timedelta(hours=7)),  # past the lease, alive
    }
    inbox = local_inbox(tmp_path, PICTURES, [])
    (inbox / "m.csv").unlink()
    out = open_storage(tmp_path / "out")
    for i, (name, (holder, claimed_at)) in enumerate(holders.items()):
        data = manifest_csv([(f"m{i}", PICTURES[i], f"slow orbit, take {i}")])
        (inbox / name).write_bytes(data)
        claim = _entry(
            name=name,
            sha256=hashlib.sha256(data).hexdigest(),
            status="claimed",
            flow_run_id=holder,
            claimed_at=claimed_at.isoformat(),
            heartbeat_s=30,
        )
        assert Ledger(out).create(name, claim)

    report = tick(str(inbox), str(tmp_path / "out"), options_for(simulator))
    assert sorted(e.name for e in report.processed) == ["crashed.csv", "ghost.csv"]
    assert sorted(report.taken_over) == ["crashed.csv", "ghost.csv"]
    assert report.claimed_elsewhere == ["live.csv"]
    assert simulator.stats.jobs_created == 2
    with get_client(sync_client=True) as client:
        alive = client.read_flow_run(live.id).state
        assert alive is not None and alive.is_running(), "a live run was marked"
    entry = json.loads((tmp_path / "out" / "_inbox" / "ghost.csv.json").read_text())
    assert entry["status"] == "done" and entry["heartbeat_s"] >= 30
    held = json.loads((tmp_path / "out" / "_inbox" / "live.csv.json").read_text())
    assert held["status"] == "claimed" and held["flow_run_id"] == str(live.id)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(300)
def test_two_runs_ticking_together_process_each_manifest_once(
    simulator: Any, s3_bucket: str
) -> None:
    s3 = boto3.client("s3")
    for name in PICTURES:
        s3.upload_file(str(EXAMPLES / name), s3_bucket, f"inbox/{name}")
    for i in range(3):
        body = manifest_csv([(f"m{i}", PICTURES[i], f"slow orbit {i}")])
        s3.put_object(Bucket=s3_bucket, Key=f"inbox/m{i}.csv", Body=body)
    inbox, dest_root = f"s3://{s3_bucket}/inbox/", f"s3://{s3_bucket}/results/"
    opts = options_for(simulator)

    async def both() -> list[InboxReport]:
        return list(
            await asyncio.gather(
                i2v_inbox(inbox=inbox, dest_root=dest_root, options=opts),
                i2v_inbox(inbox=inbox, dest_root=dest_root, options=opts),
            )
        )

    reports = asyncio.run(both())
    processed = [e.name for r in reports for e in r.processed]
    assert sorted(processed) == ["m0.csv", "m1.csv", "m2.csv"], reports
    for report in reports:  # each run saw every manifest: did it, or saw it taken/done
        mine = {e.name for e in report.processed}
        others = set(report.claimed_elsewhere) | set(report.already_done)
        assert mine | others == {"m0.csv", "m1.csv", "m2.csv"} and not mine & others
    assert simulator.stats.jobs_created == 3
    assert set(simulator.stats.submissions_per_input.values()) == {1}


@pytest.mark.usefixtures("prefect_harness")
def test_unset_deployment_parameters_do_nothing_and_say_what_to_set(tmp_path: Path) -> None:
    """A schedule deployed before its configuration ticks quietly (tests/test_ui.py checks
    the tick's state and its one log line)."""
    report = asyncio.run(i2v_inbox(inbox="", dest_root=str(tmp_path)))
    assert report.not_configured and "set inbox " in report.not_configured
    assert "I2V_INBOX" in report.not_configured and not report.processed
    report = asyncio.run(i2v_inbox(inbox=str(tmp_path), dest_root="{{ $I2V_DEST_ROOT }}"))
    assert report.not_configured and "set dest_root " in report.not_configured
    assert not list(tmp_path.iterdir()), "an unconfigured tick writes nothing"


@pytest.mark.usefixtures("prefect_harness")
def test_parquet_and_jsonl_manifests_are_picked_up(simulator: Any, tmp_path: Path) -> None:
    inbox = local_inbox(tmp_path, PICTURES, [("c1", "astronaut.png", "pan left")])
    (inbox / "m.csv").unlink()
    rows = [{"id": "p1", "image": "rocket.jpg", "prompt": "tilt up", "take": 7}]
    pd.DataFrame(rows).to_parquet(inbox / "t.parquet")
    (inbox / "j.jsonl").write_text(json.dumps({"id": "j1", "image": "coffee.png"}) + "\n")
    root = tmp_path / "results"
    report = tick(str(inbox), str(root), options_for(simulator))
    assert sorted(e.name for e in report.processed) == ["j.jsonl", "t.parquet"]
    parquet = pd.read_parquet(root / "t" / "results.parquet")
    assert list(parquet["status"]) == ["landed"] and list(parquet["take"]) == [7]
    assert list(pd.read_parquet(root / "j" / "results.parquet")["id"]) == ["j1"]
