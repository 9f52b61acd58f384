"""The batch flow end to end: real Prefect engine, simulator over HTTP, local and S3 DEST."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from PIL import Image

from i2v.dest import open_storage
from i2v.media import is_mp4_header
from i2v.results import COLUMNS
from i2v.state import InputRecord, Phase, StateStore
from tests.helpers import options_for, run_batch, write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(300)]

CONTRACT_COLUMNS = [
    "id",
    "image",
    "prompt",
    "duration",
    "model",
    "status",
    "error",
    "error_code",
    "prediction_id",
    "video_uri",
    "video_sha256",
    "video_bytes",
    "predict_time_s",
    "cost_usd",
    "submitted_at",
    "completed_at",
]


def stats(sim: Any) -> dict[str, Any]:
    s = sim.stats
    return {
        "uploads": s.uploads,
        "generate_posts": s.generate_posts,
        "jobs_created": s.jobs_created,
        "polls": s.polls,
        "downloads": s.downloads,
    }


def mixed_manifest(pictures: Path) -> Path:
    """Good rows, a duplicate, every kind of bad row, and a moderated prompt."""
    Image.new("RGB", (1400, 500), (20, 90, 160)).save(pictures / "wide.png")
    (pictures / "notes.png").write_bytes(b"this is not a picture at all")
    return write_manifest(
        pictures,
        [
            {
                "id": "a",
                "image": "astronaut.png",
                "prompt": "pan right",
                "duration": "6",
                "team": "red",
            },
            {
                "id": "b",
                "image": "coffee.png",
                "prompt": "zoom in",
                "duration": "10",
                "team": "blue",
            },
            {
                "id": "b-dup",
                "image": "coffee.png",
                "prompt": "zoom in",
                "duration": "10",
                "team": "blue, again",
            },
            {"id": "missing", "image": "nope.png", "prompt": "x", "duration": "6", "team": ""},
            {"id": "text", "image": "notes.png", "prompt": "x", "duration": "6", "team": ""},
            {"id": "small", "image": "chelsea.png", "prompt": "x", "duration": "6", "team": ""},
            {"id": "wide", "image": "wide.png", "prompt": "x", "duration": "6", "team": ""},
            {"id": "seven", "image": "rocket.jpg", "prompt": "x", "duration": "7", "team": ""},
            {
                "id": "long",
                "image": "rocket.jpg",
                "prompt": "p" * 2001,
                "duration": "6",
                "team": "",
            },
            {
                "id": "moderated",
                "image": "rocket.jpg",
                "prompt": "something nsfw",
                "duration": "6",
                "team": "grey",
            },
        ],
    )


def test_mixed_batch_local_dest_then_rerun_pays_nothing(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    manifest = mixed_manifest(pictures)
    dest = tmp_path / "out"
    summary = run_batch(manifest, dest, options_for(simulator))

    table = pd.read_parquet(dest / "results.parquet")
    assert list(table.columns[: len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
    assert "team" in table.columns
    by_id = table.set_index("id")
    assert by_id.loc["a", "status"] == "landed"
    assert by_id.loc["b", "status"] == "landed"
    assert by_id.loc["b-dup", "status"] == "landed"
    assert by_id.loc["b-dup", "team"] == "blue, again"
    assert by_id.loc["b-dup", "prediction_id"] == by_id.loc["b", "prediction_id"]
    assert (
        by_id.loc["b-dup", "cost_usd"] == 0.0 and by_id.loc["b", "cost_usd"] == 0.56
    )  # 10 s: twice the 6 s price
    for bad, words in {
        "missing": "not found",
        "text": "not",
        "small": "300",
        "wide": "aspect",
        "seven": "duration",
        "long": "2001",
    }.items():
        assert by_id.loc[bad, "status"] == "rejected", bad
        assert words in by_id.loc[bad, "error"], (bad, by_id.loc[bad, "error"])
    assert by_id.loc["moderated", "status"] == "failed"
    assert by_id.loc["moderated", "error_code"] == "1039"
    assert summary.exit_code == 1

    # Videos: real mp4s at videos/<id>.mp4, the duplicate a byte-identical copy.
    for vid in ("a", "b", "b-dup"):
        path = dest / "videos" / f"{vid}.mp4"
        assert is_mp4_header(path.read_bytes()[:12])
        assert by_id.loc[vid, "video_uri"] == str(path)
        assert int(by_id.loc[vid, "video_bytes"]) == path.stat().st_size
    assert (dest / "videos" / "b.mp4").read_bytes() == (dest / "videos" / "b-dup.mp4").read_bytes()
    assert not (dest / "videos" / "moderated.mp4").exists()
    csv_table = pd.read_csv(dest / "results.csv", dtype=str, keep_default_na=False)
    assert list(csv_table["id"]) == list(table["id"])
    assert list(dest.glob("runs/*/summary.json"))
    # The run's own copy is the same table; the staged files it was written from are gone.
    (run_dir,) = dest.glob("runs/*/")
    assert (run_dir / "results.csv").read_bytes() == (dest / "results.csv").read_bytes()
    assert pd.read_parquet(run_dir / "results.parquet").equals(table)
    assert not list((dest / ".staging").iterdir())

    # Exactly one job per distinct input: a, b (+dup), moderated.
    assert simulator.stats.jobs_created == 3
    assert max(simulator.stats.submissions_per_input.values()) == 1

    before = stats(simulator)
    again = run_batch(manifest, dest, options_for(simulator))
    after = stats(simulator)
    assert after == before, "a rerun of a finished batch must call nothing"
    assert again.counts == summary.counts
    assert len(list(dest.glob("runs/*/results.parquet"))) == 2


def test_reordered_and_renamed_rows_pay_nothing(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    rows = [
        {"id": "one", "image": "astronaut.png", "prompt": "tilt up"},
        {"id": "two", "image": "rocket.jpg", "prompt": "pull out"},
    ]
    dest = tmp_path / "out"
    run_batch(write_manifest(pictures, rows), dest, options_for(simulator))
    jobs = simulator.stats.jobs_created
    renamed = [{**rows[1], "id": "zwei"}, {**rows[0], "id": "eins"}]
    summary = run_batch(write_manifest(pictures, renamed, "m2.csv"), dest, options_for(simulator))
    assert summary.exit_code == 0
    assert simulator.stats.jobs_created == jobs
    assert (dest / "videos" / "zwei.mp4").read_bytes() == (dest / "videos" / "two.mp4").read_bytes()


def test_s3_source_and_dest(simulator: Any, pictures: Path, s3_bucket: str) -> None:
    s3 = boto3.client("s3")
    for name in ("astronaut.png", "rocket.jpg"):
        s3.upload_file(str(pictures / name), s3_bucket, f"in/pics/{name}")
    body = io.StringIO()
    w = csv.writer(body)
    w.writerow(["image", "prompt", "note"])
    w.writerow(["pics/astronaut.png", "pan left", "relative key"])
    w.writerow([f"s3://{s3_bucket}/in/pics/rocket.jpg", "zoom in", "absolute uri"])
    s3.put_object(Bucket=s3_bucket, Key="in/manifest.csv", Body=body.getvalue().encode())

    dest = f"s3://{s3_bucket}/out/run1"
    summary = run_batch(f"s3://{s3_bucket}/in/manifest.csv", dest, options_for(simulator))
    assert summary.exit_code == 0, summary
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/run1/")["Contents"]}
    assert "out/run1/results.parquet" in keys and "out/run1/results.csv" in keys
    videos = sorted(k for k in keys if k.startswith("out/run1/videos/"))
    assert len(videos) == 2
    head = s3.get_object(Bucket=s3_bucket, Key=videos[0], Range="bytes=0-11")["Body"].read()
    assert is_mp4_header(head)
    table = pd.read_parquet(
        io.BytesIO(s3.get_object(Bucket=s3_bucket, Key="out/run1/results.parquet")["Body"].read())
    )
    assert set(table["status"]) == {"landed"}
    assert all(u.startswith(f"s3://{s3_bucket}/out/run1/videos/") for u in table["video_uri"])
    assert list(table["note"]) == ["relative key", "absolute uri"]
    # s3 pictures go as presigned URLs: nothing uploaded to the provider.
    assert simulator.stats.uploads == 0


def test_timed_out_keeps_id_and_next_run_polls_it(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    manifest = write_manifest(
        pictures, [{"id": "slow", "image": "astronaut.png", "prompt": "never finishes, pan"}]
    )
    dest = tmp_path / "out"
    first = run_batch(manifest, dest, options_for(simulator, timeout_s=1))
    row = pd.read_parquet(dest / "results.parquet").iloc[0]
    assert row["status"] == "timed_out" and row["prediction_id"]
    assert first.exit_code == 1
    assert simulator.finish_stuck() == 1
    second = run_batch(manifest, dest, options_for(simulator))
    row2 = pd.read_parquet(dest / "results.parquet").iloc[0]
    assert second.exit_code == 0
    assert row2["status"] == "landed" and row2["prediction_id"] == row["prediction_id"]
    assert simulator.stats.jobs_created == 1


def test_lost_answer_is_ambiguous_and_not_resubmitted_unless_asked(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    manifest = write_manifest(pictures, [{"id": "lost", "image": "coffee.png", "prompt": "pan"}])
    dest = tmp_path / "out"
    simulator.config.generate_delay_s = 2.0
    opts = options_for(simulator, api={"generate_timeout_s": 0.5})
    first = run_batch(manifest, dest, opts)
    row = pd.read_parquet(dest / "results.parquet").iloc[0]
    assert row["status"] == "ambiguous"
    assert "--resubmit-ambiguous" in row["error"]
    assert simulator.stats.jobs_created == 1 and first.exit_code == 1

    simulator.config.generate_delay_s = 0.0
    run_batch(manifest, dest, options_for(simulator))
    assert pd.read_parquet(dest / "results.parquet").iloc[0]["status"] == "ambiguous"
    assert simulator.stats.jobs_created == 1, "an ambiguous input is never resubmitted silently"

    third = run_batch(manifest, dest, options_for(simulator, resubmit_ambiguous=True))
    assert third.exit_code == 0
    assert simulator.stats.jobs_created == 2  # paid once more, because the user asked


def test_crash_between_post_and_record_is_ambiguous(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """A write-ahead record with no prediction id (the process died mid-POST)."""
    manifest = write_manifest(pictures, [{"id": "w", "image": "rocket.jpg", "prompt": "orbit"}])
    dest = tmp_path / "out"
    dry = run_batch(manifest, dest, options_for(simulator, dry_run=True))
    assert dry.counts.get("submit") == 1
    # Learn the identity the flow computes, then plant a write-ahead record for it.
    from flows.batch import i2v_batch  # noqa: F401  (import check: flow module loads)
    from i2v.manifest import read_manifest
    from i2v.models import get_model
    from i2v.rows import check_rows

    opts = options_for(simulator)
    m = read_manifest(str(manifest), spec=get_model(str(opts.model)))
    plans = asyncio.run(check_rows(m, opts))
    identity = plans[0].identity
    assert identity
    store = StateStore(open_storage(dest))
    store.put(
        InputRecord(identity=identity, model=str(opts.model), phase=Phase.SUBMITTING, attempts=1)
    )
    summary = run_batch(manifest, dest, opts)
    assert summary.counts["ambiguous"] == 1
    assert simulator.stats.generate_posts == 0


def test_balance_runs_out_then_rerun_finishes(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    rows = [
        {"id": f"r{i}", "image": "astronaut.png", "prompt": f"pan left, take {i}"} for i in range(5)
    ]
    manifest = write_manifest(pictures, rows)
    dest = tmp_path / "out"
    simulator.config.balance_jobs = 2
    first = run_batch(manifest, dest, options_for(simulator, concurrency=1))
    table = pd.read_parquet(dest / "results.parquet")
    assert list(table["status"]).count("landed") == 2
    not_sub = table[table["status"] == "not_submitted"]
    assert len(not_sub) == 3
    assert all("balance" in e and "402" in e for e in not_sub["error"])
    assert first.exit_code == 1 and first.stop_reason == "balance"
    assert simulator.stats.responses_by_status.get(402) == 1, "stop at the first 402"

    simulator.config.balance_jobs = None
    second = run_batch(manifest, dest, options_for(simulator, concurrency=3))
    assert second.exit_code == 0
    assert simulator.stats.jobs_created == 5
    assert max(simulator.stats.submissions_per_input.values()) == 1


def test_budget_caps_submissions(simulator: Any, pictures: Path, tmp_path: Path) -> None:
    rows = [{"image": "coffee.png", "prompt": f"zoom in {i}"} for i in range(4)]
    dest = tmp_path / "out"
    summary = run_batch(
        write_manifest(pictures, rows), dest, options_for(simulator, budget_usd=0.6)
    )
    table = pd.read_parquet(dest / "results.parquet")
    assert list(table["status"]).count("landed") == 2
    assert all("budget" in e for e in table.loc[table["status"] == "not_submitted", "error"])
    assert summary.spent_usd == pytest.approx(0.56)
    assert simulator.stats.jobs_created == 2


def test_dry_run_calls_nothing_and_writes_nothing(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    manifest = mixed_manifest(pictures)
    dest = tmp_path / "out"
    summary = run_batch(manifest, dest, options_for(simulator, dry_run=True))
    assert summary.dry_run and summary.exit_code == 0
    assert summary.counts["rejected"] == 6
    assert summary.estimated_usd == pytest.approx(2 * 0.28 + 0.56)  # one 10 s clip: twice
    assert sum(simulator.stats.responses_by_status.values()) == 0
    assert not (dest / "results.parquet").exists()


@pytest.mark.parametrize("problem", ["wrong_key", "unknown_model"])
def test_bad_key_or_model_stops_before_paying(
    make_simulator: Any, pictures: Path, tmp_path: Path, problem: str
) -> None:
    from i2v.run import RunAborted

    sim = make_simulator(latency_s=0.2, api_key="the-right-key")
    if problem == "unknown_model":
        sim.config.api_key = None
        sim.config.known_models = ("minimax/hailuo-2.3/i2v-pro",)
    rows = [{"image": "astronaut.png", "prompt": f"pan {i}"} for i in range(6)]
    with pytest.raises(RunAborted) as info:
        run_batch(write_manifest(pictures, rows), tmp_path / "out", options_for(sim))
    message = str(info.value)
    assert ("ATLASCLOUD_API_KEY" if problem == "wrong_key" else "model") in message
    assert "sk-test" not in message
    assert sim.stats.jobs_created == 0 and sim.stats.uploads == 0
    assert sum(sim.stats.responses_by_status.values()) <= 2


def test_contract_columns_are_declared() -> None:
    assert COLUMNS[: len(CONTRACT_COLUMNS)] == CONTRACT_COLUMNS


def test_state_records_live_with_dest(simulator: Any, pictures: Path, tmp_path: Path) -> None:
    manifest = write_manifest(pictures, [{"id": "s", "image": "rocket.jpg", "prompt": "pan"}])
    dest = tmp_path / "out"
    run_batch(manifest, dest, options_for(simulator))
    records = list((dest / "_state").glob("*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["phase"] == "landed" and rec["prediction_id"]
    phases = [e["phase"] for e in rec["history"]]
    assert phases == ["submitting", "submitted", "succeeded", "landed"]
    # Another "machine": a copy of DEST resumes with nothing to do.
    other = tmp_path / "elsewhere"
    shutil.copytree(dest, other)
    before = stats(simulator)
    run_batch(manifest, other, options_for(simulator))
    assert stats(simulator) == before


def test_deleted_video_is_fetched_again_without_paying(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """A landed video removed from DEST is re-downloaded (the land cache is bypassed)."""
    manifest = write_manifest(pictures, [{"id": "v", "image": "coffee.png", "prompt": "tilt"}])
    dest = tmp_path / "out"
    run_batch(manifest, dest, options_for(simulator))
    video = dest / "videos" / "v.mp4"
    original = video.read_bytes()
    video.unlink()
    summary = run_batch(manifest, dest, options_for(simulator))
    assert summary.exit_code == 0
    assert video.read_bytes() == original
    assert simulator.stats.jobs_created == 1 and simulator.stats.downloads == 2


def test_finished_rows_let_queued_submissions_go_first_and_the_last_lands_at_once(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    from i2v.lifecycle import LAND_YIELD_S

    rows = [{"id": f"r{i}", "image": "astronaut.png", "prompt": f"pan right {i}"} for i in range(3)]
    manifest = write_manifest(pictures, rows)
    dest = tmp_path / "out"
    summary = run_batch(manifest, dest, options_for(simulator, concurrency=1))
    assert summary.counts["landed"] == 3

    def at(record: InputRecord, phase: str) -> float:
        stamp = next(h["at"] for h in record.history if h["phase"] == phase)
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    records = sorted(
        (InputRecord.model_validate_json(p.read_bytes()) for p in (dest / "_state").glob("*.json")),
        key=lambda r: r.submit_started_at or "",
    )
    for done, queued in itertools.pairwise(records):
        # With one slot, the next row is submitted before the finished one lands.
        assert at(queued, "submitting") < at(done, "landed")
        assert at(done, "landed") - at(done, "succeeded") >= LAND_YIELD_S * 0.9
    last = records[-1]
    assert at(last, "landed") - at(last, "succeeded") < LAND_YIELD_S
