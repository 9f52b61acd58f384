"""A run handing its rows over to another run (the fan-out parent to a shard that has
started, flows/helping.py): it submits nothing new, still lands what it sent, and the
other run follows those inputs instead of paying for them again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.helpers import options_for, write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(300)]

ROWS = 12


def _table(dest: Path, run_id: str) -> pd.DataFrame:
    return pd.read_parquet(dest / "runs" / run_id / "results.parquet")


def test_a_handed_over_run_lands_what_it_sent_and_the_taker_pays_nothing_twice(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    from flows.batch import i2v_shard
    from flows.control import controlled
    from i2v.run import RunControl

    sim = make_simulator(latency_s=1.5)
    rows = [{"id": f"h{i}", "image": "rocket.jpg", "prompt": f"take {i}"} for i in range(ROWS)]
    manifest = write_manifest(pictures, rows)
    lines = list(range(2, ROWS + 2))
    options = options_for(sim, concurrency=3)
    dest = tmp_path / "dest"
    control = RunControl()

    async def giver() -> Any:
        with controlled(control):
            return await i2v_shard(str(manifest), str(dest), lines, options)

    async def both() -> tuple[Any, Any]:
        first = asyncio.create_task(giver())
        while sim.stats.jobs_created < 3:  # noqa: ASYNC110 (another thread's counter)
            await asyncio.sleep(0.01)
        control.hand_over("not submitted here: the test's other run takes these rows")
        taker = await i2v_shard(str(manifest), str(dest), lines, options)
        return await first, taker

    gave, took = asyncio.run(both())

    # The giver sent a few, landed each of them, and sent nothing after the hand-over.
    given = _table(dest, gave.run_id)
    sent = given[given["prediction_id"].notna()]
    assert 3 <= len(sent) < ROWS, given[["id", "status", "error"]]
    assert set(sent["status"]) == {"landed"}, sent[["id", "status", "error"]]
    rest = given[given["prediction_id"].isna()]
    assert set(rest["status"]) == {"not_submitted"}
    assert rest["error"].str.contains("the test's other run takes these rows").all()
    # The taker holds every row landed, the giver's among them, each paid exactly once.
    taken = _table(dest, took.run_id)
    assert set(taken["status"]) == {"landed"}, taken[["id", "status", "error"]]
    assert sim.stats.jobs_created == ROWS
    assert set(sim.stats.submissions_per_input.values()) == {1}, "an input was paid twice"
    assert took.spent_usd + gave.spent_usd == pytest.approx(0.28 * ROWS)
