"""Where a fan-out's shards go: the live workers' own queues in turn, its own worker's
last; a shard stranded on a queue nobody polls is withdrawn (a real Prefect API)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flows.placement import (
    OWN_QUEUE_ENV,
    STRANDED_S,
    live_worker_queues,
    place,
    stranded,
    withdraw,
    worker_queue,
)


def test_shards_go_to_the_queues_in_turn() -> None:
    assert place(5, ["a", "b"]) == ["a", "b", "a", "b", "a"]
    assert place(2, ["a", "b", "c"]) == ["a", "b"]
    assert place(3, []) == [None, None, None]  # no live worker queue: the deployment's


async def _pool_with_queues(client: Any, polled_ago_s: dict[str, float | None]) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    pool = f"pool-{uuid.uuid4().hex[:8]}"
    await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    now = datetime.now(UTC)
    for name, ago in polled_ago_s.items():
        try:
            queue = await client.create_work_queue(name=name, work_pool_name=pool)
        except ObjectAlreadyExists:  # `default` comes with the pool
            queue = await client.read_work_queue_by_name(name, work_pool_name=pool)
        if ago is not None:
            await client.update_work_queue(queue.id, last_polled=now - timedelta(seconds=ago))
    return pool


def test_live_worker_queues_put_this_runs_own_worker_last(
    prefect_harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    monkeypatch.setenv(OWN_QUEUE_ENV, worker_queue("a"))

    async def main() -> list[str]:
        async with get_client() as client:
            pool = await _pool_with_queues(
                client,
                {
                    worker_queue("a"): 1,
                    worker_queue("b"): 2,
                    worker_queue("c"): 5,
                    worker_queue("gone"): 600,  # its worker stopped long ago
                    worker_queue("never"): None,
                    "someone-elses": 1,  # not a per-worker queue
                },
            )
            return await live_worker_queues(client, pool)

    assert asyncio.run(main()) == [worker_queue("b"), worker_queue("c"), worker_queue("a")]


def test_a_shard_stranded_on_a_dead_queue_is_withdrawn_and_a_live_one_is_not(
    prefect_harness: Any,
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentCreate

    @flow(name="placement-probe")
    def probe() -> None:
        """Never runs: only its deployment's runs are created."""

    async def main() -> dict[str, Any]:
        async with get_client() as client:
            pool = await _pool_with_queues(
                client, {worker_queue("dead"): 600, worker_queue("live"): 1, "default": 1}
            )
            flow_id = await client.create_flow(probe)
            deployment_id = await client.create_deployment(
                **DeploymentCreate(flow_id=flow_id, name="probe", work_pool_name=pool).model_dump(
                    exclude_unset=True
                )
            )
            runs = {
                name: await client.create_flow_run_from_deployment(
                    deployment_id, work_queue_name=worker_queue(name)
                )
                for name in ("dead", "live")
            }
            out: dict[str, Any] = {
                "young": await stranded(client, runs["dead"], since=0, now=STRANDED_S / 2),
                "live": await stranded(client, runs["live"], since=0, now=STRANDED_S * 2),
                "dead": await stranded(client, runs["dead"], since=0, now=STRANDED_S * 2),
            }
            out["withdrawn"] = await withdraw(client, runs["dead"])
            after = await client.read_flow_run(runs["dead"].id)
            out["state"] = after.state.type.value if after.state else None
            # Once cancelled it is no longer Scheduled, so never stranded again.
            out["again"] = await stranded(client, after, since=0, now=STRANDED_S * 2)
            return out

    out = asyncio.run(main())
    assert out == {
        "young": False,  # not waited long enough yet
        "live": False,  # its worker still polls: it is only busy
        "dead": True,
        "withdrawn": True,
        "state": "CANCELLED",
        "again": False,
    }, out
