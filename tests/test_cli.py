"""The `i2v` command: options, exit codes, messages, and a kill -9 in mid-batch."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.common import run_async
from cli.main import app
from tests.helpers import (
    REPO,
    TEST_API_KEY,
    Terminal,
    sim_config,
    start_cli,
    state_phases,
    write_manifest,
)

runner = CliRunner()


def test_help_documents_every_option() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--dest",
        "--config",
        "--concurrency",
        "--poll-interval",
        "--timeout",
        "--budget-usd",
        "--dry-run",
        "--resubmit-ambiguous",
    ):
        assert option in result.output, option


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_the_cli_runs_its_flow_on_uvloop() -> None:
    async def loop_kind() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_async(loop_kind()).startswith("uvloop")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    missing_dest = runner.invoke(app, ["run", "x.csv"])
    assert missing_dest.exit_code == 2
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("concurrency: lots\n")
    result = runner.invoke(
        app, ["run", "x.csv", "--dest", str(tmp_path), "--config", str(bad_config)]
    )
    assert result.exit_code == 2
    assert "concurrency" in result.output
    nofile = runner.invoke(
        app, ["run", "x.csv", "--dest", str(tmp_path), "--config", str(tmp_path / "no.yaml")]
    )
    assert nofile.exit_code == 2 and "not found" in nofile.output


@pytest.mark.usefixtures("prefect_harness")
def test_exit_codes_and_messages(
    simulator: Any, pictures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = sim_config(tmp_path, simulator)
    good = write_manifest(pictures, [{"id": "g", "image": "rocket.jpg", "prompt": "pan left"}])
    dest = tmp_path / "out"
    ok = runner.invoke(app, ["run", str(good), "--dest", str(dest), "--config", str(config)])
    assert ok.exit_code == 0, ok.output
    assert "landed" in ok.output and "results.parquet" in ok.output

    mixed = write_manifest(
        pictures,
        [
            {"id": "g", "image": "rocket.jpg", "prompt": "pan left"},
            {"id": "s", "image": "chelsea.png", "prompt": "pan left"},
        ],
        "mixed.csv",
    )
    partial = runner.invoke(app, ["run", str(mixed), "--dest", str(dest), "--config", str(config)])
    assert partial.exit_code == 1, partial.output
    assert "rejected" in partial.output

    dry = runner.invoke(
        app,
        ["run", str(mixed), "--dest", str(tmp_path / "dry"), "--config", str(config), "--dry-run"],
    )
    assert dry.exit_code == 0 and "estimated cost" in dry.output

    missing = runner.invoke(
        app, ["run", str(tmp_path / "nope.csv"), "--dest", str(dest), "--config", str(config)]
    )
    assert missing.exit_code == 2 and "nope.csv" in missing.output

    before = sum(simulator.stats.responses_by_status.values())
    monkeypatch.delenv("ATLASCLOUD_API_KEY")
    nokey = runner.invoke(
        app, ["run", str(good), "--dest", str(tmp_path / "k"), "--config", str(config)]
    )
    assert nokey.exit_code == 2
    assert "ATLASCLOUD_API_KEY" in nokey.output
    assert sum(simulator.stats.responses_by_status.values()) == before, "no request without a key"


@pytest.mark.timeout(240)
def test_kill_9_while_polling_then_rerun_lands_all_without_paying_twice(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=6.0)
    rows = [{"id": f"k{i}", "image": "coffee.png", "prompt": f"pan right {i}"} for i in range(6)]
    manifest = write_manifest(pictures, rows)
    dest = tmp_path / "out"
    config = sim_config(tmp_path, sim, concurrency=6)
    env = {
        **os.environ,
        "ATLASCLOUD_API_KEY": TEST_API_KEY,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    args = ["run", str(manifest), "--dest", str(dest), "--config", str(config)]
    proc = start_cli(args, env, merge_stderr=True)
    deadline = time.monotonic() + 120
    # Every input has its prediction id recorded: no POST is on the wire, all are paid.
    while state_phases(dest).count("submitted") < 6:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "batch never got all rows submitted"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sim.stats.jobs_created == 6
    assert not (dest / "results.parquet").exists()

    rerun = start_cli(args, env, merge_stderr=True)
    output = rerun.communicate(timeout=180)[0].decode()
    assert rerun.returncode == 0, output
    table = pd.read_parquet(dest / "results.parquet")
    assert set(table["status"]) == {"landed"}
    assert sim.stats.jobs_created == 6
    assert max(sim.stats.submissions_per_input.values()) == 1
    assert TEST_API_KEY not in output


# ----------------------------------------------------------------- the first minute


def _usage_case(case: str, tmp_path: Path, pictures: Path) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    local = str(REPO / "configs" / "local.yaml")
    good = write_manifest(pictures, [{"image": "coffee.png", "prompt": "pan"}])
    if case == "missing manifest":
        return [
            "run",
            str(tmp_path / "nope.csv"),
            "--dest",
            str(tmp_path / "o"),
            "--config",
            local,
        ], env
    if case == "manifest without image":
        bad = tmp_path / "noimage.csv"
        bad.write_text("picture,prompt\ncoffee.png,pan\n")
        return ["run", str(bad), "--dest", str(tmp_path / "o"), "--config", local], env
    if case == "bad config":
        config = tmp_path / "bad.yaml"
        config.write_text("concurrency: -3\nmodel: not-a-model\n")
        return ["run", str(good), "--dest", str(tmp_path / "o"), "--config", str(config)], env
    assert case == "missing key"
    env.pop("ATLASCLOUD_API_KEY", None)
    production = str(REPO / "configs" / "atlascloud.yaml")
    return ["run", str(good), "--dest", str(tmp_path / "o"), "--config", production], env


@pytest.mark.parametrize(
    "case", ["missing manifest", "manifest without image", "bad config", "missing key"]
)
def test_usage_errors_answer_in_seconds_with_one_line_and_no_traceback(
    case: str, tmp_path: Path, pictures: Path
) -> None:
    args, env = _usage_case(case, tmp_path, pictures)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )
    took = time.monotonic() - started
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert took < 3.0, f"{case}: {took:.1f} s"
    assert "Traceback" not in stderr and "Traceback" not in proc.stdout.decode()
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error:"), stderr
    assert not (tmp_path / "prefect-home").exists(), "Prefect was never started"


def test_progress_bar_total_is_the_manifest_rows(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """Driven through a pseudo-terminal, as a user sees it: the bar's total is the
    number of rows as soon as they are read, and it fills to it (a rejected row too)."""
    sim = make_simulator(latency_s=0.2)
    rows = [{"id": f"p{i}", "image": "coffee.png", "prompt": f"pan {i}"} for i in range(5)]
    rows.append({"id": "bad", "image": "missing.png", "prompt": "pan"})
    manifest = write_manifest(pictures, rows)
    args = ["run", str(manifest), "--dest", str(tmp_path / "out"), "--config"]
    args.append(str(sim_config(tmp_path, sim)))
    term = Terminal(tmp_path, args)
    screen = term.finish()
    proc = term.proc
    assert proc.returncode == 1, screen  # the bad row is rejected
    fractions = re.findall(r"(\d+)/(\d+)", screen)
    assert fractions, screen
    assert {total for _, total in fractions} == {"6"}, "the total was known from the start"
    assert ("6", "6") in fractions, "the bar filled to the total"
