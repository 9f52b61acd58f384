"""A fan-out's shard flow runs: created on the workers' queues, then watched to the end.

Each shard is a run of the internal shard deployment, linked as a subflow of the
fan-out. `watch` polls their states; a running shard that stops sending heartbeats
(its machine or worker was lost) is marked Crashed, and a shard stranded on the queue
of a worker that went away before taking it is moved to the deployment's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Crashed

from flows.lost_runs import mark_lost_runs
from flows.placement import live_worker_queues, online_workers, place, stranded, withdraw
from i2v.config import BatchOptions
from i2v.errors import ConfigError
from i2v.liveness import HEARTBEAT_S
from i2v.shards import ShardRun, auto_shard_size
from tasks.artifacts import ProgressReporter

POLL_S = 1.0  # how often the parent reads its shards' states
HEARTBEAT_CHECK_S = 10.0  # how often it reads their heartbeats
NO_WORKER_WARNING_S = 120.0  # shards still waiting after this: say no worker takes them
WAITING = ("Scheduled", "Late", "Pending")
# A worker's pick-up is Pending by type, whatever its name ("Submitting" in Prefect 3.9).
NOT_STARTED = (StateType.SCHEDULED, StateType.PENDING)
SHARD_TAG = "i2v-shard"  # deployments/automations.yaml judges these runs by heartbeat


async def check_deployment(deployment: str) -> str:
    """The shard deployment's work pool (before any shard is created)."""
    async with get_client() as client:
        try:
            found = await client.read_deployment_by_name(deployment)
            return found.work_pool_name or ""
        except ObjectNotFound:
            raise ConfigError(
                f"deployment {deployment!r} not found: deploy it with `prefect deploy --all "
                "--prefect-file deployments/prefect.yaml`, or pass `deployment`"
            ) from None


async def auto_size(pool: str, rows: int, options: BatchOptions) -> tuple[int, int]:
    """Rows per shard for a fan-out not given `shard_size` (`i2v.shards.auto_shard_size`),
    and the online workers of the shard deployment's `pool` it counted."""
    slots = None
    async with get_client() as client:
        workers = await online_workers(client, pool)
        if options.global_concurrency_limit:
            with contextlib.suppress(ObjectNotFound):  # the shards warn of it themselves
                found = await client.read_global_concurrency_limit_by_name(
                    options.global_concurrency_limit
                )
                slots = found.limit if found.active else None
    size = auto_shard_size(rows, workers, concurrency=options.concurrency, limit=slots)
    return size, workers


def shard_name(index: int, total: int) -> str:
    parent = runtime_flow_run.get_name() or "i2v-fanout"
    return f"{parent}-shard-{index}-of-{total}"


def helper_name(index: int, total: int) -> str:
    """The parent's run of a waiting shard's rows (`flows/helping.py`)."""
    parent = runtime_flow_run.get_name() or "i2v-fanout"
    return f"{parent}-helps-shard-{index}-of-{total}"


@dataclass
class ShardLauncher:
    """Creates shard `index` (1-based, of `total`) as a run of `deployment` (on `pool`)."""

    source: str
    dest: str
    options: BatchOptions
    deployment: str
    pool: str
    total: int
    line_budgets: dict[int, float] | None = None  # an approved budget, per line (approval)
    parent: str = field(default_factory=lambda: str(runtime_flow_run.get_id() or "local"))

    def options_for(self, lines: list[int]) -> BatchOptions:
        """A shard's options: capped at its lines' share of an approved budget."""
        if self.line_budgets is None:
            return self.options
        share = sum(self.line_budgets.get(line, 0.0) for line in lines)
        return self.options.model_copy(update={"budget_usd": round(share + 1e-6, 6)})

    async def create(
        self, index: int, lines: list[int], queue: str | None, moves: int = 0
    ) -> FlowRun:
        digest = hashlib.sha256(json.dumps(lines).encode()).hexdigest()[:12]
        return await arun_deployment(
            name=self.deployment,
            parameters={
                "source": self.source,
                "dest": self.dest,
                # mode="json": plain JSON values, as the deployment's schema checks them.
                "options": self.options_for(lines).model_dump(mode="json"),
                "lines": lines,
            },
            timeout=0,
            as_subflow=True,
            flow_run_name=shard_name(index, self.total),
            tags=[SHARD_TAG],
            work_queue_name=queue,
            # A retried parent finds its shards again instead of starting (and paying
            # for) new ones; a new run of the fan-out has a new id, so new shard runs.
            idempotency_key=f"i2v-fanout:{self.parent}:{index}:{digest}"
            + (f":moved-{moves}" if moves else ""),
        )

    async def launch(self, shards: dict[int, list[int]]) -> dict[int, FlowRun]:
        """Shard runs for `shards` (index -> lines), spread over the live worker queues."""
        logger = get_run_logger()
        async with get_client() as client:
            queues = await live_worker_queues(client, self.pool)
        if not queues and len(shards) > 1:
            logger.info(
                "no worker polls a queue of its own (start workers with `i2v worker`): "
                "the %d shards go to whichever worker asks first",
                len(shards),
            )
        runs: dict[int, FlowRun] = {}
        for (index, lines), queue in zip(shards.items(), place(len(shards), queues), strict=True):
            runs[index] = run = await self.create(index, lines, queue)
            logger.info(
                "shard %d/%d: %d rows (lines %d-%d) as flow run %s%s",
                index,
                self.total,
                len(lines),
                lines[0],
                lines[-1],
                run.name,
                f" on {queue}" if queue else "",
            )
        return runs


def state_name(run: FlowRun) -> str:
    if run.state is None:
        return "Unknown"
    return run.state.name or run.state.type.value.title()


def shard_run(run: FlowRun) -> ShardRun:
    return ShardRun(
        flow_run_id=str(run.id),
        name=run.name,
        state=state_name(run),
        message=run.state.message if run.state else None,
    )


@dataclass
class _Watch:
    launcher: ShardLauncher
    shards: dict[int, list[int]]
    latest: dict[int, FlowRun]
    seen: dict[int, str] = field(default_factory=dict)
    waiting_since: dict[int, float] = field(default_factory=dict)
    moves: dict[int, int] = field(default_factory=dict)

    async def move_stranded(self, client: PrefectClient, pending: set[int]) -> None:
        """Shards left on a queue nobody polls go to the deployment's queue."""
        now = time.monotonic()
        for index in sorted(pending):
            run = self.latest[index]
            since = self.waiting_since.setdefault(index, now)
            if not await stranded(client, run, since, now) or not await withdraw(client, run):
                continue
            self.moves[index] = self.moves.get(index, 0) + 1
            self.latest[index] = await self.launcher.create(
                index, self.shards[index], None, self.moves[index]
            )
            self.waiting_since[index] = now
            get_run_logger().warning(
                "shard %d/%d waited on %s, which no worker polls any more: moved to the "
                "pool's default queue as flow run %s",
                index,
                self.launcher.total,
                run.work_queue_name,
                self.latest[index].name,
            )


async def watch(
    launcher: ShardLauncher,
    shards: dict[int, list[int]],
    runs: dict[int, FlowRun],
    reporter: ProgressReporter,
    started: set[int] | None = None,
) -> dict[int, FlowRun]:
    """Poll the shards' flow runs until each is final; log each state change once and
    add each shard whose run has started (left Scheduled and Pending) to `started`.

    A running shard that stops sending heartbeats is marked Crashed here, so the
    fan-out never waits for a run nobody runs any more.
    """
    logger = get_run_logger()
    me = runtime_flow_run.get_id()
    w = _Watch(launcher, shards, dict(runs))
    started = set() if started is None else started
    pending = set(runs)
    next_check = time.monotonic() + HEARTBEAT_CHECK_S
    started_at = time.monotonic()
    warned = False
    async with get_client() as client:
        while pending:
            ids = {w.latest[i].id: i for i in pending}
            fresh = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(ids)))
            )
            for gone in set(ids) - {run.id for run in fresh}:  # deleted by someone
                index = ids[gone]
                logger.warning("shard flow run %s no longer exists", w.latest[index].name)
                pending.discard(index)
                w.latest[index] = w.latest[index].model_copy(
                    update={"state": Crashed(message="the shard's flow run was deleted")}
                )
            for run in fresh:
                index = ids[run.id]
                w.latest[index] = run
                name = state_name(run)
                if w.seen.get(index) != name:
                    w.seen[index] = name
                    logger.info("shard %d/%d (%s): %s", index, launcher.total, run.name, name)
                if name not in WAITING:
                    w.waiting_since.pop(index, None)
                if run.state is not None and run.state.type not in NOT_STARTED:
                    started.add(index)
                if run.state is not None and run.state.is_final():
                    pending.discard(index)
                    reporter.advance(len(shards[index]), status=name.lower())
            if not pending:
                break
            await w.move_stranded(client, {i for i in pending if w.seen.get(i) in WAITING})
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HEARTBEAT_CHECK_S
                live = [w.latest[i] for i in pending]
                lost = await mark_lost_runs(client, live, HEARTBEAT_S, me=UUID(me) if me else None)
                for run_id, why in (lost or {}).items():
                    run = next(r for r in live if r.id == run_id)
                    logger.warning("shard %s marked Crashed: %s; not waiting for it", run.name, why)
                if lost:
                    continue  # read their new state at once
            begun = any(w.seen.get(i) not in WAITING for i in pending)
            if not warned and not begun and time.monotonic() - started_at > NO_WORKER_WARNING_S:
                warned = True
                logger.warning(
                    "%d shards are still waiting for a worker after %.0f s: is a worker "
                    "running on the deployment's work pool (`i2v worker --pool <pool>`)?",
                    len(pending),
                    NO_WORKER_WARNING_S,
                )
            await asyncio.sleep(POLL_S)
    return w.latest
