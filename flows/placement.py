"""Where a fan-out's shards run: spread over the workers that are polling, by queue.

A process worker takes every scheduled run it sees, up to its `--limit`, so shards
created together all go to whichever worker polls first. Each worker started with
`i2v worker` polls a queue of its own (`i2v-worker-<name>`) besides `default`; the
fan-out gives the shards to those queues in turn, its own worker's last (the parent
already runs a shard itself). With no such queue live, shards go to the deployment's
queue as before, and the fan-out says so when several shards are to run.

A shard left Scheduled on a queue nobody polls any more (its worker stopped before
taking it) is cancelled and created again on the deployment's queue: it never started,
so nothing of it was paid, and its inputs' records decide the rest.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from itertools import cycle, islice
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, WorkQueue
from prefect.client.schemas.responses import OrchestrationResult
from prefect.states import Cancelled

WORKER_QUEUE_PREFIX = "i2v-worker-"
# `i2v worker` sets this in its worker's environment; the runs it starts inherit it.
OWN_QUEUE_ENV = "I2V_WORKER_QUEUE"
LIVE_S = 30.0  # a queue polled this recently has a worker on it
STRANDED_S = 30.0  # a shard Scheduled this long on a dead queue is moved


def worker_queue(name: str) -> str:
    """The queue of the worker called `name`."""
    return f"{WORKER_QUEUE_PREFIX}{name}"


def _within(at: datetime | None, now: datetime, seconds: float) -> bool:
    return at is not None and (now - at.astimezone(UTC)).total_seconds() < seconds


def _live(queue: WorkQueue, now: datetime) -> bool:
    return not queue.is_paused and _within(queue.last_polled, now, LIVE_S)


async def live_worker_queues(client: PrefectClient, pool: str) -> list[str]:
    """The pool's per-worker queues polled in the last LIVE_S seconds, this run's
    own worker's last."""
    now = datetime.now(UTC)
    queues = await client.read_work_queues(work_pool_name=pool)
    own = os.environ.get(OWN_QUEUE_ENV)
    live = sorted(
        q.name for q in queues if q.name.startswith(WORKER_QUEUE_PREFIX) and _live(q, now)
    )
    return sorted(live, key=lambda name: name == own)


async def online_workers(client: PrefectClient, pool: str) -> int:
    """The pool's workers that sent a heartbeat in the last LIVE_S * 3 seconds (a
    worker's heartbeat is every 30 s by default; the server keeps a stopped worker
    ONLINE for a while, so the time is what counts)."""
    now = datetime.now(UTC)
    workers = await client.read_workers_for_work_pool(work_pool_name=pool)
    return sum(1 for w in workers if _within(w.last_heartbeat_time, now, 3 * LIVE_S))


def place(count: int, queues: list[str]) -> list[str | None]:
    """The queue of each of `count` shards, in turn over `queues` (None: the
    deployment's own queue)."""
    if not queues:
        return [None] * count
    return list(islice(cycle(queues), count))


async def stranded(client: PrefectClient, run: FlowRun, since: float, now: float) -> bool:
    """`run` has sat Scheduled for STRANDED_S on a per-worker queue nobody polls."""
    queue_name = run.work_queue_name or ""
    if not queue_name.startswith(WORKER_QUEUE_PREFIX) or now - since < STRANDED_S:
        return False
    if run.state is None or not run.state.is_scheduled():
        return False
    queues = await client.read_work_queues(work_pool_name=run.work_pool_name)
    return not any(q.name == queue_name and _live(q, datetime.now(UTC)) for q in queues)


async def withdraw(client: PrefectClient, run: FlowRun) -> bool:
    """Cancel a stranded shard before any worker takes it; False if one just did."""
    result: OrchestrationResult[Any] = await client.set_flow_run_state(
        run.id,
        Cancelled(message=f"no worker polls {run.work_queue_name}: moved to another queue"),
    )
    return result.status.value == "ACCEPT"
