"""The provider cap across runs: a Prefect global concurrency limit on the real engine,
leased per run instead of one server round trip per row."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import options_for, write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(240)]


async def _limit(name: str, limit: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit)
        )


async def _active_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


def test_two_runs_share_the_cap_exactly_and_lease_slots_not_rows(
    make_simulator: Any, pictures: Path, tmp_path: Path, caplog: Any, capsys: Any
) -> None:
    from flows.batch import i2v_batch

    sim = make_simulator(latency_s=0.3)
    name = f"cap-{tmp_path.name[-12:]}".lower().replace("_", "-")
    asyncio.run(_limit(name, 3))
    options = options_for(sim, concurrency=3, global_concurrency_limit=name)
    first = write_manifest(
        pictures,
        [{"id": f"a{i}", "image": "coffee.png", "prompt": f"pan {i}"} for i in range(12)],
        "a.csv",
    )
    second = write_manifest(
        pictures,
        [{"id": f"b{i}", "image": "astronaut.png", "prompt": f"tilt {i}"} for i in range(12)],
        "b.csv",
    )

    async def both() -> tuple[Any, Any]:
        return await asyncio.gather(
            i2v_batch(str(first), str(tmp_path / "a"), options),
            i2v_batch(str(second), str(tmp_path / "b"), options),
        )

    a, b = asyncio.run(both())
    assert a.counts["landed"] == 12 and b.counts["landed"] == 12
    assert sim.stats.max_in_flight <= 3, "both runs together never passed the cap"
    logged = caplog.text + capsys.readouterr().err
    leases = [int(n) for n in re.findall(r"(\d+) slot leases \(at most", logged)]
    assert len(leases) == 2 and sum(leases) < 24, f"{leases}: slots are reused, not per row"
    assert asyncio.run(_active_slots(name)) == 0, "every lease was given back"


def test_a_run_leases_as_many_slots_as_rows_wait_and_never_more(tmp_path: Path) -> None:
    """Rows that reach the cap together share leased slots at once (never one at a
    time), never more than the limit, and every lease goes back at the end."""
    from prefect import flow

    from flows.common import LeasedCap

    name = f"cap-{tmp_path.name[-12:]}".lower().replace("_", "-") + "-x"
    asyncio.run(_limit(name, 4))
    active = peak = 0

    @flow
    async def rows() -> LeasedCap:
        cap = LeasedCap(name, want=4)

        async def row() -> None:
            nonlocal active, peak
            async with cap.slot():
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.2)
                active -= 1

        await asyncio.gather(*(row() for _ in range(12)))
        await cap.aclose()
        return cap

    cap = asyncio.run(rows())
    assert peak == 4, f"at most {peak} rows ran at once under a limit of 4"
    assert cap.acquired < 12 and cap.peak_held == 4
    assert asyncio.run(_active_slots(name)) == 0
