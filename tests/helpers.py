"""Helpers shared by the test modules (no test module imports another)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from i2v.config import BatchOptions, load_options

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# conftest.py sets it before any test runs; a test never reaches a real provider.
TEST_API_KEY = "sk-test-NEVER-LOG-THIS-3f9a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def options_for(sim: Any, **overrides: Any) -> BatchOptions:
    """Options pointing at an external simulator (so tests can turn its knobs)."""
    api = {"simulator": False, "base_url": sim.url, **overrides.pop("api", {})}
    base: dict[str, Any] = {
        "concurrency": 8,
        "poll_interval_s": 0.05,
        "expected_duration_s": 0.3,
        "timeout_s": 30,
        "global_concurrency_limit": None,
    }
    base.update(overrides)
    return load_options(None, api=api, **base)


def write_manifest(folder: Path, rows: list[dict[str, Any]], name: str = "manifest.csv") -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path = folder / name
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def run_batch(source: str | Path, dest: str | Path, options: BatchOptions) -> Any:
    from flows.batch import i2v_batch

    return asyncio.run(i2v_batch(str(source), str(dest), options))


def sim_config(tmp_path: Path, sim: Any, *, fast: bool = True, **extra: Any) -> Path:
    """A YAML config pointing the CLI at an external simulator (`fast`: polls and
    timeouts sized for a simulator's sub-second videos; `extra`: any other options)."""
    speed = {"poll_interval_s": 0.05, "expected_duration_s": 0.3, "timeout_s": 60}
    settings = {**(speed if fast else {}), "global_concurrency_limit": None, **extra}
    lines = [
        *[f"{k}: {json.dumps(v)}" for k, v in settings.items()],
        "api:",
        "  simulator: false",
        f"  base_url: {sim.url}",
    ]
    path = tmp_path / "sim.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_cli(
    args: list[str], env: dict[str, str], *, merge_stderr: bool = False
) -> subprocess.Popen[bytes]:
    """`python -m cli.main ARGS` in its own session (so kill -9 takes its whole group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        start_new_session=True,
    )


def state_phases(dest: Path) -> list[str]:
    out = []
    for p in (dest / "_state").glob("*.json"):
        try:
            out.append(json.loads(p.read_text())["phase"])
        except (ValueError, KeyError, OSError):
            out.append("partial")
    return out


def table(dest: Path) -> pd.DataFrame:
    return pd.read_parquet(dest / "results.parquet")


def requests_seen(sim: Any) -> int:
    return sum(sim.stats.responses_by_status.values())


def assert_money_rules(sim: Any, dest: Path, *, resubmits: int = 0) -> None:
    """Nothing paid twice, nothing lost.

    Paid twice: no input got more jobs than 1 + the resubmits the user asked for.
    Lost: every job the provider created is landed (its video in DEST) or recorded
    resumable in DEST/_state (polled or landed by the next run, or failed at the
    provider); a job whose id we never learned is covered by an ambiguous record,
    unless the user resubmitted it (`resubmits`).
    """
    per_input = sim.stats.submissions_per_input
    assert max(per_input.values(), default=0) <= 1 + resubmits, per_input
    assert sum(per_input.values()) - len(per_input) == resubmits, per_input
    records = [json.loads(p.read_text()) for p in (dest / "_state").glob("*.json")]
    by_prediction = {r["prediction_id"]: r for r in records if r.get("prediction_id")}
    unknown = 0
    for job_id in list(sim.simulator.jobs):
        record = by_prediction.get(job_id)
        if record is None:
            unknown += 1
            continue
        if record["phase"] == "landed":
            assert (dest / record["video_key"]).is_file(), record
        else:
            assert record["phase"] in ("submitted", "succeeded", "timed_out", "failed"), record
            if record["phase"] == "succeeded":
                assert record["output_url"], record
    held = sum(1 for r in records if r["phase"] in ("submitting", "ambiguous"))
    assert unknown <= held + resubmits, f"{unknown} paid jobs have no record in {dest}/_state"


def cli_run(manifest: Path, dest: Path, config: Path, *extra: str) -> Any:
    """The real `i2v run` command, in-process (the session's Prefect test server)."""
    from typer.testing import CliRunner

    from cli.main import app

    args = ["run", str(manifest), "--dest", str(dest), "--config", str(config), *extra]
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def when(cond: Callable[[], bool], action: Callable[[], None], timeout_s: float = 90) -> None:
    """Run `action` in a background thread as soon as `cond()` holds."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        action()

    threading.Thread(target=watch, daemon=True).start()


def subprocess_env(tmp_path: Path, api_key: str) -> dict[str, str]:
    """Env for an `i2v` subprocess: the session's Prefect test server (starting an
    ephemeral one costs ~15 s on two cores), its own PREFECT_HOME under tmp_path."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        ATLASCLOUD_API_KEY=api_key,
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    return env


def kill_when(proc: subprocess.Popen[bytes], cond: Callable[[], bool], what: str) -> None:
    """kill -9 the CLI's whole process group as soon as `cond()` holds."""
    deadline = time.monotonic() + 120
    while not cond():
        if proc.poll() is not None:
            out, errs = proc.communicate()
            pytest.fail(f"the CLI ended before {what}:\n{out.decode()}\n{errs.decode()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def state_records(dest: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in (dest / "_state").glob("*.json")]


def read_artifacts(*, key: str | None = None, flow_run_id: Any = None) -> list[Any]:
    """Artifacts from the Prefect API, newest first, filtered on the server (a session's
    harness holds many runs' artifacts: a plain `limit` would miss the newest)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    wanted = ArtifactFilter(
        key=ArtifactFilterKey(any_=[key]) if key else None,
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None,
    )
    with get_client(sync_client=True) as client:
        return list(
            client.read_artifacts(artifact_filter=wanted, sort=ArtifactSort.CREATED_DESC, limit=200)
        )


class Terminal:
    """`i2v ARGS` on a pseudo-terminal, as a user at a terminal runs it (from the
    repository, with its own PREFECT_HOME under `tmp_path` and a temporary server)."""

    def __init__(self, tmp_path: Path, args: list[str]) -> None:
        import pty

        env = {**os.environ, "ATLASCLOUD_API_KEY": TEST_API_KEY, "COLUMNS": "160"}
        env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
        env.pop("PREFECT_API_URL", None)
        self.leader, follower = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            cwd=REPO,
            env=env,
            stdin=follower,
            stdout=follower,
            stderr=follower,
        )
        os.close(follower)
        self.seen = b""

    def read(self, timeout_s: float) -> bytes:
        """What the command wrote within `timeout_s` (b"" when nothing came)."""
        import select

        got = b""
        while select.select([self.leader], [], [], timeout_s)[0]:
            try:
                chunk = os.read(self.leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            got += chunk
            timeout_s = min(timeout_s, 0.2)
        self.seen += got
        return got

    def type(self, text: str) -> None:
        os.write(self.leader, text.encode())

    def finish(self, timeout_s: float = 120) -> str:
        """Everything it wrote, once it has exited (its code in `proc.returncode`)."""
        while True:
            try:
                chunk = os.read(self.leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.seen += chunk
        self.proc.wait(timeout=timeout_s)
        os.close(self.leader)
        return self.seen.decode(errors="replace")
