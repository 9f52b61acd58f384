"""The fan-out parent works on shards that no worker has started yet.

A worker's shard run takes 15-20 s from pick-up to its first submission on a 2-core
machine (`make bench`: 8 s to start the process, 6 s to load the flow), while the parent
finishes its own shard in seconds when videos are short. So, beside its own shard, the
parent runs a waiting shard's rows in its own process, the last shard first, and submits none
of them after that shard's own run has started (`RunControl.hand_over`): what it already
sent it still polls and lands. Only under a global concurrency limit, which caps the
parent's runs and the shards together.

Nothing is paid twice and nothing is merged twice. The input claims in DEST decide who
pays: the shard follows a row the parent is sending and takes a row the parent landed as
landed (`i2v.lifecycle`). The shard's own table stays the record of its rows in the
merge; the parent's runs add only their spend.
"""

from __future__ import annotations

import asyncio
import contextlib

from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.logging import get_run_logger
from prefect.states import State

from flows.batch import i2v_shard
from flows.control import controlled
from flows.shard_runs import SHARD_TAG, ShardLauncher, helper_name, shard_name
from i2v.run import RunControl

HANDOVER_CHECK_S = 0.5  # how often the parent looks whether the shard's run has started


async def help_waiting(
    launcher: ShardLauncher,
    shards: dict[int, list[int]],
    started: set[int],
) -> list[FlowRun]:
    """Run the rows of each shard still waiting for a worker here, last shard first,
    each until its own run starts. `started`: the shards whose runs the watch has seen
    start. Begins at once, beside shard 1 and while the shards are being created (no
    shard starts within seconds of its creation). Returns the flow runs this made."""
    if not launcher.options.global_concurrency_limit:
        # Only the global limit caps the parent's runs and the shards together: without
        # one, helping would put more in flight than `concurrency` per shard promises.
        return []
    done: list[FlowRun] = []
    tried: set[int] = set()
    while True:
        waiting = [i for i in sorted(shards, reverse=True) if i not in tried | started]
        if not waiting:
            return done
        index = waiting[0]
        tried.add(index)
        done.append(await _help(launcher, index, shards[index], started))


async def _help(
    launcher: ShardLauncher, index: int, lines: list[int], started: set[int]
) -> FlowRun:
    """One waiting shard's rows as a subflow here, handed over when its run starts."""
    logger = get_run_logger()
    name = shard_name(index, launcher.total)
    logger.info(
        "shard %d/%d waits for a worker: this run works on its rows meanwhile",
        index,
        launcher.total,
    )
    control = RunControl()

    async def hand_over_when_started() -> None:
        # `started` is a poll of the server (the watch's): there is no event to wait on.
        while index not in started:  # noqa: ASYNC110
            await asyncio.sleep(HANDOVER_CHECK_S)
        control.hand_over(
            f"not submitted here: shard {index}'s own run ({name}) started and takes its rows"
        )

    watcher = asyncio.create_task(hand_over_when_started())
    try:
        with controlled(control):
            run, state = await run_here(launcher, lines, helper_name(index, launcher.total))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if control.handed_over:
        logger.info(
            "shard %d/%d started on its worker: handed its other rows over", index, launcher.total
        )
    if not state.is_completed():
        # The shard's own run covers every one of its rows: this only cost time here.
        logger.warning("the parent's run of shard %d's rows ended %s", index, state.name)
    return run


async def run_here(launcher: ShardLauncher, lines: list[int], name: str) -> tuple[FlowRun, State]:
    """`lines` as a shard subflow named `name`, in this process; its flow run and final
    state. Tagged as the workers' shards are: the lost-shard automation judges it by its
    heartbeats."""
    shard = i2v_shard.with_options(flow_run_name=name)
    with tags(SHARD_TAG):
        state: State = await shard(
            launcher.source, launcher.dest, lines, launcher.options_for(lines), return_state=True
        )
    async with get_client() as client:
        run_id = state.state_details.flow_run_id
        assert run_id is not None  # a subflow's state names its flow run
        return await client.read_flow_run(run_id), state
