"""The quality check of landed videos: the probe on real H.264 files, the simulator's
defect triggers over real HTTP, the flags in the record, the table, the run's summary,
its artifact and the CLI; and `qc: off`."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from i2v.qc import probe_video
from i2v.simulator.outputs import corrupt_mp4
from i2v.simulator.render import STILL, render_video
from tests.helpers import (
    EXAMPLES,
    cli_run,
    options_for,
    read_artifacts,
    run_batch,
    sim_config,
    state_records,
    write_manifest,
)

pytestmark = [pytest.mark.timeout(300)]

ROCKET = (EXAMPLES / "rocket.jpg").read_bytes()


def _video(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / f"{name}.mp4"
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------ probe


def test_a_good_clip_passes_with_its_facts_and_a_handful_of_frames(tmp_path: Path) -> None:
    path = _video(tmp_path, "good", render_video(ROCKET, motion="slow_push", duration_s=6))
    facts = probe_video(path, expected_duration_s=6)
    assert facts.verdict == "ok" and facts.ok
    assert facts.duration_s == pytest.approx(6.0, abs=0.05)
    assert (facts.width, facts.fps, facts.frames) == (320, 24.0, 144)
    assert facts.height and facts.height % 2 == 0
    # Cheap: a handful of frames decoded, never the whole clip.
    assert 2 <= facts.decoded_frames <= 15 < facts.frames


@pytest.mark.parametrize(
    ("render", "expected_s", "verdict"),
    [
        ({"duration_s": 4.1}, 6, "short:4.1s"),
        ({"duration_s": 10}, 6, "long:10.0s"),
        ({"duration_s": 6}, 10, "short:6.0s"),
        ({"duration_s": 6, "motion": STILL}, 6, "frozen"),
        ({"duration_s": 4.1, "motion": STILL}, 6, "short:4.1s,frozen"),
        ({"duration_s": 6, "fps": 8}, 6, "low_fps:8"),
    ],
)
def test_each_defect_has_its_flag(
    tmp_path: Path, render: dict[str, Any], expected_s: int, verdict: str
) -> None:
    path = _video(tmp_path, "clip", render_video(ROCKET, **render))
    assert probe_video(path, expected_duration_s=expected_s).verdict == verdict


def test_every_camera_move_is_not_frozen(tmp_path: Path) -> None:
    from i2v.simulator.render import MOTIONS

    for motion in MOTIONS:
        path = _video(tmp_path, motion, render_video(ROCKET, motion=motion, duration_s=6))
        assert probe_video(path, expected_duration_s=6).verdict == "ok", motion


def test_a_corrupt_file_with_an_ftyp_box_is_undecodable(tmp_path: Path) -> None:
    from i2v.media import check_mp4_file

    good = render_video(ROCKET, duration_s=6)
    path = _video(tmp_path, "corrupt", corrupt_mp4(good))
    assert check_mp4_file(path) == len(good)  # it passes the landing's header check
    facts = probe_video(path, expected_duration_s=6)
    assert facts.verdict == "undecodable" and facts.duration_s is None
    cut = _video(tmp_path, "cut", good[: len(good) // 2])
    assert probe_video(cut, expected_duration_s=6).verdict == "undecodable"
    assert probe_video(tmp_path / "absent.mp4", expected_duration_s=6).verdict == "undecodable"


def test_no_expected_duration_checks_the_rest(tmp_path: Path) -> None:
    path = _video(tmp_path, "pro", render_video(ROCKET, duration_s=4.1))
    assert probe_video(path, expected_duration_s=None).verdict == "ok"


def test_probe_cpu_cost_per_video(tmp_path: Path) -> None:
    """The figure the README quotes: CPU per probe, over 100 probes of simulator clips."""
    paths = [
        _video(tmp_path, f"v{i}", render_video(ROCKET, motion=m, duration_s=d))
        for i, (m, d) in enumerate([("slow_push", 6), ("pan_left", 10), ("orbit", 6)])
    ]
    started = time.process_time()
    for i in range(100):
        probe_video(paths[i % 3], expected_duration_s=6 if i % 3 != 1 else 10)
    per_video_ms = (time.process_time() - started) * 1000 / 100
    print(f"\nQC CPU per video: {per_video_ms:.1f} ms")
    assert per_video_ms < 60


# ------------------------------------------------------------------- through the flow


def _defect_rows() -> list[dict[str, str]]:
    return [
        {"id": "fine", "image": "astronaut.png", "prompt": "pan right", "duration": "6"},
        {"id": "short", "image": "rocket.jpg", "prompt": "a short clip", "duration": "6"},
        {"id": "frozen", "image": "coffee.png", "prompt": "frozen clip", "duration": "10"},
        {"id": "corrupt", "image": "rocket.jpg", "prompt": "corrupt file", "duration": "6"},
        {"id": "corrupt-2", "image": "rocket.jpg", "prompt": "corrupt file", "duration": "6"},
    ]


def _flow_artifact(run_id: str, key: str) -> Any:

    found = [
        a
        for a in read_artifacts(key=key)
        if a.key == key and str(a.flow_run_id).startswith(run_id.rsplit("-", 1)[1])
    ]
    return found[0] if found else None


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("where", ["local", "s3"])
def test_flagged_videos_stay_landed_and_are_listed(
    make_simulator: Any, pictures: Path, tmp_path: Path, where: str, request: Any
) -> None:
    sim = make_simulator(latency_s=0.2)
    manifest = write_manifest(pictures, _defect_rows())
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        dest: str = f"s3://{bucket}/qc"
    else:
        dest = str(tmp_path / "out")
    summary = run_batch(manifest, dest, options_for(sim))

    # Every video is landed and paid once: a failed check never pays or deletes.
    assert summary.exit_code == 0 and summary.counts["landed"] == 5
    assert sim.stats.jobs_created == 4 and max(sim.stats.submissions_per_input.values()) == 1
    from i2v.dest import open_storage

    storage = open_storage(dest)
    frame = pd.read_parquet(io.BytesIO(storage.read_bytes("results.parquet")))
    by_id = frame.set_index("id")
    assert dict(by_id["qc"]) == {
        "fine": "ok",
        "short": "short:4.1s",
        "frozen": "frozen",
        "corrupt": "undecodable",
        "corrupt-2": "undecodable",
    }
    assert list(frame.columns[-5:]) == [
        "video_duration_s",
        "video_width",
        "video_height",
        "video_fps",
        "qc",
    ]
    assert by_id.loc["fine", "video_duration_s"] == pytest.approx(6.0, abs=0.05)
    assert by_id.loc["frozen", "video_duration_s"] == pytest.approx(10.0, abs=0.05)
    assert by_id.loc["short", "video_duration_s"] == pytest.approx(4.1, abs=0.05)
    assert by_id.loc["fine", "video_width"] == 320 and by_id.loc["fine", "video_fps"] == 24
    assert pd.isna(by_id.loc["corrupt", "video_width"])
    for vid in by_id.index:
        assert storage.exists(f"videos/{vid}.mp4"), vid
    records = [json.loads(storage.read_bytes(k) or b"{}") for k in storage.list("_state/")]
    assert sorted(str(r["qc"]) for r in records) == sorted(
        ["ok", "short:4.1s", "frozen", "undecodable"]
    )
    assert summary.qc_flagged == [
        ("short", "short:4.1s"),
        ("frozen", "frozen"),
        ("corrupt", "undecodable"),
        ("corrupt-2", "undecodable"),
    ]
    saved = json.loads(storage.read_bytes(f"runs/{summary.run_id}/summary.json") or b"{}")
    assert saved["qc_flagged"][0] == ["short", "short:4.1s"]
    art = _flow_artifact(summary.run_id, "i2v-summary")
    assert art is not None
    assert "flagged by the quality check (4)" in art.data
    assert "| frozen | frozen |" in art.data and "| fine |" not in art.data

    # A rerun pays nothing and keeps the flags.
    jobs = sim.stats.jobs_created
    again = run_batch(manifest, dest, options_for(sim))
    assert sim.stats.jobs_created == jobs and again.qc_flagged == summary.qc_flagged


@pytest.mark.usefixtures("prefect_harness")
def test_qc_off_skips_the_check(make_simulator: Any, pictures: Path, tmp_path: Path) -> None:
    sim = make_simulator(latency_s=0.2)
    manifest = write_manifest(pictures, _defect_rows()[:2])
    dest = tmp_path / "out"
    summary = run_batch(manifest, dest, options_for(sim, qc=False))
    assert summary.exit_code == 0 and summary.qc_flagged == []
    table = pd.read_parquet(dest / "results.parquet")
    assert table["qc"].isna().all() and table["video_duration_s"].isna().all()
    assert all(r["qc"] is None for r in state_records(dest))


def test_qc_off_in_a_config_file(tmp_path: Path) -> None:
    from i2v.config import load_options

    path = tmp_path / "c.yaml"
    path.write_text("qc: off\n")
    assert load_options(path).qc is False
    assert load_options(None).qc is True


@pytest.mark.usefixtures("prefect_harness")
def test_the_cli_summary_lists_the_flagged_videos(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=0.2)
    manifest = write_manifest(pictures, _defect_rows()[:3])
    result = cli_run(manifest, tmp_path / "out", sim_config(tmp_path, sim))
    assert result.exit_code == 0, result.output
    assert "quality check: 2 landed video(s) flagged" in result.output
    assert "short: short:4.1s" in result.output and "frozen: frozen" in result.output
    assert "fine:" not in result.output
