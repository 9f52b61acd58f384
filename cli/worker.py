"""`i2v worker`: a Prefect process worker that fan-outs can give shards to by name.

A process worker takes every scheduled run it sees, up to its `--limit`, so shards
created together all went to whichever worker polled first. This worker also polls a
queue of its own (`i2v-worker-<name>`, created here), and tells its runs that name, so
a fan-out spreads its shards over the live workers (`flows.placement`). It then
becomes `prefect worker start` (exec), with the poll interval set.

Registered on the app by `cli.main`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Annotated

import typer

from cli.common import err

POOL = "i2v-process"  # deployments/prefect.yaml's work pool


def worker(
    pool: Annotated[str, typer.Option("--pool", help="The work pool.")] = POOL,
    name: Annotated[
        str | None,
        typer.Option("--name", help="This worker's name, unique in the pool (default: host)."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", help="Flow runs at once (a fan-out parent holds one).")
    ] = 4,
    query_seconds: Annotated[
        float,
        typer.Option(
            "--query-seconds", help="How often to look for runs (Prefect's default is 10 s)."
        ),
    ] = 2.0,
    work_queue: Annotated[
        list[str] | None,
        typer.Option("--work-queue", help="Queues to take any run from (default: default)."),
    ] = None,
) -> None:
    """Start a process worker on POOL that takes fan-out shards of its own."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from flows.placement import OWN_QUEUE_ENV, worker_queue

    name = name or socket.gethostname()
    own = worker_queue(name)
    try:
        with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
            client.create_work_queue(name=own, work_pool_name=pool)
    except ObjectNotFound:
        err.print(
            f"work pool {pool!r} not found: create it with `prefect work-pool create {pool} "
            "--type process --base-job-template deployments/process-pool.json`"
        )
        raise typer.Exit(2) from None
    queues = [*(work_queue or ["default"]), own]
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
    args += ["--name", name, "--limit", str(limit)]
    for queue in queues:
        args += ["--work-queue", queue]
    env = {
        **os.environ,
        "PREFECT_WORKER_QUERY_SECONDS": f"{query_seconds:g}",
        OWN_QUEUE_ENV: own,
    }
    err.print(f"worker {name!r} on {pool!r}, queues {', '.join(queues)}")
    sys.stderr.flush()
    os.execve(sys.executable, args, env)
