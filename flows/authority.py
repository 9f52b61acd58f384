"""Whether a flow run's options came from a deployment (a form, the API, a schedule) or
from the operator's own call, and the refusal of worker-only options in the first case.

A run counts as a deployment run when this process was started by a worker or runner
to execute a flow run (Prefect sets `PREFECT__FLOW_RUN_ID` for it), or when the flow
run or any flow run above it was created from a deployment. That covers a batch
deployment run, the inbox deployment's i2v_batch subflow, a fan-out's shards (runs of
the shard deployment themselves) and a team's deployed flow calling i2v_batch, also
from a thread that lost Prefect's context (the subflow is then a new root run, but the
process is still the worker's). The CLI and a plain Python call are neither.

Measured on Prefect 3.9 (a process worker): a subflow's own flow run has no
`deployment_id`; its `parent_task_run_id` leads to the deployment run, and the
process's `PREFECT__FLOW_RUN_ID` names that run. A subflow started in a plain thread
has no parent at all: only the environment variable tells.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger

from i2v.authority import refusals
from i2v.config import BatchOptions
from i2v.errors import ConfigError

WORKER_FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"  # set by Prefect's workers and runners
MAX_ANCESTORS = 32  # deeper than any real nesting: past it, count the run as deployed


class WorkerSettingRefused(ConfigError):
    """A deployment run's options ask for what only the worker's environment may allow."""


async def deployment_run() -> str | None:
    """Why the current flow run counts as a deployment run, or None when it does not
    (the operator's own CLI or Python call)."""
    started_for = os.environ.get(WORKER_FLOW_RUN_ENV, "").strip()
    if started_for:
        return f"this process was started for flow run {started_for}"
    context = FlowRunContext.get()
    run: Any = context.flow_run if context is not None else None
    if run is None:
        return None
    first = run.name
    async with contextlib.AsyncExitStack() as stack:
        client = None
        for _ in range(MAX_ANCESTORS):
            if run.deployment_id is not None:
                return f"flow run {run.name!r} is a run of deployment {run.deployment_id}"
            if run.parent_task_run_id is None:
                return None
            if client is None:  # a root run (the usual direct call) needs no request
                client = await stack.enter_async_context(get_client())
            parent_task = await client.read_task_run(run.parent_task_run_id)
            if parent_task.flow_run_id is None:
                return None
            run = await client.read_flow_run(parent_task.flow_run_id)
    return f"flow run {first!r} has more than {MAX_ANCESTORS} flow runs above it"


async def check_worker_settings(options: BatchOptions) -> None:
    """Refuse, before any request, options only the worker may decide when they come
    from a deployment run (`i2v.authority.refusals`); the operator's own calls keep
    them."""
    refused = refusals(options, os.environ)
    if not refused:
        return
    why = await deployment_run()
    if why is not None:
        get_run_logger().info("options from a deployment run (%s): worker settings apply", why)
        raise WorkerSettingRefused("; ".join(refused))
