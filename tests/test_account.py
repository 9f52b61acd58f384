"""The balance up front: `i2v doctor` shows it and what it covers; a run's preflight
says when its estimate is over it; a missing endpoint or permission is a note."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from i2v.models import DEFAULT_MODEL
from tests.helpers import options_for, run_batch, sim_config, write_manifest
from tests.test_doctor import doctor, failed, line_with

pytestmark = [pytest.mark.timeout(240)]


def test_doctor_shows_the_balance_and_what_it_covers(make_simulator: Any, tmp_path: Path) -> None:
    sim = make_simulator(balance_usd=12.40)
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)))
    assert code == 0 and not failed(lines), "\n".join(lines)
    line_with(lines, f"balance: $12.40 available; covers 44 videos of {DEFAULT_MODEL} at $0.28")


@pytest.mark.parametrize("status", [403, 404, 500])
def test_doctor_balance_not_known_is_a_note(
    make_simulator: Any, tmp_path: Path, status: int
) -> None:
    sim = make_simulator(account_api_status=status)
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)))
    assert code == 0 and not failed(lines), "\n".join(lines)
    line_with(lines, f"balance not known: /public/v1/balance answered HTTP {status}")


@pytest.mark.usefixtures("prefect_harness")
def test_preflight_says_the_balance_covers_part_then_stops_on_402(
    simulator: Any,
    pictures: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    simulator.config.balance_usd = 1.0
    rows = [{"id": f"r{i}", "image": "astronaut.png", "prompt": f"pan {i}"} for i in range(6)]
    dest = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        summary = run_batch(
            write_manifest(pictures, rows), dest, options_for(simulator, concurrency=1)
        )
    assert (
        "balance $1.00 covers 3 of the 6 new videos (estimate $1.68)"
        in caplog.text + capsys.readouterr().err
    )
    table = pd.read_parquet(dest / "results.parquet")
    assert list(table["status"]).count("landed") == 3
    assert summary.stop_reason == "balance" and summary.spent_usd == pytest.approx(0.84)


@pytest.mark.usefixtures("prefect_harness")
def test_preflight_goes_on_when_the_balance_is_not_known(
    simulator: Any,
    pictures: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    simulator.config.account_api_status = 403
    rows = [{"id": "r", "image": "astronaut.png", "prompt": "pan"}]
    with caplog.at_level(logging.INFO):
        summary = run_batch(write_manifest(pictures, rows), tmp_path / "o", options_for(simulator))
    assert (
        "balance not known: /public/v1/balance answered HTTP 403"
        in caplog.text + capsys.readouterr().err
    )
    assert summary.exit_code == 0
