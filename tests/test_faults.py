"""The fault catalogue: every way a batch can go wrong, end to end.

Each test goes through the real Prefect engine (the in-process flow, or the `i2v` CLI:
in-process via CliRunner for exit codes, as a subprocess where a kill -9 is the point),
the Atlas simulator over HTTP, and moto S3 where S3 is involved. Each asserts its exact
outcome AND the two money rules (`assert_money_rules`): nothing paid twice, nothing lost.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import os
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from i2v.media import is_mp4_header, video_facts
from tests.helpers import (
    assert_money_rules,
    cli_run,
    kill_when,
    options_for,
    requests_seen,
    run_batch,
    sim_config,
    start_cli,
    state_phases,
    state_records,
    subprocess_env,
    table,
    when,
    write_manifest,
)

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(240)]

runner = CliRunner()


# ----------------------------------------------------------------------------- helpers


# -------------------------------------------------------------------- provider trouble


STORMS = ["429-on-submit", "5xx-on-polls-and-downloads", "404-while-not-visible"]


@pytest.mark.parametrize("storm", STORMS)
def test_transient_storms_still_land_everything_once(
    make_simulator: Any,
    pictures: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    storm: str,
) -> None:
    """Rate limits, server errors and not-yet-visible predictions cost retries, never
    a row and never a second payment.

    Storms start after preflight (a storm that outlasts preflight's retries ends the run
    with exit 2, before anything is paid). The 429 storm refuses every submission for
    2 s (provider cap 0, plus seeded random 429s on every call): shorter than the span
    of the client's five attempts (>= 5.6 s with jitter), so every row must get through.
    """
    from i2v.concurrency import AdaptiveLimiter

    cuts: list[int] = []
    original = AdaptiveLimiter.on_rate_limited

    def spy(self: AdaptiveLimiter) -> None:
        original(self)
        cuts.append(self.limit)

    monkeypatch.setattr(AdaptiveLimiter, "on_rate_limited", spy)
    sim = make_simulator(latency_s=0.2, seed=20240611)
    if storm == "429-on-submit":
        sim.config.max_concurrent = 0  # every generate POST answers 429 until lifted

        def storm_429() -> None:
            sim.config.rate_429 = 0.9
            time.sleep(2.0)
            sim.config.rate_429 = 0.0
            sim.config.max_concurrent = None

        when(lambda: sim.stats.generate_posts >= 1, storm_429)
    elif storm == "5xx-on-polls-and-downloads":
        when(lambda: sim.stats.generate_posts >= 1, lambda: setattr(sim.config, "rate_5xx", 0.3))
    else:
        sim.config.not_visible_s = 2.0

    rows = [{"id": f"s{i}", "image": "coffee.png", "prompt": f"push in {i}"} for i in range(4)]
    dest = tmp_path / "out"
    summary = run_batch(write_manifest(pictures, rows), dest, options_for(sim, concurrency=4))

    assert summary.exit_code == 0, summary
    assert set(table(dest)["status"]) == {"landed"}
    assert sim.stats.jobs_created == 4
    assert_money_rules(sim, dest)
    seen = sim.stats.responses_by_status
    if storm == "429-on-submit":
        assert sim.stats.generate_posts > 4, "the storm must have refused submissions"
        assert seen.get(429, 0) >= 4
        assert cuts and min(cuts) < 4, "the adaptive limiter never cut the window"
    elif storm == "5xx-on-polls-and-downloads":
        assert seen.get(500, 0) + seen.get(503, 0) > 0
    else:
        assert seen.get(404, 0) >= 1 + 4  # the preflight probe, then >= 1 per new job


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> int:
    """Same retry counts, tiny delays (client backoff, the land task's Prefect retries).

    Returns how many download attempts one landing makes before the row fails.
    """
    from i2v import client as client_module
    from i2v.retry import RetryPolicy
    from tasks import land as land_module

    fast = functools.partial(RetryPolicy, base_delay_s=0.01, max_delay_s=0.02)
    monkeypatch.setattr(client_module, "RetryPolicy", fast)
    retries = len(land_module.LAND_RETRY_DELAYS_S)
    monkeypatch.setattr(land_module, "LAND_RETRY_DELAYS_S", (0.05,) * retries)
    return RetryPolicy().max_attempts * (retries + 1)


def test_download_cut_beyond_client_retries_is_retried_by_the_land_task(
    make_simulator: Any, pictures: Path, tmp_path: Path, fast_retries: int
) -> None:
    """One cut more than the client's own attempts: the land task's per-row retries
    (on OutputError) fetch the paid video again in the same run."""
    from i2v.retry import RetryPolicy

    cuts = RetryPolicy().max_attempts + 1
    sim = make_simulator(latency_s=0.2, download_failures=cuts)
    manifest = write_manifest(pictures, [{"id": "cut", "image": "rocket.jpg", "prompt": "orbit"}])
    dest = tmp_path / "out"
    summary = run_batch(manifest, dest, options_for(sim))
    assert sim.config.download_failures == 0, "the land task never retried the download"
    assert summary.exit_code == 0, table(dest).iloc[0]["error"]
    assert is_mp4_header((dest / "videos" / "cut.mp4").read_bytes()[:12])
    assert sim.stats.jobs_created == 1
    assert_money_rules(sim, dest)


def test_download_cut_every_time_fails_resumably_and_rerun_lands_free(
    make_simulator: Any, pictures: Path, tmp_path: Path, fast_retries: int
) -> None:
    """An output URL that breaks mid-stream on every attempt: the row is failed with a
    message promising a free landing, the paid output stays recorded; once the URL
    works again the next run lands it without a new job (and without polling)."""
    sim = make_simulator(latency_s=0.2, download_failures=10 * fast_retries)
    manifest = write_manifest(pictures, [{"id": "cut", "image": "rocket.jpg", "prompt": "orbit"}])
    dest = tmp_path / "out"

    first = run_batch(manifest, dest, options_for(sim))
    row = table(dest).iloc[0]
    assert first.exit_code == 1
    assert row["status"] == "failed"
    assert "landing failed" in row["error"] and "without paying" in row["error"], row["error"]
    (record,) = state_records(dest)
    assert record["phase"] == "succeeded" and record["output_url"]
    assert record["prediction_id"] == row["prediction_id"]
    assert not (dest / "videos" / "cut.mp4").exists(), "no half video under its final name"
    assert not list((dest / ".staging").glob("*.part")), "failed attempts leave no part files"
    assert_money_rules(sim, dest)

    sim.config.download_failures = 0
    posts, polls = sim.stats.generate_posts, sim.stats.polls
    second = run_batch(manifest, dest, options_for(sim))
    assert second.exit_code == 0
    row = table(dest).iloc[0]
    assert row["status"] == "landed" and row["prediction_id"] == record["prediction_id"]
    assert is_mp4_header((dest / "videos" / "cut.mp4").read_bytes()[:12])
    assert sim.stats.jobs_created == 1 and sim.stats.generate_posts == posts
    assert sim.stats.polls <= polls + 1, "only the preflight probe: the output URL was kept"
    assert_money_rules(sim, dest)


def test_upload_the_provider_forgot_is_uploaded_again(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """Atlas keeps uploaded inputs only for a while. A later run with a new prompt for the
    same picture must not hand the provider an upload URL it has forgotten (here: the
    provider restarted on the same address and lost every upload)."""
    from i2v.simulator.server import start_simulator

    sim = make_simulator(latency_s=0.2)
    port = int(sim.url.rsplit(":", 1)[1])
    dest = tmp_path / "out"
    rows = [{"id": "first", "image": "coffee.png", "prompt": "pan left"}]
    assert run_batch(write_manifest(pictures, rows), dest, options_for(sim)).exit_code == 0
    sim.stop()

    fresh = start_simulator(port=port, latency_s=0.2)
    try:
        rows = [*rows, {"id": "second", "image": "coffee.png", "prompt": "pan right"}]
        summary = run_batch(write_manifest(pictures, rows), dest, options_for(fresh))
        second = table(dest).set_index("id").loc["second"]
        assert second["status"] == "landed", second["error"]
        assert summary.exit_code == 0
        assert fresh.stats.uploads == 1 and fresh.stats.jobs_created == 1
        assert_money_rules(fresh, dest)
    finally:
        fresh.stop()


# ----------------------------------------------------------------------------- kill -9


def test_kill_9_while_submission_answer_hangs_then_ambiguous_until_resubmit_asked(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """The CLI dies while the generate POST waits for its answer (the job exists at the
    provider). A rerun holds the input as `ambiguous` and pays nothing; a rerun with
    --resubmit-ambiguous pays exactly once more and lands."""
    sim = make_simulator(latency_s=0.2, generate_delay_s=120)
    manifest = write_manifest(pictures, [{"id": "lost", "image": "coffee.png", "prompt": "pan"}])
    dest = tmp_path / "out"
    config = sim_config(tmp_path, sim)
    proc = start_cli(
        ["run", str(manifest), "--dest", str(dest), "--config", str(config)],
        subprocess_env(tmp_path, os.environ["ATLASCLOUD_API_KEY"]),
    )
    kill_when(
        proc,
        lambda: state_phases(dest) == ["submitting"] and sim.stats.jobs_created == 1,
        "the POST to hang with the job created",
    )
    sim.config.generate_delay_s = 0.0
    assert [r["phase"] for r in state_records(dest)] == ["submitting"]

    before = requests_seen(sim)
    held = cli_run(manifest, dest, config)
    assert held.exit_code == 1, held.output
    row = table(dest).iloc[0]
    assert row["status"] == "ambiguous" and "--resubmit-ambiguous" in row["error"]
    assert requests_seen(sim) == before, "an ambiguous input calls nothing"
    assert sim.stats.jobs_created == 1
    assert_money_rules(sim, dest)

    again = cli_run(manifest, dest, config, "--resubmit-ambiguous")
    assert again.exit_code == 0, again.output
    assert table(dest).iloc[0]["status"] == "landed"
    assert sim.stats.jobs_created == 2 and sim.stats.generate_posts == 2
    assert_money_rules(sim, dest, resubmits=1)


def test_kill_9_while_landing_then_rerun_lands_without_paying(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """The CLI dies mid-download of a 150 MB video: the paid prediction stays recorded
    (its id); the rerun re-fetches it (no new job) and lands a complete, valid mp4."""
    padded = 150_000_000
    sim = make_simulator(latency_s=0.2, pad_output_to_bytes=padded)
    manifest = write_manifest(pictures, [{"id": "big", "image": "astronaut.png", "prompt": "zoom"}])
    dest = tmp_path / "out"
    config = sim_config(tmp_path, sim)
    proc = start_cli(
        ["run", str(manifest), "--dest", str(dest), "--config", str(config)],
        subprocess_env(tmp_path, os.environ["ATLASCLOUD_API_KEY"]),
    )

    def downloading() -> bool:
        return any(p.stat().st_size > 0 for p in (dest / ".staging").glob("*.part"))

    kill_when(proc, downloading, "the download to start")
    (record,) = state_records(dest)
    assert record["phase"] in ("submitted", "succeeded") and record["prediction_id"]
    assert not (dest / "videos" / "big.mp4").exists()
    assert_money_rules(sim, dest)

    posts = sim.stats.generate_posts
    rerun = cli_run(manifest, dest, config)
    assert rerun.exit_code == 0, rerun.output
    row = table(dest).iloc[0]
    assert row["status"] == "landed" and row["prediction_id"] == record["prediction_id"]
    video = dest / "videos" / "big.mp4"
    assert video.stat().st_size == padded == int(row["video_bytes"])
    assert is_mp4_header(video.read_bytes()[:12])
    facts = video_facts(video)
    assert facts.frames > 0 and facts.duration_s > 0
    assert sim.stats.jobs_created == 1 and sim.stats.generate_posts == posts
    assert_money_rules(sim, dest)


# ----------------------------------------------------------------- account and key


def test_cli_balance_runs_out_mid_batch_exits_1_and_says_so(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """402 after the first job: exit 1, the summary says top up; the rest not_submitted."""
    sim = make_simulator(latency_s=0.2, balance_jobs=1)
    rows = [{"id": f"b{i}", "image": "rocket.jpg", "prompt": f"tilt up {i}"} for i in range(3)]
    dest = tmp_path / "out"
    result = cli_run(
        write_manifest(pictures, rows), dest, sim_config(tmp_path, sim), "--concurrency", "1"
    )
    assert result.exit_code == 1, result.output
    assert "402" in result.output and "top up" in result.output
    statuses = list(table(dest)["status"])
    assert statuses.count("landed") == 1 and statuses.count("not_submitted") == 2
    assert sim.stats.responses_by_status.get(402) == 1
    assert_money_rules(sim, dest)


@pytest.mark.parametrize("problem", ["wrong_key", "unknown_model"])
def test_cli_wrong_key_or_unknown_model_exits_2_within_seconds(
    make_simulator: Any, pictures: Path, tmp_path: Path, problem: str
) -> None:
    """Nothing is uploaded or paid: at most the two free preflight requests."""
    sim = make_simulator(latency_s=0.2)
    if problem == "wrong_key":
        sim.config.api_key = "the-one-key-atlas-accepts"
    else:
        sim.config.known_models = ("minimax/hailuo-2.3/i2v-pro",)
    rows = [{"image": "coffee.png", "prompt": f"pan {i}"} for i in range(3)]
    started = time.monotonic()
    result = cli_run(write_manifest(pictures, rows), tmp_path / "out", sim_config(tmp_path, sim))
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert elapsed < 15, f"took {elapsed:.1f} s"
    expected = "ATLASCLOUD_API_KEY" if problem == "wrong_key" else "minimax/hailuo-2.3/i2v-standard"
    assert expected in result.stderr, result.stderr
    assert requests_seen(sim) <= 2
    assert sim.stats.uploads == 0 and sim.stats.generate_posts == 0


# --------------------------------------------------------------------------- bad input


def test_bad_rows_get_specific_messages_and_good_rows_land(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """A manifest saved by Excel (BOM, quoted commas, an extra column) mixing good rows
    with every bad picture the provider would refuse: each bad row gets its own message,
    nothing of it is uploaded or paid, the good rows land.

    (Missing file, text as .png, too small, too wide, duration 7 and a 2001-char prompt
    are in tests/test_batch_flow.py::mixed_manifest.)
    """
    sim = make_simulator(latency_s=0.2)
    good = (pictures / "astronaut.png").read_bytes()
    (pictures / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (640, 480), (200, 10, 10)).save(pictures / "anim.gif")
    Image.new("RGB", (640, 480), (10, 200, 10)).save(pictures / "photo.jpg", format="WEBP")
    (pictures / "empty.png").write_bytes(b"")
    noise = Image.frombytes("RGB", (3000, 2500), os.urandom(3000 * 2500 * 3))
    noise.save(pictures / "huge.png", compress_level=0)
    assert (pictures / "huge.png").stat().st_size > 20 * 1024 * 1024

    prompt = "pan left, then zoom in, slowly"
    rows = [
        ("good", "astronaut.png", prompt, "6", "Excel, with commas"),
        ("twin", "coffee.png", "tilt up", "", "first twin"),
        ("twin", "rocket.jpg", "tilt down", "", "second twin"),
        ("truncated", "truncated.png", "x", "6", ""),
        ("gif", "anim.gif", "x", "6", ""),
        ("webp", "photo.jpg", "x", "6", ""),
        ("empty", "empty.png", "x", "6", ""),
        ("huge", "huge.png", "x", "6", ""),
        ("six", "rocket.jpg", "x", "six", ""),
    ]
    manifest = pictures / "excel.csv"
    with manifest.open("w", newline="", encoding="utf-8-sig") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "prompt", "duration", "note"])
        writer.writerows(rows)
    raw = manifest.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and f'"{prompt}"'.encode() in raw

    dest = tmp_path / "out"
    summary = run_batch(manifest, dest, options_for(sim))
    result = table(dest).set_index("line")
    assert list(result["id"]) == [r[0] for r in rows]
    expected = {
        4: "duplicate id 'twin' (first used on line 3)",
        5: "PNG file is damaged or truncated",
        6: "GIF is not accepted; use JPEG or PNG",
        7: "WEBP is not accepted; use JPEG or PNG",
        8: "the file is empty (0 bytes)",
        9: "the limit is 20971520 bytes (20 MB)",
        10: "duration 'six' is not a number; use 6 or 10",
    }
    for line, words in expected.items():
        row = result.loc[line]
        assert row["status"] == "rejected", (line, row["status"], row["error"])
        assert words in row["error"], (line, row["error"])
        assert pd.isna(row["prediction_id"]) and pd.isna(row["video_uri"])
    for line in (5, 6, 7, 8, 9):
        assert rows[line - 2][1] in str(result.loc[line, "error"]), "the message names the file"
    assert result.loc[2, "status"] == "landed" and result.loc[3, "status"] == "landed"
    assert result.loc[2, "prompt"] == prompt and result.loc[2, "note"] == "Excel, with commas"
    assert result.loc[3, "note"] == "first twin"
    assert (dest / "videos" / "good.mp4").is_file() and (dest / "videos" / "twin.mp4").is_file()
    assert prompt in {job.prompt for job in sim.simulator.jobs.values()}
    assert summary.exit_code == 1
    assert sim.stats.uploads == 2 and sim.stats.jobs_created == 2
    assert_money_rules(sim, dest)


BAD_MANIFESTS = {
    "empty-file": ("", "is empty"),
    "header-only": ("id,image,prompt\n", "has a header but no data rows"),
    "no-image-column": ("id,picture,prompt\na,astronaut.png,pan\n", "has no 'image' column"),
    "does-not-exist": (None, "manifest not found"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_cli_bad_manifest_exits_2_before_any_request(
    make_simulator: Any, pictures: Path, tmp_path: Path, case: str
) -> None:
    """A manifest that cannot be used stops the run on stderr with exit 2, and the
    provider sees not a single request."""
    sim = make_simulator(latency_s=0.2)
    content, words = BAD_MANIFESTS[case]
    manifest = pictures / f"{case}.csv"
    if content is not None:
        manifest.write_text(content, encoding="utf-8")
    dest = tmp_path / "out"
    result = cli_run(manifest, dest, sim_config(tmp_path, sim))
    assert result.exit_code == 2, result.output
    assert words in result.stderr and manifest.name in result.stderr, result.stderr
    assert requests_seen(sim) == 0
    assert not (dest / "results.parquet").exists()


def test_missing_s3_object_rejects_only_its_row(
    make_simulator: Any, pictures: Path, tmp_path: Path, s3_bucket: str
) -> None:
    """A manifest on S3 naming an object that does not exist: that row is rejected with
    the object's URI, the other lands."""
    sim = make_simulator(latency_s=0.2)
    s3 = boto3.client("s3")
    s3.upload_file(str(pictures / "coffee.png"), s3_bucket, "in/pics/coffee.png")
    body = "id,image,prompt\nthere,pics/coffee.png,pan\ngone,pics/vanished.png,pan\n"
    s3.put_object(Bucket=s3_bucket, Key="in/manifest.csv", Body=body.encode())
    dest = tmp_path / "out"
    summary = run_batch(f"s3://{s3_bucket}/in/manifest.csv", dest, options_for(sim))
    result = table(dest).set_index("id")
    assert result.loc["there", "status"] == "landed"
    assert result.loc["gone", "status"] == "rejected"
    assert f"s3://{s3_bucket}/in/pics/vanished.png" in str(result.loc["gone", "error"])
    assert summary.exit_code == 1 and sim.stats.jobs_created == 1
    assert_money_rules(sim, dest)


# ---------------------------------------------------------------------------- security


def test_only_pictures_are_ever_uploaded(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """Files that are not pictures, whatever their names say, never leave the machine."""
    sim = make_simulator(latency_s=0.2)
    (pictures / "notes.png").write_text("meeting notes: nothing to see")
    (pictures / "report.jpg").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    (pictures / "page.jpeg").write_text("<!doctype html><title>not a photo</title>")
    rows = [
        {"id": name.split(".")[0], "image": name, "prompt": "pan"}
        for name in ("notes.png", "report.jpg", "page.jpeg")
    ]
    dest = tmp_path / "out"
    summary = run_batch(write_manifest(pictures, rows), dest, options_for(sim))
    result = table(dest)
    assert set(result["status"]) == {"rejected"}
    assert all("not a picture" in e for e in result["error"]), list(result["error"])
    assert summary.exit_code == 1
    assert sim.stats.uploads == 0 and requests_seen(sim) == 0


def test_paths_outside_the_manifest_folder_need_allow_outside_base(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """`../x.jpg` and a symlink leading out of the folder are refused by default and
    allowed with `allow_outside_base: true`; the good row is never paid twice."""
    sim = make_simulator(latency_s=0.2)
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes((pictures / "rocket.jpg").read_bytes())
    (pictures / "link.jpg").symlink_to(outside)
    manifest = write_manifest(
        pictures,
        [
            {"id": "inside", "image": "coffee.png", "prompt": "pan"},
            {"id": "up", "image": "../elsewhere.jpg", "prompt": "zoom in"},
            {"id": "link", "image": "link.jpg", "prompt": "zoom out"},
        ],
    )
    dest = tmp_path / "out"
    (tmp_path / "strict").mkdir()
    (tmp_path / "open").mkdir()
    refused = cli_run(manifest, dest, sim_config(tmp_path / "strict", sim))
    assert refused.exit_code == 1, refused.output
    result = table(dest).set_index("id")
    assert result.loc["inside", "status"] == "landed"
    for row_id in ("up", "link"):
        assert result.loc[row_id, "status"] == "rejected"
        error = str(result.loc[row_id, "error"])
        assert "outside the manifest's folder" in error and "allow_outside_base" in error
    assert sim.stats.uploads == 1 and sim.stats.jobs_created == 1

    allowed = cli_run(manifest, dest, sim_config(tmp_path / "open", sim, allow_outside_base=True))
    assert allowed.exit_code == 0, allowed.output
    assert set(table(dest)["status"]) == {"landed"}
    assert sim.stats.jobs_created == 3
    assert_money_rules(sim, dest)


def _secret_key() -> str:
    return f"sk-i2v-leakcheck-{uuid.uuid4().hex}"


def _leaks(key: str, text: str | bytes) -> bool:
    """Whether `text` shows the key or its random part."""
    data = text.encode() if isinstance(text, str) else text
    core = key.rsplit("-", 1)[1]
    return key.encode() in data or core[:16].encode() in data


def _files_with(key: str, root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and _leaks(key, p.read_bytes())]


def _security_manifest(pictures: Path) -> Path:
    return write_manifest(
        pictures,
        [
            {"id": "ok1", "image": "astronaut.png", "prompt": "pan right"},
            {"id": "ok2", "image": "coffee.png", "prompt": "zoom in"},
            {"id": "mod", "image": "rocket.jpg", "prompt": "something nsfw"},
            {"id": "bad", "image": "chelsea.png", "prompt": "too small"},
        ],
    )


async def _prefect_records() -> str:
    """Every flow run (parameters, state messages), task run, artifact and log line
    stored by the test server, as JSON text."""
    from prefect.client.orchestration import get_client

    chunks: list[str] = []
    async with get_client() as client:
        readers: list[Callable[..., Any]] = [
            client.read_flow_runs,
            client.read_task_runs,
            client.read_artifacts,
            client.read_logs,
        ]
        for read in readers:
            offset = 0
            while page := await read(limit=200, offset=offset):
                chunks += [item.model_dump_json() for item in page]
                offset += len(page)
    return "\n".join(chunks)


def assert_prefect_never_stored(key: str, *evidence: str) -> None:
    """The key is in nothing the Prefect test server stored (read through its API, and
    its database files); `evidence` proves the runs in question were among what we read."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    APILogHandler().flush()
    stored = asyncio.run(_prefect_records())
    for words in evidence:
        assert words in stored, f"{words!r} not found in what the Prefect server stored"
    assert not _leaks(key, stored)
    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    assert db.is_file(), db
    assert not _files_with(key, db.parent)


def test_api_key_never_leaks_from_the_cli(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """`i2v run --verbose` with a moderated row and a bad row: the key shows up nowhere:
    not on stdout/stderr, not in any file under DEST or the CLI's PREFECT_HOME, not in
    anything its Prefect server stored (logs, artifacts, flow-run parameters)."""
    key = _secret_key()
    sim = make_simulator(latency_s=0.2, api_key=key)  # proves the key was really used
    dest = tmp_path / "out"
    config = sim_config(tmp_path, sim)
    manifest = _security_manifest(pictures)
    proc = start_cli(
        [
            "run",
            str(manifest),
            "--dest",
            str(dest),
            "--config",
            str(config),
            "--verbose",
        ],
        subprocess_env(tmp_path, key),
    )
    out, errs = proc.communicate(timeout=180)
    assert proc.returncode == 1, errs.decode()[-3000:]
    assert b"submitted as prediction" in out + errs, "--verbose shows the flow's logs"
    assert not _leaks(key, out) and not _leaks(key, errs)
    statuses = table(dest).set_index("id")["status"].to_dict()
    assert statuses == {"ok1": "landed", "ok2": "landed", "mod": "failed", "bad": "rejected"}
    assert not _files_with(key, dest) and not _files_with(key, tmp_path / "prefect-home")
    assert_prefect_never_stored(key, str(manifest), "mod: failed")
    assert_money_rules(sim, dest)


def test_api_key_never_leaks_from_the_flow(
    make_simulator: Any, pictures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow, a good run then one the provider refuses: the key is in no exception,
    no file under DEST, and nothing the Prefect server stored (flow-run parameters and
    state messages, task runs, artifacts, logs, its database file)."""
    from i2v.run import RunAborted

    key = _secret_key()
    monkeypatch.setenv("ATLASCLOUD_API_KEY", key)
    sim = make_simulator(latency_s=0.2, api_key=key)
    manifest = _security_manifest(pictures)
    dest = tmp_path / "out"
    summary = run_batch(manifest, dest, options_for(sim))
    counts = {k: v for k, v in summary.counts.items() if v}
    assert counts == {"landed": 2, "failed": 1, "rejected": 1}
    assert not _leaks(key, repr(summary))

    sim.config.api_key = "a-rotated-key"  # ours is refused now: the run fails
    with pytest.raises(RunAborted) as failure:
        run_batch(manifest, tmp_path / "out2", options_for(sim))
    text = "".join(traceback.format_exception(failure.value))
    assert "ATLASCLOUD_API_KEY" in text and not _leaks(key, text)

    assert not _files_with(key, dest) and not _files_with(key, tmp_path / "out2")
    assert_prefect_never_stored(
        key, str(manifest), "submitted as prediction", "refused the API key", "i2v-results"
    )
    assert_money_rules(sim, dest)
