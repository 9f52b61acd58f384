"""DEST failing around the pipeline: an S3 that drops answers, an S3 gone for a while,
a record that no longer parses.

S3 is moto behind a faulty hop (`tests/s3hop.py`) on loopback, the provider is the
simulator over real HTTP, Prefect is its real engine. Each test checks the money rules
from the simulator's side: nothing paid twice, nothing paid while claims could not be
written, every paid job landed or recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from i2v.claims import Records
from i2v.dest import open_storage
from i2v.errors import DestUnreachable
from i2v.journal import left_for, read_journal
from i2v.state import InputRecord, Phase, StateStore
from tests.helpers import options_for, read_artifacts, run_batch, when, write_manifest
from tests.s3hop import S3Hop

pytestmark = [pytest.mark.timeout(300)]


@pytest.fixture
def hop(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Hop]:
    """The faulty hop in front of moto; boto3 (AWS_ENDPOINT_URL) goes through it."""
    hop = S3Hop(s3_endpoint, seed=7).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", hop.url)
    yield hop
    hop.stop()


@pytest.fixture
def journal_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "journal"
    monkeypatch.setenv("I2V_JOURNAL_DIR", str(path))
    return path


def rows(n: int) -> list[dict[str, Any]]:
    pictures = ["coffee.png", "astronaut.png", "rocket.jpg"]  # chelsea.png is too small
    return [
        {"id": f"r{i:02d}", "image": pictures[i % 3], "prompt": f"push in {i}"} for i in range(n)
    ]


def s3_records(bucket: str, prefix: str, endpoint: str) -> list[dict[str, Any]]:
    """The DEST's records, read straight from moto (not through the hop)."""
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_state/").get("Contents", [])
    return [json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()) for o in listed]


def paid_once(sim: Any) -> None:
    per_input = sim.stats.submissions_per_input
    assert per_input and max(per_input.values()) == 1, per_input


# ---------------------------------------------------------------- claims and tokens


def _intent(identity: str, run: str) -> InputRecord:
    return InputRecord(
        identity=identity, model="m", phase=Phase.SUBMITTING, owner_run=run, attempts=1
    )


def test_a_claim_whose_answer_was_lost_is_known_as_ours(hop: S3Hop, s3_bucket: str) -> None:
    """The PUT of the claim is stored and its answer dropped; boto3 resends it and S3
    answers 412. Reading the record back shows our own token: the claim is ours."""
    store = StateStore(open_storage(f"s3://{s3_bucket}/d"))
    mine, theirs = Records(store), Records(store)
    lost = {"n": 0}

    def lose_first_claim(method: str, path: str) -> bool:
        if method == "PUT" and "/_state/" in path and lost["n"] == 0:
            lost["n"] += 1
            return True
        return False

    hop.lose = lose_first_claim
    assert mine.get("a" * 64) is None
    assert mine.claim(_intent("a" * 64, "run-1")) is None, "our own claim taken for another's"
    assert hop.stats.lost_answers == 1
    # A later write over it (the prediction id) is ours too, whatever its answer did.
    submitted = _intent("a" * 64, "run-1").moved(Phase.SUBMITTED, prediction_id="p1")
    lost["n"] = 0
    assert mine.put(submitted).prediction_id == "p1"
    # Another run that read the record before is refused, and sees ours.
    assert theirs.get("b" * 64) is None
    assert theirs.claim(_intent("b" * 64, "run-2")) is None
    held = mine.claim(_intent("b" * 64, "run-1"))
    assert held is not None and held.owner_run == "run-2"


def test_s3_that_drops_answers_lands_every_row_paying_once(
    prefect_harness: Any,
    hop: S3Hop,
    s3_bucket: str,
    s3_endpoint: str,
    make_simulator: Any,
    pictures: Path,
    journal_dir: Path,
) -> None:
    """10 % of requests answered 503 SlowDown, 5 % of writes stored and their answers
    lost: every row lands on the first run, none ambiguous, each input paid once."""
    hop.rate_503, hop.rate_lost_writes = 0.10, 0.05
    sim = make_simulator(latency_s=0.3)
    manifest = write_manifest(pictures, rows(20))
    summary = run_batch(manifest, f"s3://{s3_bucket}/out", options_for(sim, concurrency=6))
    assert summary.counts.get("landed") == 20, summary
    assert summary.exit_code == 0
    assert sim.stats.jobs_created == 20
    paid_once(sim)
    assert hop.stats.slowdowns > 0 and hop.stats.lost_answers > 0, hop.stats
    phases = {r["phase"] for r in s3_records(s3_bucket, "out", s3_endpoint)}
    assert phases == {"landed"}, phases
    assert not left_for(f"s3://{s3_bucket}/out", journal_dir)


# ------------------------------------------------------------------ DEST gone a while


def _outage_when_answers_are_due(
    hop: S3Hop, sim: Any, seconds: float, first: int
) -> dict[str, int]:
    """Cut DEST as soon as the first `first` jobs exist (their answers still due)."""
    seen: dict[str, int] = {}

    def cut() -> None:
        seen["jobs_at_cut"] = sim.stats.jobs_created
        hop.outage_for(seconds)

        def healed() -> None:
            time.sleep(seconds)
            seen["jobs_at_heal"] = sim.stats.jobs_created

        import threading

        threading.Thread(target=healed, daemon=True).start()

    when(lambda: sim.stats.jobs_created >= first, cut)
    return seen


def test_a_dest_outage_shorter_than_the_wait_is_ridden_out(
    prefect_harness: Any,
    hop: S3Hop,
    s3_bucket: str,
    s3_endpoint: str,
    make_simulator: Any,
    pictures: Path,
    journal_dir: Path,
) -> None:
    """DEST unreachable for 12 s just as six generate answers are on their way: the
    run keeps the ids, waits for DEST, and lands every row with nothing paid while
    DEST was away."""
    sim = make_simulator(latency_s=0.5, generate_delay_s=1.0)
    manifest = write_manifest(pictures, rows(12))
    seen = _outage_when_answers_are_due(hop, sim, 12.0, first=6)
    options = options_for(sim, concurrency=6, dest_wait_s=120)
    summary = run_batch(manifest, f"s3://{s3_bucket}/out", options)
    assert summary.counts.get("landed") == 12, summary
    assert seen["jobs_at_heal"] == seen["jobs_at_cut"] == 6, (
        "paid while claims could not be written"
    )
    assert sim.stats.jobs_created == 12
    paid_once(sim)
    assert hop.stats.refused > 0
    assert {r["phase"] for r in s3_records(s3_bucket, "out", s3_endpoint)} == {"landed"}
    assert not left_for(f"s3://{s3_bucket}/out", journal_dir)


def test_a_dest_outage_longer_than_the_wait_keeps_the_ids_for_the_rerun(
    prefect_harness: Any,
    hop: S3Hop,
    s3_bucket: str,
    s3_endpoint: str,
    make_simulator: Any,
    pictures: Path,
    journal_dir: Path,
) -> None:
    """DEST unreachable for longer than the run waits: the run stops with a message
    that says so and where the paid ids are; once DEST is back the same command lands
    every row, none ambiguous, none paid twice."""
    sim = make_simulator(latency_s=0.5, generate_delay_s=1.0)
    manifest = write_manifest(pictures, rows(12))
    dest = f"s3://{s3_bucket}/out"
    seen = _outage_when_answers_are_due(hop, sim, 600.0, first=6)  # until the run stops
    options = options_for(sim, concurrency=6, dest_wait_s=3)
    with pytest.raises(DestUnreachable) as stopped:
        run_batch(manifest, dest, options)
    hop.outage = False
    message = str(stopped.value)
    assert "unreachable since" in message and "6 paid rows kept in" in message, message
    assert seen["jobs_at_cut"] == 6 and sim.stats.jobs_created == 6
    [journal] = left_for(dest, journal_dir)
    assert str(journal) in message
    kept = read_journal(journal)
    paid = [e for e in kept.values() if e.posted]
    assert len(paid) == 6 and all(e.record.prediction_id for e in paid)
    # The rows that gave up waiting for their claim: withdrawn by the rerun if there.
    assert all(not e.record.prediction_id for e in kept.values() if not e.posted)
    # The ids are in the run's artifact too, with the file to attach elsewhere.
    [kept_md] = read_artifacts(key="i2v-kept")[:1]
    assert str(journal) in kept_md.data
    assert all(e.record.prediction_id in kept_md.data for e in paid)
    # In DEST the six claims still say `submitting`: without the journal, ambiguous.
    in_dest = s3_records(s3_bucket, "out", s3_endpoint)
    assert sorted(r["phase"] for r in in_dest) == ["submitting"] * 6, [
        (r["phase"], r.get("owner_run"), r.get("write_token"), r.get("updated_at")) for r in in_dest
    ]

    again = run_batch(manifest, dest, options)
    assert again.counts.get("landed") == 12, again
    assert "ambiguous" not in again.counts or again.counts["ambiguous"] == 0
    assert sim.stats.jobs_created == 12
    paid_once(sim)
    assert not left_for(dest, journal_dir), "the journal outlived its records"


# ------------------------------------------------------------- a record that breaks


def test_a_record_that_does_not_parse_is_that_rows_problem(
    prefect_harness: Any, make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """A record cut short by a sync tool: that row needs a person (named file), is not
    paid again, and the rest of the batch goes on."""
    sim = make_simulator(latency_s=0.2)
    manifest = write_manifest(pictures, rows(4))
    dest = tmp_path / "out"
    assert run_batch(manifest, dest, options_for(sim)).counts.get("landed") == 4
    broken = sorted((dest / "_state").glob("*.json"))[0]
    broken.write_text(broken.read_text()[:40])
    for video in (dest / "videos").glob("*.mp4"):
        video.unlink()  # every other row has work to do again (landing, not paying)
    again = run_batch(manifest, dest, options_for(sim))
    assert again.counts.get("landed") == 3 and again.counts.get("failed") == 1, again
    assert sim.stats.jobs_created == 4, "a row was paid again"
    frame = __import__("pandas").read_parquet(dest / "results.parquet")
    bad = frame[frame["status"] == "failed"].iloc[0]
    assert bad["error_code"] == "unreadable_record"
    assert str(broken) in bad["error"] and "does not parse" in bad["error"]

    from i2v.status import dest_status

    status = asyncio.run(asyncio.to_thread(dest_status, open_storage(str(dest))))
    assert status.unreadable == [str(broken)]


def test_status_attach_writes_a_journal_from_another_machine(
    prefect_harness: Any, make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """A run elsewhere kept a paid record it could not write: in DEST its claim still
    says `submitting` (ambiguous). `i2v status DEST --attach FILE` writes it; the
    input is no longer ambiguous and the rerun lands it without paying."""
    from typer.testing import CliRunner

    from cli.main import app
    from i2v.journal import Journal

    sim = make_simulator(latency_s=0.2)
    manifest = write_manifest(pictures, rows(3))
    dest = tmp_path / "out"
    assert run_batch(manifest, dest, options_for(sim)).counts.get("landed") == 3
    path = sorted((dest / "_state").glob("*.json"))[0]
    landed = InputRecord.model_validate_json(path.read_text()).model_copy(
        update={"owner_host": "other-machine", "submit_started_at": "2026-01-01T00:00:00.000Z"}
    )
    claim = landed.model_copy(
        update={"phase": Phase.SUBMITTING, "prediction_id": None, "video_key": None}
    )
    path.write_text(claim.model_dump_json())  # as DEST was when the other machine lost it
    (dest / str(landed.video_key)).unlink()
    elsewhere = Journal(str(dest), "other-run", root=tmp_path / "other-machine")
    elsewhere.keep(landed.model_copy(update={"phase": Phase.SUCCEEDED, "video_key": None}))
    elsewhere.close()

    ambiguous = CliRunner().invoke(app, ["status", str(dest), "--json"])
    assert json.loads(ambiguous.stdout)["inputs_by_status"].get("ambiguous") == 1
    attached = CliRunner().invoke(app, ["status", str(dest), "--attach", str(elsewhere.path)])
    assert "1 kept records written" in attached.output, attached.output
    record = InputRecord.model_validate_json(path.read_text())
    assert record.phase is Phase.SUCCEEDED and record.prediction_id == landed.prediction_id

    again = run_batch(manifest, dest, options_for(sim))
    assert again.counts.get("landed") == 3 and again.submissions == 0
    assert sim.stats.jobs_created == 3


# ------------------------------------------------------------ every DEST operation


def test_every_dest_operation_rides_out_slowdowns_and_lost_answers(
    hop: S3Hop, s3_bucket: str, tmp_path: Path
) -> None:
    """Records, videos (multipart), copies, listings and deletes through a hop that
    answers 503 SlowDown to 40 % of requests and loses 20 % of write answers."""
    from i2v.dest import is_s3

    hop.rate_503, hop.rate_lost_writes = 0.40, 0.20
    dest = open_storage(f"s3://{s3_bucket}/ops")
    assert is_s3(dest)
    video = tmp_path / "big.mp4"
    video.write_bytes(bytes(range(256)) * (20 * 4096))  # 20 MiB: three multipart parts
    for i in range(6):
        dest.write_bytes(f"_state/{i}.json", b"{}")
        assert dest.read_bytes(f"_state/{i}.json") == b"{}"
    dest.put_file("videos/a.mp4", video, content_type="video/mp4")
    dest.copy("videos/a.mp4", "videos/b.mp4")
    assert dest.size("videos/b.mp4") == video.stat().st_size
    assert dest.list("_state/") == [f"_state/{i}.json" for i in range(6)]
    dest.delete("videos/a.mp4")
    assert not dest.exists("videos/a.mp4")
    assert hop.stats.slowdowns > 5 and hop.stats.lost_answers > 1, hop.stats


def test_a_dest_that_does_not_answer_is_a_transient_error(hop: S3Hop, s3_bucket: str) -> None:
    """Connections closed: StorageUnavailable (the run waits for it), not StorageError's
    other kinds (a missing bucket, a refusal), which waiting does not mend."""
    from i2v.errors import StorageError, StorageUnavailable

    dest = open_storage(f"s3://{s3_bucket}/ops")
    dest.write_bytes("a.json", b"{}")
    hop.outage = True
    with pytest.raises(StorageUnavailable, match="cannot read"):
        dest.read_bytes("a.json")
    hop.outage = False
    missing = open_storage("s3://no-such-bucket-i2v-x/ops")
    with pytest.raises(StorageError) as info:
        missing.write_bytes("a.json", b"{}")
    assert not isinstance(info.value, StorageUnavailable)


def test_an_inbox_claim_whose_answer_was_lost_is_ours(hop: S3Hop, s3_bucket: str) -> None:
    """The inbox ledger's claim is stored and its answer lost; the resend is refused.
    Reading back shows this run's claim: the tick processes the manifest, never skips
    it as "claimed by another run" (which would hold it until the claim expired)."""
    from i2v.ledger import Ledger, LedgerEntry

    ledger = Ledger(open_storage(f"s3://{s3_bucket}/results"))
    hop.lose = lambda method, path: (
        method == "PUT" and "/_inbox/" in path and not hop.stats.lost_answers
    )
    claim = LedgerEntry(
        name="a.csv",
        manifest="s3://b/inbox/a.csv",
        sha256="s",
        status="claimed",
        flow_run_id="run-a",
        claimed_at="2026-12-03T00:00:00.000Z",
        dest="s3://b/results/a/",
    )
    assert ledger.replace("a.csv", claim, None), "our own claim taken for another run's"
    assert hop.stats.lost_answers == 1
    other = claim.model_copy(update={"flow_run_id": "run-b"})
    assert not ledger.replace("a.csv", other, None)
