"""A real `prefect server` for the deployment tests: its own PREFECT_HOME on a free
loopback port, the work pool, the provider cap, the deployments from
deployments/prefect.yaml; workers are started by each test module as it needs them.

Shared by tests/test_deployments.py, test_approval.py and test_lost_worker.py (no test
module imports another).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import REPO, free_port

BIN = Path(sys.executable).parent
POOL = "i2v-process"
DEPLOYMENTS = ("i2v-batch/batch", "i2v-fanout/fanout", "i2v-inbox/inbox", "i2v-shard/shard")


@dataclass
class Stack:
    """The server, its environment for child processes, and what was started."""

    url: str
    env: dict[str, str]
    logs: Path
    sim: Any = None  # an Atlas simulator the workers allow (I2V_ALLOWED_BASE_URLS), if any
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    deployments: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{out}"
        return out

    def spawn(self, name: str, *args: str, exe: str = "prefect") -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [str(BIN / exe), *args],
            cwd=self.logs,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: torn down as one
        )
        self.procs.append(proc)
        return proc

    def worker(self, name: str, limit: int) -> subprocess.Popen[bytes]:
        """A process worker on the pool, taking at most `limit` flow runs at once."""
        return self.spawn(
            name, "worker", "start", "--pool", POOL, "--name", name, "--limit", str(limit)
        )

    def i2v_worker(self, name: str, limit: int) -> subprocess.Popen[bytes]:
        """A worker as the README starts one (`i2v worker`): its own queue for shards."""
        args = ["worker", "--pool", POOL, "--name", name, "--limit", str(limit)]
        return self.spawn(name, *args, "--query-seconds", "1", exe="i2v")

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def descendants(pids: set[int]) -> set[int]:
    """All living descendants of `pids` (Linux /proc), so runs in their own sessions go too."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_machine(proc: subprocess.Popen[bytes]) -> set[int]:
    """SIGKILL a worker's process group and every descendant at once, as when its node is
    lost: nothing gets to say goodbye. The pids killed."""
    tree = descendants({proc.pid})
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    return {proc.pid, *tree}


def teardown(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop every started process group and anything they spawned, whatever happened."""
    tree = descendants({p.pid for p in procs})
    for proc in reversed(procs):  # workers before the server
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def client_for(url: str) -> Iterator[Any]:
    """A sync Prefect client for `url` (the session harness may point elsewhere)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: url}),
        get_client(sync_client=True) as client,
    ):
        yield client


@contextlib.contextmanager
def running_stack(home: Path, logs: Path, *, limit: int, env: Mapping[str, str]) -> Iterator[Stack]:
    """A prefect server, the pool, the provider cap (`limit` slots) and the deployments,
    with the inbox schedule paused; everything started is stopped on the way out."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "I2V_"))}
    child_env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="INFO",
        # Busy slots answer "retry after N s", N up to 30 s by default: too coarse for
        # 1-second predictions (production: see the README's concurrency notes).
        PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS="1",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        **env,
    )
    s = Stack(url=url, env=child_env, logs=logs)
    try:
        s.spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert s.procs[0].poll() is None, s.log_text("server")
            assert time.monotonic() < deadline, "server did not start:\n" + s.log_text("server")
            time.sleep(0.5)
        # The locked template: a run cannot set env or command; its runs send heartbeats.
        s.cli(
            "work-pool",
            "create",
            POOL,
            "--type",
            "process",
            "--base-job-template",
            "deployments/process-pool.json",
        )
        s.cli("gcl", "create", "atlascloud", "--limit", str(limit))
        s.cli("deploy", "--all", "--prefect-file", "deployments/prefect.yaml", timeout=180)
        with client_for(url) as client:
            for name in DEPLOYMENTS:
                s.deployments[name] = client.read_deployment_by_name(name)
            # The inbox schedule would tick every 10 minutes: not during these tests.
            inbox_dep = s.deployments["i2v-inbox/inbox"]
            for sched in inbox_dep.schedules:
                client.update_deployment_schedule(inbox_dep.id, sched.id, active=False)
        yield s
    finally:
        teardown(s.procs)


@contextlib.contextmanager
def simulated_stack(
    home: Path,
    logs: Path,
    *,
    limit: int,
    inbox: Path,
    latency_s: float,
    api_key: str,
    wrong_env_key: str,
) -> Iterator[Stack]:
    """`running_stack` beside an Atlas simulator (taking `api_key`) that the workers
    allow as their API. Their own ATLASCLOUD_API_KEY is `wrong_env_key`, so a run
    that works took its key from the Secret block; the inbox folder is `inbox`."""
    from i2v.simulator.server import start_simulator

    sim = start_simulator(port=0, latency_s=latency_s, api_key=api_key)
    env = {
        "I2V_INBOX": str(inbox),
        "I2V_DEST_ROOT": str(inbox / "out"),
        "ATLASCLOUD_API_KEY": wrong_env_key,
        # The workers' own API stays ATLASCLOUD_BASE_URL (conftest: a dead port); the
        # forms may name the simulator because the workers allow it.
        "I2V_ALLOWED_BASE_URLS": sim.url,
    }
    try:
        with running_stack(home, logs, limit=limit, env=env) as s:
            s.sim = sim
            yield s
    finally:
        sim.stop()


def all_logs(client: Any) -> list[Any]:
    """Every log line the server holds, oldest first."""
    logs: list[Any] = []
    while True:
        page = client.read_logs(limit=200, offset=len(logs))
        logs += page
        if len(page) < 200:
            return logs
