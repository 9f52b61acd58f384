"""`i2v status DEST --reconcile` against the simulator's daily usage and costs: matching
days, differing days, and what the provider's job count says of ambiguous submissions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from i2v.dest import open_storage
from i2v.models import DEFAULT_MODEL
from i2v.state import InputRecord, Phase, StateStore
from tests.helpers import options_for, run_batch, write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(300)]


def reconciled(dest: Path) -> tuple[dict[str, Any], str]:
    runner = CliRunner()
    body = json.loads(runner.invoke(app, ["status", str(dest), "--json", "--reconcile"]).stdout)
    text = runner.invoke(app, ["status", str(dest), "--reconcile"]).stdout
    return body["reconcile"], text


def test_a_matching_day_then_a_differing_one(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    rows = [{"id": f"ok{i}", "image": "astronaut.png", "prompt": f"rec {i}"} for i in range(3)]
    rows.append({"id": "mod", "image": "coffee.png", "prompt": "nsfw rec"})
    dest = tmp_path / "out"
    run_batch(write_manifest(pictures, rows), dest, options_for(simulator))
    found, text = reconciled(dest)
    [day] = found["days"]
    assert day["model"] == DEFAULT_MODEL and day["matches"], day
    assert (day["ours_jobs"], day["theirs_jobs"]) == (4, 4)
    assert day["theirs_usd"] == pytest.approx(0.84) == day["ours_charged_usd"]
    assert "cover the whole account" in text and ": matches: ours 4 jobs" in text

    # Other work on the same key: the provider counts one job more than this DEST.
    key = {"Authorization": "Bearer sk-test"}
    with httpx.Client(base_url=simulator.url, headers=key) as c:
        up = c.post(
            "/api/v1/model/uploadMedia",
            files={"file": ("a.png", (pictures / "astronaut.png").read_bytes(), "image/png")},
        )
        image = up.json()["data"]["download_url"]
        body = {"model": DEFAULT_MODEL, "image": image, "prompt": "elsewhere", "duration": 6}
        assert c.post("/api/v1/model/generateVideo", json=body).status_code == 200
    found, text = reconciled(dest)
    [day] = found["days"]
    assert not day["matches"] and day["theirs_jobs"] == 5
    assert "DIFFERS" in text and "other work on this account" in text


def _ambiguous(dest: Path, i: int) -> None:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    StateStore(open_storage(dest)).put(
        InputRecord(
            identity=f"{i:064x}",
            model=DEFAULT_MODEL,
            phase=Phase.AMBIGUOUS,
            submit_started_at=now,
            cost_usd=0.28,
            error="the answer was lost",
        )
    )


def test_the_job_count_says_whether_ambiguous_jobs_exist(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i}", "image": "astronaut.png", "prompt": f"amb {i}"} for i in range(2)]
    dest = tmp_path / "out"
    run_batch(write_manifest(pictures, rows), dest, options_for(simulator))
    _ambiguous(dest, 1)  # a lost answer whose job was never made
    found, _ = reconciled(dest)
    [day] = found["days"]
    assert (day["ours_jobs"], day["ours_maybe"], day["theirs_jobs"]) == (2, 1, 2)
    assert "made no job" in day["says"] and "--resubmit-ambiguous" in day["says"]

    # A job the provider made whose answer we lost: the count is one higher.
    key = {"Authorization": "Bearer sk-test"}
    with httpx.Client(base_url=simulator.url, headers=key) as c:
        up = c.post(
            "/api/v1/model/uploadMedia",
            files={"file": ("a.png", (pictures / "coffee.png").read_bytes(), "image/png")},
        )
        body = {
            "model": DEFAULT_MODEL,
            "image": up.json()["data"]["download_url"],
            "prompt": "lost",
            "duration": 6,
        }
        assert c.post("/api/v1/model/generateVideo", json=body).status_code == 200
    found, _ = reconciled(dest)
    [day] = found["days"]
    assert day["theirs_jobs"] == 3 and "likely exist as paid jobs" in day["says"]


def test_no_usage_endpoint_is_a_note(simulator: Any, pictures: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    run_batch(
        write_manifest(pictures, [{"id": "a", "image": "astronaut.png", "prompt": "n"}]),
        dest,
        options_for(simulator),
    )
    simulator.config.account_api_status = 404
    found, text = reconciled(dest)
    assert found["days"] == [] and "not readable" in found["note"]
    assert "nothing to compare" in text
