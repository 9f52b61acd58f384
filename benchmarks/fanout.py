"""The bench's `fanout` scenario: one i2v-fanout flow run over two process workers.

    .venv/bin/python benchmarks/bench.py --only fanout          # 600 rows, a shard per worker
    .venv/bin/python benchmarks/bench.py --quick --only fanout  # 40 rows in 4 shards

What a team runs (as tests/test_deployments.py does): a long-lived `prefect server`
(its own PREFECT_HOME in the bench's scratch folder), the process work pool
`i2v-process`, the global concurrency limit `atlascloud` of C slots (the provider cap),
`prefect deploy --all --prefect-file deployments/prefect.yaml` from the repo root, the
simulator's key in a Secret block (the workers have no ATLASCLOUD_API_KEY), and two
`i2v worker --pool i2v-process --limit 4`, as the README starts them (each polls a
queue of its own besides `default`, every 2 s). Then one flow run of i2v-fanout/fanout
over N distinct rows in shards of `shard_size` rows, or as the fan-out sizes them when
the plan gives none (one per online worker; the first runs in the parent),
each shard with `concurrency` C, against the bench's simulator (latency L,
max_concurrent C).

Measured:
  - efficiency: ideal N * L / C over first submission -> last landing (DEST/_state);
  - the parent flow run's own wall time (its start -> end state, from the server) and
    ideal / that; and created -> final as the bench saw it (worker pick-up included),
    as a user sees it, and ideal / that;
  - max predictions in flight at the simulator (never over C) and jobs created (= N:
    every input paid once);
  - the task runs in state Crashed and the flow runs not Completed (read from the
    server), the global limit's slots still held at the end (0: none leaked), and
    which worker ran which flow run (from the workers' logs).
Every process started here, and every flow-run process the workers spawned, is stopped
at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import BIN, Processes, Simulator, free_port, run_child, wait_until_serving

POOL = "i2v-process"  # deployments/prefect.yaml's work pool
LIMIT = "atlascloud"  # the global concurrency limit the options name
SECRET_BLOCK = "atlascloud-bench-key"
WORKERS = ("bench-w1", "bench-w2")
FANOUT = "i2v-fanout/fanout"
INBOX = "i2v-inbox/inbox"


@dataclass
class FanoutPlan:
    rows: int
    shard_size: int | None  # None: the fan-out's default
    latency_s: float
    cap: int
    concurrency: int
    poll_interval_s: float
    timeout_s: float  # the bench waits this long for the parent to finish

    @property
    def ideal_s(self) -> float:
        return self.latency_s * max(self.rows / self.cap, 1.0)

    @property
    def shards(self) -> str:
        if self.shard_size is None:
            return "a shard per worker"
        return f"{-(-self.rows // self.shard_size)} shards"


def run(
    plan: FanoutPlan,
    *,
    procs: Processes,
    work: Path,
    sim: Simulator,
    base_env: dict[str, str],
    manifest: Path,
    span_of: Callable[[Path], Any],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Start the stack, run the fan-out once, read its figures, stop everything."""
    home = work / "fanout-prefect-home"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    dest = work / "dest" / "fanout"
    env = {
        **{k: v for k, v in base_env.items() if k != "ATLASCLOUD_API_KEY"},
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        # deployments/prefect.yaml fills the inbox deployment's parameters from these;
        # its schedule is switched off below.
        "I2V_INBOX": str(work / "fanout-inbox"),
        "I2V_DEST_ROOT": str(work / "fanout-inbox-out"),
    }
    started: list[Any] = []
    setup: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        say("  prefect server start ...")
        server = procs.start(
            "fanout-server",
            [prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
        )
        started.append(server)
        wait_until_serving(f"{api}/health", server, timeout_s=180)
        setup["server_s"] = time.monotonic() - t0
        with client_for(api, home) as client:
            t0 = time.monotonic()
            run_child(
                procs,
                "fanout-pool",
                [
                    *(prefect(), "--no-prompt", "work-pool", "create", POOL, "--type", "process"),
                    *("--base-job-template", "deployments/process-pool.json"),
                ],
                env,
                timeout_s=180,
            )
            setup["pool_s"] = time.monotonic() - t0
            _limit_and_secret(client, plan.cap)
            t0 = time.monotonic()
            say("  prefect deploy --all ...")
            run_child(
                procs,
                "fanout-deploy",
                [
                    prefect(),
                    "--no-prompt",
                    "deploy",
                    "--all",
                    "--prefect-file",
                    "deployments/prefect.yaml",
                ],
                env,
                timeout_s=300,
            )
            setup["deploy_s"] = time.monotonic() - t0
            deployment = client.read_deployment_by_name(FANOUT)
            inbox = client.read_deployment_by_name(INBOX)
            for sched in inbox.schedules:  # no inbox tick during the measurement
                client.update_deployment_schedule(inbox.id, sched.id, active=False)
            for name in WORKERS:  # as the README starts them: `i2v worker --limit 4`
                args = [str(BIN / "i2v"), "worker", "--pool", POOL, "--name", name]
                started.append(procs.start(f"fanout-{name}", [*args, "--limit", "4"], env))
            t0 = time.monotonic()
            _wait_for_workers(client, started[1:], time.monotonic() + 180)
            setup["workers_s"] = time.monotonic() - t0
            sim.reset()
            options = {
                "concurrency": plan.concurrency,  # per shard; the global limit caps them all
                "poll_interval_s": plan.poll_interval_s,
                "expected_duration_s": plan.latency_s,
                "timeout_s": 600,
                "global_concurrency_limit": LIMIT,
                "api": {"base_url": sim.url, "api_key_secret_block": SECRET_BLOCK},
            }
            say(f"  i2v-fanout over {plan.rows} rows, {plan.shards} ...")
            created_at, created_epoch = time.monotonic(), time.time()
            parent = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={
                    "source": str(manifest),
                    "dest": str(dest),
                    **({"shard_size": plan.shard_size} if plan.shard_size else {}),
                    "options": options,
                },
            )
            parent = _wait(client, parent.id, created_at + plan.timeout_s)
            seen_s = time.monotonic() - created_at
            stats = sim.stats()
            say(f"  ... {_state(parent)} after {seen_s:.1f} s")
            flow_runs = _all(client.read_flow_runs)
            task_runs = _all(client.read_task_runs)
            held = client.read_global_concurrency_limit_by_name(LIMIT).active_slots
    finally:
        _stop(procs, started)

    figures = _figures(plan, parent, flow_runs, task_runs, stats, procs.logs)
    figures.update(
        setup=setup,
        created_to_final_s=seen_s,
        created_to_final_efficiency=plan.ideal_s / seen_s,
        slots_held_after=held,
    )
    if figures["parent_state"] != "Completed":
        message = parent.state.message if parent.state is not None else ""
        figures["error"] = f"the fan-out ended {figures['parent_state']}: {message}"
        return figures
    span = span_of(dest)
    figures.update(
        actual_s=span.actual_s,
        efficiency=plan.ideal_s / span.actual_s,
        landed=span.landed,
        # created -> first submission: pick-up, the parent's set-up, the shards' start.
        startup_s=span.first_submit - created_epoch,
        end_s=created_epoch + seen_s - span.last_land,  # last landing -> parent final
        submissions_by_run=_submissions_by_run(dest, parent, flow_runs),
    )
    return figures


def _submissions_by_run(dest: Path, parent: Any, flow_runs: list[Any]) -> dict[str, int]:
    """What each of the parent's runs paid for (its DEST/runs/<stamp>-<id[:8]>/summary)."""
    paid: dict[str, int] = {}
    for run in flow_runs:
        if not run.name.startswith(f"{parent.name}-"):
            continue
        for summary in (dest / "runs").glob(f"*-{str(run.id)[:8]}/summary.json"):
            label = run.name.removeprefix(f"{parent.name}-")
            paid[label] = int(json.loads(summary.read_text()).get("submissions", 0))
    return dict(sorted(paid.items()))


def prefect() -> str:
    return str(BIN / "prefect")


@contextlib.contextmanager
def client_for(api: str, home: Path) -> Iterator[Any]:
    """A sync Prefect client of the server at `api`.

    The bench process has not imported Prefect before: PREFECT_HOME is pointed at the
    scenario's scratch home first, so ~/.prefect is never read or written.
    """
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ.update(PREFECT_HOME=str(home), PREFECT_API_URL=api)
    try:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with (
            temporary_settings(updates={PREFECT_API_URL: api}),
            get_client(sync_client=True) as client,
        ):
            yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _limit_and_secret(client: Any, cap: int) -> None:
    from prefect.blocks.system import Secret
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=LIMIT, limit=cap))
    # Any non-empty key passes the bench's simulator; the runs can only get it here.
    Secret(value="bench-key").save(SECRET_BLOCK, overwrite=True)


def _wait_for_workers(client: Any, procs: list[Any], deadline: float) -> None:
    """Until both workers have said hello to the server (so the run's time is not theirs
    to start)."""
    while True:
        online = {w.name for w in client.read_workers_for_work_pool(POOL)}
        polled = {q.name for q in client.read_work_queues(work_pool_name=POOL) if q.last_polled}
        if set(WORKERS) <= online and {f"i2v-worker-{w}" for w in WORKERS} <= polled:
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited before it came online; see its log")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers {sorted(set(WORKERS) - online)} did not come online")
        time.sleep(0.5)


def _wait(client: Any, run_id: Any, deadline: float) -> Any:
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fan-out did not finish in time; state {_state(run)}")
        time.sleep(0.5)


def _all(read: Callable[..., list[Any]]) -> list[Any]:
    """Every object a paginated client read returns."""
    out: list[Any] = []
    while True:
        page = read(limit=200, offset=len(out))
        out += page
        if len(page) < 200:
            return out


def _state(run: Any) -> str:
    if run.state is None:
        return "Unknown"
    return str(run.state.name or run.state.type.value.title())


SUBMITTING = re.compile(r"Worker '([^']+)' submitting flow run '([0-9a-f-]+)'")


def _figures(
    plan: FanoutPlan,
    parent: Any,
    flow_runs: list[Any],
    task_runs: list[Any],
    stats: dict[str, Any],
    logs: Path,
) -> dict[str, Any]:
    shards = [r for r in flow_runs if r.name.startswith(f"{parent.name}-shard-")]
    wall = (
        (parent.end_time - parent.start_time).total_seconds()
        if parent.start_time and parent.end_time
        else None
    )
    crashed = [t for t in task_runs if t.state is not None and t.state.type.value == "CRASHED"]
    not_completed = [r for r in flow_runs if _state(r) != "Completed"]
    took: dict[str, str] = {}
    for name in WORKERS:
        log = logs / f"fanout-{name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        for worker, run_id in SUBMITTING.findall(text):
            took[run_id] = worker
    return {
        "rows": plan.rows,
        "shard_size": plan.shard_size,
        "shards": len(shards),
        "workers": len(WORKERS),
        "limit": plan.cap,
        "concurrency": plan.concurrency,
        "ideal_s": plan.ideal_s,
        "parent_state": _state(parent),
        "parent_wall_s": wall,
        "parent_efficiency": plan.ideal_s / wall if wall else None,
        "shard_wall_s": sorted(
            (r.end_time - r.start_time).total_seconds()
            for r in shards
            if r.start_time and r.end_time
        ),
        "shard_states": dict(Counter(_state(r) for r in shards)),
        # The shard with no deployment runs in the parent's process, on its worker.
        "shards_per_worker": dict(
            Counter(
                took.get(str(r.id if r.deployment_id else parent.id), "?")
                + ("" if r.deployment_id else " (in the parent)")
                for r in shards
            )
        ),
        "max_in_flight": stats["max_in_flight"],
        "jobs_created": stats["jobs_created"],
        "paid_twice": sum(1 for v in stats["submissions_per_input"].values() if v > 1),
        "http_429": stats["responses_by_status"].get("429", 0),
        "polls": stats["polls"],
        "task_runs": len(task_runs),
        "task_run_states": dict(Counter(_state(t) for t in task_runs)),
        "crashed_task_runs": len(crashed),
        "crashed_examples": [
            f"{t.name}: {t.state.message}" for t in crashed[:5] if t.state is not None
        ],
        "flow_runs": len(flow_runs),
        "flow_runs_not_completed": len(not_completed),
        "not_completed_examples": [f"{r.name}: {_state(r)}" for r in not_completed[:5]],
    }


def _stop(procs: Processes, started: list[Any]) -> None:
    """Workers, then the server; then any flow-run process a worker left behind (the
    process worker starts each run in a session of its own, out of the worker's group)."""
    tree = _descendants({p.pid for p in started})
    for proc in reversed(started):
        procs.stop(proc)
    for pid, since in tree.items():
        if _start_time(pid) == since:  # still that process, not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name ([1] is the parent, [19] the start)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _descendants(pids: set[int]) -> dict[int, str]:
    """Every living descendant of `pids` (Linux /proc), with its start time."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and len(fields) > 19:
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: dict[int, str] = {}
    todo = list(pids)
    while todo:
        for child, since in children.get(todo.pop(), []):
            if child not in found:
                found[child] = since
                todo.append(child)
    return found
