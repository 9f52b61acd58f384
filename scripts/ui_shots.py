"""Screenshots of what a person sees in the Prefect UI (`make ui-shots`).

Starts a `prefect server` on a free loopback port (with PREFECT_UI_API_URL, or the UI
would call port 4200), creates the work pool and the provider cap, deploys
deployments/prefect.yaml, starts the Atlas simulator (`i2v simulate`) and a process
worker, then runs the demo manifest twice: once from the batch deployment through the
worker (the production form, pointed at the simulator with `api.base_url`) and once
through the CLI (`configs/local.yaml`, the in-process simulator), and once as a fan-out
of three shards (the parent runs waiting shards' rows itself). The inbox deployment
is run once unconfigured, as a fresh deployment's schedule would. A headless Chromium
(Debian's `chromium`, apt-installed when missing) then saves into out/ui-shots/:

    form.png                     the batch deployment's run form (options expanded)
    fanout-form.png              the fan-out's run form (shard_size empty: one per worker)
    worker-run.png, cli-run.png  each run's page: the graph of its task runs
    fanout-run.png               the fan-out's page: its shards and helper runs
    events.png                   the Events page: each run's i2v.run.* event
    *-logs.png                   its log
    *-task-run-STEP.png          the page of each step's first task run (its log names
                                 the rows it carried)
    *-artifact-KEY.png           each artifact of the run
    s3-run*.png                  the CLI into an S3 DEST (a local moto server, when
                                 moto is installed): presigned images and links
    inbox-unconfigured.png       the inbox tick that completed without configuration

Nothing here is part of `make test`: it needs a browser and takes a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SIM_KEY = "sk-ui-shots-simulator"
POOL = "i2v-process"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium() -> str:
    """Debian's chromium, installed with apt when missing (as root, or with sudo)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    print("==> chromium is missing: apt-get install -y chromium", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "chromium"], check=True, env=env)
    found = shutil.which("chromium")
    if not found:
        sys.exit("chromium did not install")
    return found


class Stack:
    """The processes this script starts, stopped (process group by group) at the end."""

    def __init__(self, home: Path, logs: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.ui = f"http://127.0.0.1:{self.port}"
        self.logs = logs
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "I2V_"))}
        self.env.update(
            PREFECT_HOME=str(home),
            PREFECT_API_URL=self.api,
            # Without it the UI served on this port calls the API on port 4200.
            PREFECT_UI_API_URL=self.api,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_WORKER_QUERY_SECONDS="2",
            ATLASCLOUD_API_KEY=SIM_KEY,  # the worker's runs call the simulator with it
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            list(args),
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            list(args), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            sys.exit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

    def prefect(self, *args: str, timeout: float = 300) -> str:
        return self.run(str(BIN / "prefect"), "--no-prompt", *args, timeout=timeout)

    def get(self, path: str, **params: Any) -> Any:
        return httpx.get(f"{self.api}{path}", params=params, timeout=30).raise_for_status().json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return httpx.post(f"{self.api}{path}", json=body, timeout=30).raise_for_status().json()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def wait_for(what: str, check: Any, timeout: float = 180, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            got = check()
            if got:
                return got
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(every)


def flow_run_final(stack: Stack, run_id: str, timeout: float = 300) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        run = stack.get(f"/flow_runs/{run_id}")
        return run if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    run: dict[str, Any] = wait_for(f"flow run {run_id}", final, timeout)
    return run


def run_deployment(stack: Stack, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    flow, dep = name.split("/")
    deployment = stack.get(f"/deployments/name/{flow}/{dep}")
    run = stack.post(f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})
    print(f"==> {name}: flow run {run['name']}", flush=True)
    return flow_run_final(stack, run["id"])


@contextlib.contextmanager
def browser(binary: str) -> Iterator[Any]:
    profile = Path(tempfile.mkdtemp(prefix="i2v-chromium-"))

    def once(url: str, path: Path, height: int, wait_ms: int) -> str:
        args = [
            binary,
            *CHROME_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={path}",
            f"--window-size=1400,{height}",
            f"--virtual-time-budget={wait_ms}",
            url,
        ]
        return subprocess.run(args, capture_output=True, text=True, timeout=120).stderr

    def shoot(
        url: str, path: Path, *, height: int = 1000, wait_ms: int = 9000, tries: int = 2
    ) -> None:
        """Screenshot `url` after `wait_ms` of virtual time: the richest (largest PNG) of
        `tries` shots with ever shorter waits, since a page that refreshes from the API
        (every 5 s) is sometimes caught mid-refresh, faded and empty."""
        best, errors = 0, ""
        for i in range(tries):
            shot = path.with_suffix(f".try{i}.png")
            errors = once(url, shot, height, wait_ms - i * wait_ms // (tries + 1))
            size = shot.stat().st_size if shot.is_file() else 0
            if size > best:
                best = size
                shot.replace(path)
            else:
                shot.unlink(missing_ok=True)
        print(f"    {path.name}: {'ok' if best else 'FAILED'}  ({url})", flush=True)
        if not best:
            print(errors[-2000:], file=sys.stderr)

    try:
        yield shoot
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def shoot_run(shoot: Any, stack: Stack, out: Path, label: str, run: dict[str, Any]) -> None:
    """A flow run's page (its graph), task runs, logs, and every artifact it made."""
    base = f"{stack.ui}/runs/flow-run/{run['id']}"
    shoot(base, out / f"{label}.png")
    # (A `?tab=Task Runs` link falls back to Logs: that tab is hidden until the run has
    # loaded. The graph names every task run; each step's page follows.)
    shoot(f"{base}?tab=Logs", out / f"{label}-logs.png", height=1800)
    task_runs = stack.post(
        "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 100}
    )
    for step in ("upload", "generate", "poll", "land"):
        first = next((t for t in task_runs if t["name"].startswith(f"{step} #1")), None)
        if first is not None:
            shoot(
                f"{stack.ui}/runs/task-run/{first['id']}",
                out / f"{label}-task-run-{step}.png",
                height=700,
                wait_ms=4500,
                tries=4,
            )
    artifacts = stack.post(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 50}
    )
    for art in artifacts:
        if art.get("key"):
            height = 1600 if art["type"] in ("markdown", "table") else 700
            shoot(
                f"{stack.ui}/artifacts/artifact/{art['id']}",
                out / f"{label}-artifact-{art['key']}.png",
                height=height,
            )


def cli_into_s3(stack: Stack) -> str | None:
    """The CLI once more, into an S3 DEST on a local moto server (the tests' S3): its
    artifacts show the presigned contact sheet and video links. None without moto."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("==> no moto: skipping the S3 DEST run", flush=True)
        return None
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # serves (a daemon thread) until the script ends: the shots load it
    aws = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "ui-shots",
        "AWS_SECRET_ACCESS_KEY": "ui-shots",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="ui-shots",
        aws_secret_access_key="ui-shots",
    ).create_bucket(Bucket="ui-shots")
    dest = "s3://ui-shots/demo"
    print(f"==> the CLI into {dest} (moto on {aws['AWS_ENDPOINT_URL']})", flush=True)
    saved = dict(stack.env)
    stack.env.update(aws)
    try:
        stack.run(
            str(BIN / "i2v"),
            "run",
            "examples/manifest.csv",
            "--dest",
            dest,
            "--config",
            "configs/local.yaml",
        )
    finally:
        stack.env = saved
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "out" / "ui-shots")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    binary = chromium()
    work = Path(tempfile.mkdtemp(prefix="i2v-ui-shots-"))
    logs = out / "logs"
    logs.mkdir()
    stack = Stack(work / "prefect-home", logs)
    try:
        print(f"==> prefect server on {stack.ui}", flush=True)
        stack.spawn(
            "server",
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(stack.port),
        )
        wait_for("the server", lambda: httpx.get(f"{stack.api}/health", timeout=2).is_success)
        stack.prefect(
            "work-pool",
            "create",
            POOL,
            "--type",
            "process",
            "--base-job-template",
            "deployments/process-pool.json",
        )
        stack.prefect("gcl", "create", "atlascloud", "--limit", "20")
        print("==> deploying deployments/prefect.yaml", flush=True)
        stack.prefect("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        sim_port = free_port()
        stack.spawn(
            "simulator",
            str(BIN / "i2v"),
            "simulate",
            "--port",
            str(sim_port),
            "--api-key",
            SIM_KEY,
            "--latency",
            "2",
        )
        sim = f"http://127.0.0.1:{sim_port}"
        wait_for("the simulator", lambda: httpx.get(f"{sim}/api/v1/models", timeout=2).is_success)
        # The form names the simulator as api.base_url: the worker must allow it.
        stack.env["I2V_ALLOWED_BASE_URLS"] = sim
        stack.spawn("worker", str(BIN / "prefect"), "worker", "start", "--pool", POOL)

        manifest = str(REPO / "examples" / "manifest.csv")
        worker_run = run_deployment(
            stack,
            "i2v-batch/batch",
            {
                "source": manifest,
                "dest": str(out / "dest-worker"),
                "options": {
                    "prompt": "slow push in, gentle motion",
                    "poll_interval_s": 0.25,
                    "expected_duration_s": 2,
                    "api": {"base_url": sim},
                },
            },
        )
        fanout_run = run_deployment(
            stack,
            "i2v-fanout/fanout",
            {
                "source": manifest,
                "dest": str(out / "dest-fanout"),
                "shard_size": 2,
                "options": {
                    "prompt": "slow push in, gentle motion",
                    "poll_interval_s": 0.25,
                    "expected_duration_s": 2,
                    "global_concurrency_limit": "atlascloud",
                    "api": {"base_url": sim},
                },
            },
        )
        inbox_run = run_deployment(stack, "i2v-inbox/inbox", {})
        print("==> the CLI: i2v run examples/manifest.csv", flush=True)
        stack.run(
            str(BIN / "i2v"),
            "run",
            "examples/manifest.csv",
            "--dest",
            str(out / "dest-cli"),
            "--config",
            "configs/local.yaml",
        )
        s3_dest = cli_into_s3(stack)
        recent = stack.post("/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 20})
        cli_run = next(r for r in recent if r["parameters"].get("dest") == str(out / "dest-cli"))
        s3_run = next(
            (r for r in recent if s3_dest and r["parameters"].get("dest") == s3_dest), None
        )
        for run in (worker_run, inbox_run, cli_run, *([s3_run] if s3_run else [])):
            print(f"    {run['name']}: {run['state_name']}, tags {run['tags']}", flush=True)

        deployment = stack.get("/deployments/name/i2v-batch/batch")
        print(f"==> screenshots into {out}", flush=True)
        with browser(binary) as shoot:
            shoot(
                f"{stack.ui}/deployments/deployment/{deployment['id']}/run",
                out / "form.png",
                height=3300,
                tries=3,
            )
            fanout = stack.get("/deployments/name/i2v-fanout/fanout")
            shoot(
                f"{stack.ui}/deployments/deployment/{fanout['id']}/run",
                out / "fanout-form.png",
                height=1600,
                tries=3,
            )
            shoot_run(shoot, stack, out, "worker-run", worker_run)
            shoot_run(shoot, stack, out, "fanout-run", fanout_run)
            # The runs' i2v.run.* events (and the assets' prefect.asset.* events).
            shoot(f"{stack.ui}/events", out / "events.png", height=1400)
            shoot_run(shoot, stack, out, "cli-run", cli_run)
            if s3_run is not None:
                shoot_run(shoot, stack, out, "s3-run", s3_run)
            shoot(f"{stack.ui}/runs/flow-run/{inbox_run['id']}", out / "inbox-unconfigured.png")
        (out / "runs.json").write_text(
            json.dumps(
                {
                    "ui": stack.ui,
                    "runs": {
                        r["name"]: r["state_name"]
                        for r in (worker_run, fanout_run, inbox_run, cli_run)
                    },
                    "task_runs": sorted(
                        f"{t['name']}: {t['state_name']}"
                        for t in stack.post(
                            "/task_runs/filter",
                            {
                                "task_runs": {
                                    "flow_run_id": {"any_": [worker_run["id"], cli_run["id"]]}
                                },
                                "limit": 100,
                            },
                        )
                    ),
                },
                indent=2,
            )
        )
        print(f"==> done: {out}", flush=True)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
