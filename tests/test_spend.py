"""Spend as billed: charged, reserved and refunded apart in the table, the summary and
`i2v status`; a budget frees refunded money (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.helpers import options_for, run_batch, write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(300)]


def test_moderation_refunds_are_not_spent(simulator: Any, pictures: Path, tmp_path: Path) -> None:
    rows = [
        {"id": f"ok{i}", "image": "astronaut.png", "prompt": f"pan left {i}"} for i in range(4)
    ] + [{"id": f"mod{i}", "image": "coffee.png", "prompt": f"nsfw take {i}"} for i in range(2)]
    dest = tmp_path / "out"
    summary = run_batch(write_manifest(pictures, rows), dest, options_for(simulator))
    stats = simulator.stats
    assert stats.jobs_created == 6
    # The provider charged 4 and refunded 2 (its own bill, from the simulator).
    assert summary.spent_usd == pytest.approx(4 * 0.28)
    assert summary.charged_usd == pytest.approx(4 * 0.28)
    assert summary.refunded_usd == pytest.approx(2 * 0.28)
    assert summary.reserved_usd == 0.0 and summary.maybe_usd == 0.0
    table = pd.read_parquet(dest / "results.parquet").set_index("id")
    assert list(table.loc[[f"mod{i}" for i in range(2)], "billing"]) == ["refunded"] * 2
    assert list(table.loc[[f"mod{i}" for i in range(2)], "cost_usd"]) == [0.0, 0.0]
    assert list(table.loc[[f"mod{i}" for i in range(2)], "refund_usd"]) == [0.28, 0.28]
    assert set(table.loc[[f"ok{i}" for i in range(4)], "billing"]) == {"charged"}
    assert table["cost_usd"].sum() == pytest.approx(4 * 0.28)
    [run_summary] = (dest / "runs").glob("*/summary.json")
    saved = json.loads(run_summary.read_text())
    assert saved["spent_usd"] == pytest.approx(1.12) and saved["refunded_usd"] == 0.56

    out = CliRunner().invoke(app, ["status", str(dest), "--json"])
    spent = json.loads(out.stdout)["spent"]
    assert spent["usd"] == pytest.approx(1.12) and spent["refunded_usd"] == pytest.approx(0.56)
    [bill] = spent["by_model"].values()
    assert (bill["charged"], bill["refunded"]) == (4, 2)
    [day] = spent["days"].values()
    assert day["charged_usd"] == pytest.approx(1.12) and day["refunded_usd"] == 0.56
    text = CliRunner().invoke(app, ["status", str(dest)]).stdout
    assert "spent: $1.12 on 4 paid inputs" in text
    assert "2 refunded (failed at the provider) $0.56" in text


def test_a_budget_frees_refunded_money(simulator: Any, pictures: Path, tmp_path: Path) -> None:
    # One at a time: two refused ($0.56 refunded), then four made within a $1.12 budget.
    rows = [{"id": f"mod{i}", "image": "coffee.png", "prompt": f"nsfw {i}"} for i in range(2)]
    rows += [{"id": f"ok{i}", "image": "astronaut.png", "prompt": f"tilt {i}"} for i in range(4)]
    dest = tmp_path / "out"
    options = options_for(simulator, concurrency=1, budget_usd=1.12)
    summary = run_batch(write_manifest(pictures, rows), dest, options)
    table = pd.read_parquet(dest / "results.parquet")
    assert list(table["status"]).count("landed") == 4, table[["id", "status", "error"]]
    assert summary.spent_usd == pytest.approx(1.12) and summary.refunded_usd == 0.56
    assert simulator.stats.jobs_created == 6


def test_an_unanswered_approval_pays_nothing(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    rows = [{"id": f"r{i}", "image": "astronaut.png", "prompt": f"wait {i}"} for i in range(3)]
    dest = tmp_path / "out"
    options = options_for(simulator, approve_over_usd=0.5, approve_timeout_s=2)
    summary = run_batch(write_manifest(pictures, rows), dest, options)
    assert simulator.stats.jobs_created == 0 and simulator.stats.uploads == 0
    table = pd.read_parquet(dest / "results.parquet")
    assert set(table["status"]) == {"not_submitted"}
    assert summary.stop_reason == "approval" and summary.spent_usd == 0.0
