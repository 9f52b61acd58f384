"""Approval before big runs, against a real `prefect server` and an `i2v worker`: a
deployment run over `approve_over_usd` pauses with nothing paid; approving (resume with
input through the API) pays each row once; refusing pays nothing; under it, no pause."""

from __future__ import annotations

import csv
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.helpers import EXAMPLES, TEST_API_KEY
from tests.prefect_stack import POOL, Stack, client_for, simulated_stack

pytestmark = [pytest.mark.timeout(420), pytest.mark.server]

SECRET_BLOCK = "atlascloud-approval-key"
SECRET_VALUE = f"sk-block-{uuid.uuid4().hex}"
_ = POOL


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, logs = tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("logs")
    inbox = tmp_path_factory.mktemp("inbox")
    with simulated_stack(
        home,
        logs,
        limit=3,
        inbox=inbox,
        latency_s=0.5,
        api_key=SECRET_VALUE,
        wrong_env_key=TEST_API_KEY,
    ) as s:
        with temporary_settings(updates={PREFECT_API_URL: s.url}):
            Secret(value=SECRET_VALUE).save(SECRET_BLOCK, overwrite=True)  # type: ignore[arg-type]
        s.i2v_worker("i2v-a1", limit=3)
        yield s


def _manifest(folder: Path, tag: str) -> Path:
    shutil.copy(EXAMPLES / "astronaut.png", folder / "astronaut.png")
    path = folder / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "prompt"])
        writer.writeheader()
        writer.writerows(
            {"id": f"r{i}", "image": "astronaut.png", "prompt": f"{tag} take {i}"} for i in range(3)
        )
    return path


def _start(stack: Stack, tmp_path: Path, tag: str, approve_over: float) -> tuple[Any, Path]:
    options = {
        "poll_interval_s": 0.2,
        "expected_duration_s": 0.5,
        "approve_over_usd": approve_over,
        "approve_timeout_s": 120,
        "api": {"base_url": stack.sim.url, "api_key_secret_block": SECRET_BLOCK},
    }
    dest = tmp_path / "dest"
    with client_for(stack.url) as client:
        run = client.create_flow_run_from_deployment(
            stack.deployments["i2v-batch/batch"].id,
            parameters={
                "source": str(_manifest(tmp_path, tag)),
                "dest": str(dest),
                "options": options,
            },
        )
    return run, dest


def _wait(stack: Stack, run_id: Any, done: Any, timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    with client_for(stack.url) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and done(run.state):
                return run
            assert time.monotonic() < deadline, (
                f"flow run {run.name} still {run.state}\n{stack.log_text('i2v-a1')[-3000:]}"
            )
            time.sleep(0.5)


def _resume(stack: Stack, run_id: Any, answer: dict[str, Any]) -> None:
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.url}):
        resume_flow_run(run_id, run_input=answer)


def _jobs(stack: Stack) -> int:
    return int(stack.sim.stats.jobs_created)


def test_over_the_threshold_pauses_then_approved_pays_each_row_once(
    stack: Stack, tmp_path: Path
) -> None:
    before = _jobs(stack)
    run, dest = _start(stack, tmp_path, "approved", approve_over=0.5)
    paused = _wait(stack, run.id, lambda s: s.is_paused() or s.is_final())
    assert paused.state.is_paused(), paused.state
    assert _jobs(stack) == before, "nothing is paid before the approval"
    _resume(stack, run.id, {"approve": True})
    done = _wait(stack, run.id, lambda s: s.is_final())
    assert done.state.is_completed(), done.state
    table = pd.read_parquet(dest / "results.parquet")
    assert set(table["status"]) == {"landed"}, table[["id", "status", "error"]]
    assert _jobs(stack) == before + 3
    assert max(stack.sim.stats.submissions_per_input.values()) == 1


def test_refused_pays_nothing(stack: Stack, tmp_path: Path) -> None:
    before = _jobs(stack)
    run, dest = _start(stack, tmp_path, "refused", approve_over=0.5)
    paused = _wait(stack, run.id, lambda s: s.is_paused() or s.is_final())
    assert paused.state.is_paused(), paused.state
    _resume(stack, run.id, {"approve": False})
    _wait(stack, run.id, lambda s: s.is_final())
    assert _jobs(stack) == before, "a refused run pays nothing"
    table = pd.read_parquet(dest / "results.parquet")
    assert set(table["status"]) == {"not_submitted"}
    assert all("approve" in e for e in table["error"])


def test_under_the_threshold_never_pauses(stack: Stack, tmp_path: Path) -> None:
    before = _jobs(stack)
    run, _ = _start(stack, tmp_path, "small", approve_over=5.0)
    done = _wait(stack, run.id, lambda s: s.is_final())
    assert done.state.is_completed(), done.state
    with client_for(stack.url) as client:
        states = client.read_flow_run_states(run.id)
    assert not any(s.is_paused() for s in states)
    assert _jobs(stack) == before + 3


def test_a_fanout_asks_once_in_the_parent(stack: Stack, tmp_path: Path) -> None:
    before = _jobs(stack)
    options = {
        "poll_interval_s": 0.2,
        "expected_duration_s": 0.5,
        "approve_over_usd": 0.5,
        "approve_timeout_s": 120,
        "api": {"base_url": stack.sim.url, "api_key_secret_block": SECRET_BLOCK},
    }
    dest = tmp_path / "dest"
    with client_for(stack.url) as client:
        run = client.create_flow_run_from_deployment(
            stack.deployments["i2v-fanout/fanout"].id,
            parameters={
                "source": str(_manifest(tmp_path, "fanned")),
                "dest": str(dest),
                "shard_size": 2,
                "options": options,
            },
        )
    paused = _wait(stack, run.id, lambda s: s.is_paused() or s.is_final())
    assert paused.state.is_paused(), paused.state
    assert _jobs(stack) == before
    _resume(stack, run.id, {"approve": True})
    done = _wait(stack, run.id, lambda s: s.is_final())
    assert done.state.is_completed(), done.state
    assert _jobs(stack) == before + 3
    table = pd.read_parquet(dest / "results.parquet")
    assert set(table["status"]) == {"landed"}, table[["id", "status", "error"]]
    summaries = [json.loads(p.read_text()) for p in (dest / "runs").glob("*/summary.json")]
    [parent] = [s for s in summaries if s.get("shards")]
    assert parent["spent_usd"] == pytest.approx(0.84) == parent["charged_usd"]
    with client_for(stack.url) as client:
        shards = [
            r for r in client.read_flow_runs(limit=200) if r.name.startswith(f"{done.name}-shard-")
        ]
        assert len(shards) == 2
        for shard in shards:
            assert not any(s.is_paused() for s in client.read_flow_run_states(shard.id))
