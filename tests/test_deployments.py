"""Deployments against a real `prefect server`: deploy from deployments/prefect.yaml, two
process workers, the fan-out over 24 rows in 4 shards under a global concurrency limit;
and the fan-out's shard planning and merging on their own.

Everything runs on loopback: the server and the workers are subprocesses with their own
PREFECT_HOME; the Atlas simulator serves from this process. The Atlas key reaches the
runs only through a Prefect Secret block: the workers' ATLASCLOUD_API_KEY is a wrong key
the simulator refuses, so a run that did not read the block would fail. The runs' forms
point `api.base_url` at the simulator, which the workers allow by I2V_ALLOWED_BASE_URLS
(a form alone cannot choose where the key goes: `test_a_form_cannot_send_the_key_elsewhere`).
"""

from __future__ import annotations

import asyncio
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

from i2v.models import MODELS
from tests.helpers import EXAMPLES, REPO, TEST_API_KEY
from tests.listeners import Listener
from tests.prefect_stack import POOL, Stack, all_logs, client_for, simulated_stack

pytestmark = [pytest.mark.timeout(420)]

LIMIT = 3
WORKERS = ("i2v-w1", "i2v-w2")
SECRET_BLOCK = "atlascloud-test-key"
SECRET_VALUE = f"sk-block-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Stack]:
    """A prefect server, the pool, the limit, the deployments, the lost-run automation,
    the simulator and two workers that allow it as their API (and reach the moto S3
    server: `s3_endpoint` set AWS_ENDPOINT_URL before they start)."""
    home, logs = tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("logs")
    inbox = tmp_path_factory.mktemp("inbox")
    # The env key is wrong on purpose: the runs must take the key from the Secret block.
    with simulated_stack(
        home,
        logs,
        limit=LIMIT,
        inbox=inbox,
        latency_s=1.0,
        api_key=SECRET_VALUE,
        wrong_env_key=TEST_API_KEY,
    ) as s:
        s.cli("automation", "create", "--from-file", "deployments/automations.yaml")
        for name in WORKERS:
            s.i2v_worker(name, limit=3)
        yield s


# ----------------------------------------------------------------------- schemas


@pytest.mark.server
def test_deployment_parameter_schemas(stack: Stack) -> None:
    batch = stack.deployments["i2v-batch/batch"]
    fanout = stack.deployments["i2v-fanout/fanout"]
    inbox = stack.deployments["i2v-inbox/inbox"]
    shard = stack.deployments["i2v-shard/shard"]
    for dep in (batch, fanout, inbox, shard):
        assert dep.work_pool_name == POOL
        assert dep.enforce_parameter_schema is True
        # The pull step runs the flows from this checkout, whatever the worker's cwd.
        steps = dep.pull_steps or []
        assert steps, dep.name
        assert steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)

    # The pool's locked template: every run sends a heartbeat every 30 s (a run whose
    # machine dies is noticed), and no run may set env or command of its own.
    with client_for(stack.url) as client:
        template = client.read_work_pool(POOL).base_job_template
    assert template["job_configuration"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert set(template["variables"]["properties"]) == {"name", "labels", "stream_output"}

    # deployments/automations.yaml as the server took it: silent runs of i2v deployments
    # (not every flow run: a CLI run beats every 180 s) are marked Crashed after 90 s.
    with client_for(stack.url) as client:
        [lost] = client.read_automations_by_name("i2v-crash-lost-runs")
    assert lost.enabled and lost.trigger.posture == "Proactive"
    assert lost.trigger.within.total_seconds() == 90
    assert lost.trigger.after == {"prefect.flow-run.heartbeat"}
    assert "prefect.flow-run.Completed" in lost.trigger.expect
    related = [dict(m.root) for m in lost.trigger.match_related]
    assert {"prefect.resource.role": "deployment"} in related
    assert {"prefect.resource.id": "prefect.tag.i2v"} in related
    assert [a.type for a in lost.actions] == ["change-flow-run-state"]
    assert lost.actions[0].state == "CRASHED"
    # ... and a fan-out's shards by their tag: the one in the parent has no deployment.
    with client_for(stack.url) as client:
        [shards] = client.read_automations_by_name("i2v-crash-lost-shards")
    related = [dict(m.root) for m in shards.trigger.match_related]
    assert related == [{"prefect.resource.id": "prefect.tag.i2v-shard"}]
    assert shards.trigger.within.total_seconds() == 90 and shards.actions[0].state == "CRASHED"

    schema = batch.parameter_openapi_schema
    props = schema["properties"]
    assert schema["required"] == ["source", "dest"]
    assert props["source"]["type"] == "string" and props["dest"]["type"] == "string"
    # The form a person fills: options expanded (not nullable, with its defaults), no
    # fan-out internals (those are the shard deployment's), no simulator switch.
    assert set(props) == {"source", "dest", "options"}
    assert props["options"]["$ref"] == "#/definitions/BatchOptions"
    assert "anyOf" not in props["options"] and props["options"]["default"]["concurrency"] == 8
    assert set(shard.parameter_openapi_schema["properties"]) == {
        "source",
        "dest",
        "lines",
        "options",
    }
    defs = schema["definitions"]
    opts = defs["BatchOptions"]["properties"]
    model = opts["model"]
    if "$ref" in model:  # an Enum class is a definition; a Literal is inline
        model = {**defs[model["$ref"].rsplit("/", 1)[1]], **model}
    assert sorted(model["enum"]) == sorted(n for n, spec in MODELS.items() if spec.needs_image)
    assert opts["poll_interval_s"]["title"] == "Poll interval (s)"
    assert "simulator" not in defs["ApiSettings"]["properties"]
    assert model["default"] == "minimax/hailuo-2.3/i2v-standard"
    assert opts["duration"]["enum"] == [6, 10] and opts["duration"]["default"] == 6
    assert opts["concurrency"]["type"] == "integer" and opts["concurrency"]["default"] == 8
    assert opts["concurrency"]["minimum"] == 1
    assert opts["global_concurrency_limit"]["default"] == "atlascloud"
    assert opts["s3_pictures"]["enum"] == ["presign", "upload"]
    assert "budget_usd" in opts and "description" in opts["budget_usd"]
    # Secrets are never parameters: only the NAME of the Secret block is.
    assert "api_key" not in defs["ApiSettings"]["properties"]
    assert "api_key_secret_block" in defs["ApiSettings"]["properties"]

    fprops = fanout.parameter_openapi_schema["properties"]
    shard_size = fprops["shard_size"]
    assert {t["type"] for t in shard_size["anyOf"]} == {"integer", "null"}
    assert {"type": "integer", "minimum": 1} in shard_size["anyOf"]  # 0 refused at the form
    assert shard_size["default"] is None and "shard_size" not in fanout.parameters
    assert fprops["deployment"]["default"] == "i2v-shard/shard"
    assert fanout.parameters["deployment"] == "i2v-shard/shard"
    assert "BatchOptions" in fanout.parameter_openapi_schema["definitions"]

    iprops = inbox.parameter_openapi_schema["properties"]
    assert {"inbox", "dest_root", "options"} <= set(iprops)
    assert inbox.parameters == {
        "inbox": stack.env["I2V_INBOX"],
        "dest_root": stack.env["I2V_DEST_ROOT"],
    }
    assert [s.schedule.cron for s in inbox.schedules] == ["*/10 * * * *"]
    assert all(s.active for s in inbox.schedules), "the yaml ships the schedule active"

    # enforce_parameter_schema: the server refuses a duration the model cannot do.
    from prefect.exceptions import PrefectHTTPStatusError

    with client_for(stack.url) as client, pytest.raises(PrefectHTTPStatusError) as info:
        client.create_flow_run_from_deployment(
            batch.id, parameters={"source": "x.csv", "dest": "out", "options": {"duration": 7}}
        )
    assert info.value.response.status_code in (409, 422)
    # ... and takes the form as it opens: its defaults pass the schema (a run scheduled
    # far ahead, so no worker takes it).
    from datetime import UTC, datetime, timedelta

    from prefect.states import Scheduled

    with client_for(stack.url) as client:
        later = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=30))
        run = client.create_flow_run_from_deployment(
            batch.id,
            parameters={"source": "x.csv", "dest": "out", "options": props["options"]["default"]},
            state=later,
        )
        client.delete_flow_run(run.id)


# ------------------------------------------------------------- who decides what


def _save_key(stack: Stack) -> None:
    """The simulator's key in the Secret block the forms name (the workers have none)."""
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.url}):
        Secret(value=SECRET_VALUE).save(SECRET_BLOCK, overwrite=True)  # type: ignore[arg-type]


def _fast_options(stack: Stack, **changes: Any) -> dict[str, Any]:
    """A form's options against the stack's simulator, with short polls and timeouts."""
    return {
        "poll_interval_s": 0.2,
        "expected_duration_s": 1.0,
        "timeout_s": 60,
        "api": {"base_url": stack.sim.url, "api_key_secret_block": SECRET_BLOCK},
        **changes,
    }


def _start_fanout(
    client: Any, stack: Stack, manifest: Path, dest: Path, shard_size: int, options: Any
) -> Any:
    """A flow run of i2v-fanout/fanout, as a form would create it."""
    return client.create_flow_run_from_deployment(
        stack.deployments["i2v-fanout/fanout"].id,
        parameters={
            "source": str(manifest),
            "dest": str(dest),
            "shard_size": shard_size,
            "options": options,
        },
    )


def _wait_final(client: Any, run_id: Any, timeout_s: float = 180) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"flow run {run.name} still {run.state}"
        time.sleep(1)


@pytest.mark.server
def test_a_form_cannot_send_the_key_elsewhere(stack: Stack, tmp_path: Path) -> None:
    """A run of i2v-batch/batch whose form points api.base_url at a listener (the key is
    in a Secret block the worker can read) fails before any request: the listener sees
    no connection, not even the picture that sits on it. A form's allow_outside_base
    fails the same way: these workers do not allow it. Nor can a run set the workers'
    environment through job variables (the pool's template fixes env and command)."""

    _save_key(stack)
    listener = Listener(record=True)
    try:
        manifest, _ = _manifest(tmp_path)
        with manifest.open("a", newline="") as f:  # a picture a check would fetch
            csv.writer(f).writerow(["web", f"https://{listener.url[7:]}/picture.png", "pan"])
        batch = stack.deployments["i2v-batch/batch"].id
        forms = {
            "base_url": {"api": {"base_url": listener.url, "api_key_secret_block": SECRET_BLOCK}},
            "outside": {"allow_outside_base": True, "api": {"api_key_secret_block": SECRET_BLOCK}},
        }
        with client_for(stack.url) as client:
            # The pool's locked template: a run cannot set the worker's environment (nor
            # its command) through job variables; the server refuses it.
            from prefect.exceptions import PrefectHTTPStatusError

            for variables in (
                {"env": {"ATLASCLOUD_BASE_URL": listener.url, "I2V_ALLOW_OUTSIDE_BASE": "1"}},
                {"command": "python -c 'print(1)'"},
            ):
                with pytest.raises(PrefectHTTPStatusError) as info:
                    client.create_flow_run_from_deployment(
                        batch,
                        parameters={"source": str(manifest), "dest": str(tmp_path / "x")},
                        job_variables=variables,
                    )
                assert info.value.response.status_code == 422, variables
                assert f"'{next(iter(variables))}' was unexpected" in info.value.response.text
            created = {
                name: client.create_flow_run_from_deployment(
                    batch,
                    parameters={
                        "source": str(manifest),
                        "dest": str(tmp_path / f"dest-{name}"),
                        "options": options,
                    },
                )
                for name, options in forms.items()
            }
            runs = {name: _wait_final(client, run.id) for name, run in created.items()}
            logs = all_logs(client)
    finally:
        listener.close()

    sent = b"".join(listener.received)
    leaked = SECRET_VALUE.encode() in sent  # a bool: a failure must not print the key
    assert not leaked, "the worker sent the key to the form's URL"
    assert listener.received == [], f"the worker connected to the form's URL: {sent[:200]!r}"
    for name, run in runs.items():
        assert run.state is not None and run.state.is_failed(), (name, run.state)
        assert not (tmp_path / f"dest-{name}").exists(), f"the refused {name} run wrote DEST"
    message = str(runs["base_url"].state.message)
    assert (
        f"options.api.base_url '{listener.url}' is not this worker's API (http://127.0.0.1:9): "
        "a run's form cannot choose where the key is sent. Set ATLASCLOUD_BASE_URL, or add "
        f"{listener.url} to I2V_ALLOWED_BASE_URLS, in the worker's environment"
    ) in message, message
    message = str(runs["outside"].state.message)
    assert "options.allow_outside_base is true" in message, message
    assert "I2V_ALLOW_OUTSIDE_BASE=1" in message, message
    said = [log.message for log in logs if log.flow_run_id in {r.id for r in runs.values()}]
    assert not any(SECRET_VALUE in line or TEST_API_KEY in line for line in said)
    assert not any("distinct inputs" in line for line in said), "the manifest was read"


# ------------------------------------------------------------------------- fan-out


def _manifest(folder: Path) -> tuple[Path, int]:
    """24 rows over three pictures: 23 distinct inputs, the duplicate 17 lines apart so
    it would fall into another shard if shards were cut by position alone."""
    for name in ("astronaut.png", "coffee.png", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, folder / name)
    pictures = ["astronaut.png", "coffee.png", "rocket.jpg"]
    rows = [
        {"id": f"r{i:02d}", "image": pictures[i % 3], "prompt": f"slow push in, take {i}"}
        for i in range(1, 25)
    ]
    rows[19] = {**rows[2], "id": "r20"}  # the same input as r03
    path = folder / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "prompt"])
        writer.writeheader()
        writer.writerows(rows)
    return path, 23


@pytest.mark.server
def test_fanout_over_two_workers_under_the_provider_cap(stack: Stack, tmp_path: Path) -> None:

    sim = stack.sim  # latency 1 s; allowed as api.base_url by the workers' environment
    manifest, distinct = _manifest(tmp_path)
    dest = tmp_path / "dest"
    _save_key(stack)
    options = _fast_options(
        stack,
        concurrency=8,  # per shard; the global limit (3) must win across shards
        global_concurrency_limit="atlascloud",
    )
    started = time.monotonic()
    with client_for(stack.url) as client:
        parent = _start_fanout(client, stack, manifest, dest, 6, options)
        while True:
            parent = client.read_flow_run(parent.id)
            if parent.state is not None and parent.state.is_final():
                break
            if time.monotonic() - started > 240:
                pytest.fail(
                    "the fan-out did not finish in 240 s; state "
                    f"{parent.state}\n{stack.log_text(WORKERS[0])[-4000:]}"
                    f"\n{stack.log_text(WORKERS[1])[-4000:]}"
                )
            time.sleep(1)
        logs = all_logs(client)
        shard_runs = [
            r
            for r in client.read_flow_runs(limit=200)
            if r.name.startswith(f"{parent.name}-shard-")
        ]
        helpers = [
            r
            for r in client.read_flow_runs(limit=200)
            if r.name.startswith(f"{parent.name}-helps-shard-")
        ]
        artifacts = client.read_artifacts(limit=200)
        runs = client.read_flow_runs(limit=200)
        gcl = client.read_global_concurrency_limit_by_name("atlascloud")
    elapsed = time.monotonic() - started

    messages = "\n".join(f"{log.flow_run_id} {log.message}" for log in logs)
    assert parent.state is not None and parent.state.is_completed(), (
        f"{parent.state}\n{messages[-6000:]}"
    )

    # Every row landed, once, with its own video.
    table = pd.read_parquet(dest / "results.parquet")
    assert len(table) == 24 and table["id"].is_unique
    assert set(table["status"]) == {"landed"}, table[["id", "status", "error"]]
    assert list(table["line"]) == sorted(table["line"])
    assert sorted(p.stem for p in (dest / "videos").glob("*.mp4")) == sorted(table["id"])
    pids = {str(k): str(v) for k, v in zip(table["id"], table["prediction_id"], strict=True)}
    assert pids["r20"] == pids["r03"], "the duplicate must ride along with its original"
    assert sim.stats.jobs_created == distinct
    assert set(sim.stats.submissions_per_input.values()) == {1}, "an input was paid twice"

    # Four shards, each a subflow of the parent: the first runs in the parent's own
    # process, the others are runs of the shard deployment, spread over both workers.
    assert len(shard_runs) == 4
    shard_id = stack.deployments["i2v-shard/shard"].id
    for run in shard_runs:
        assert run.parent_task_run_id is not None, "a shard is not linked as a subflow"
        assert run.state is not None and run.state.is_completed()
        assert run.parameters["lines"] and "write_table" not in run.parameters
    here = [r for r in shard_runs if r.deployment_id is None]
    remote = [r for r in shard_runs if r.deployment_id == shard_id]
    assert len(here) == 1 and here[0].name.endswith("-shard-1-of-4") and len(remote) == 3
    lines = [n for r in shard_runs for n in r.parameters["lines"]]
    assert sorted(lines) == sorted(table["line"]), "every row in exactly one shard"
    # While shards waited for a worker, the parent ran their rows in its own process
    # (flows/helping.py): nothing was paid twice (above), and what it paid is in the total.
    # The last shard always waits at first (a shard process takes seconds to start).
    assert helpers, "the parent ran no waiting shard's rows"
    by_index = {r.name.rsplit("-shard-", 1)[1]: r for r in remote}
    for run in helpers:
        assert run.deployment_id is None and run.parent_task_run_id is not None
        index = run.name.rsplit("-shard-", 1)[1]
        assert run.parameters["lines"] == by_index[index].parameters["lines"], run.name
    summaries = [json.loads(p.read_text()) for p in (dest / "runs").glob("*/summary.json")]
    [merged] = [s for s in summaries if s.get("shards")]
    assert merged["spent_usd"] == pytest.approx(0.28 * distinct), merged["spent_usd"]

    def taken_by(run: Any) -> set[str]:
        # Both workers may try a run on the shared queue (each logs "submitting"; the
        # server aborts the second): the one whose own log says it started it took it.
        started = f"Flow run '{run.name}' submitted to infrastructure"
        return {name for name in WORKERS if started in stack.log_text(name)}

    (parent_worker,) = taken_by(parent)
    took = {str(r.id): next(iter(taken_by(r))) for r in remote}
    assert set(took.values()) == set(WORKERS), f"one worker took every shard: {took}"
    # Its own worker already runs the parent and shard 1: the other takes two.
    assert sorted(took.values()).count(parent_worker) == 1, (parent_worker, took)
    assert {r.work_queue_name for r in remote} == {f"i2v-worker-{n}" for n in WORKERS}

    # The provider never saw more predictions at once than the global limit, and the
    # limit was actually reached (several shards ran at once).
    assert 2 <= sim.stats.max_in_flight <= LIMIT, sim.stats.max_in_flight
    assert gcl.active_slots == 0, "slots leaked"

    # What a person sees: merged summary, progress, contact sheet on disk.
    keys = {a.key for a in artifacts if a.key}
    assert {"i2v-fanout-summary", "i2v-results", "i2v-fanout-progress"} <= keys, keys
    summary_md = next(a for a in artifacts if a.key == "i2v-fanout-summary").data
    assert "| landed | 24 |" in summary_md and "## Shards" in summary_md
    sheets = list((dest / "runs").glob("*/contact_sheet.png"))
    assert sheets, "no contact sheet"

    # The key never shows: not in logs, artifacts, parameters or process output.
    leaks = [
        *(log.message for log in logs if SECRET_VALUE in log.message),
        *(str(a.key) for a in artifacts if SECRET_VALUE in str(a.data) + str(a.description)),
        *(r.name for r in runs if SECRET_VALUE in str(r.parameters)),
        *(n for n in ("server", *WORKERS) if SECRET_VALUE in stack.log_text(n)),
    ]
    assert not leaks, f"the API key leaked into: {leaks}"
    # One event for the whole fan-out, none per shard, related to the parent's run.
    [event] = run_events(stack, dest)
    assert event["event"] == "i2v.run.completed" and event["payload"]["counts"] == {"landed": 24}
    related = {r["prefect.resource.id"] for r in event["related"]}
    assert f"prefect.flow-run.{parent.id}" in related
    print(f"fan-out of 24 rows in 4 shards: {elapsed:.1f} s")


def run_events(stack: Stack, dest: Path | str, want: int = 1) -> list[dict[str, Any]]:
    """The `i2v.run.*` events of DEST, read through the server's API
    (POST /api/events/filter), waiting up to 30 s for `want` of them."""
    import httpx

    query = {
        "filter": {
            "event": {"prefix": ["i2v.run."]},
            "resource": {"id": [f"i2v.dest.{dest}"]},
        },
        "limit": 50,
    }
    deadline = time.monotonic() + 30
    while True:
        found = httpx.post(f"{stack.url}/events/filter", json=query, timeout=10).json()["events"]
        if len(found) >= want or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.5)


@pytest.mark.server
def test_parquet_and_jsonl_manifests_local_and_on_s3_through_deployment_runs(
    stack: Stack, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    """Four runs of i2v-batch/batch: a Parquet and a JSON Lines manifest, each on a
    local disk and on S3; every row lands, typed columns stay typed, and each run leaves
    one i2v.run.completed event naming its DEST and counts."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    _save_key(stack)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    rows = [
        {"id": "a", "image": "astronaut.png", "prompt": "push in", "duration": 6, "take": 1},
        {"id": "b", "image": "rocket.jpg", "prompt": "lift off", "duration": 10, "take": 2},
    ]
    for name in ("astronaut.png", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
        s3.upload_file(str(EXAMPLES / name), s3_bucket, f"in/{name}")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sources = {}
    for fmt in ("parquet", "jsonl"):
        sources[f"local-{fmt}"] = str(tmp_path / f"m.{fmt}")
        s3.upload_file(str(tmp_path / f"m.{fmt}"), s3_bucket, f"in/m.{fmt}")
        sources[f"s3-{fmt}"] = f"s3://{s3_bucket}/in/m.{fmt}"
    options = _fast_options(stack)
    with client_for(stack.url) as client:
        created = {
            name: client.create_flow_run_from_deployment(
                stack.deployments["i2v-batch/batch"].id,
                parameters={"source": src, "dest": str(tmp_path / name), "options": options},
            )
            for name, src in sources.items()
        }
        runs = {name: _wait_final(client, run.id, 240) for name, run in created.items()}
    for name, run in runs.items():
        assert run.state is not None and run.state.is_completed(), (name, run.state)
        table = pd.read_parquet(tmp_path / name / "results.parquet")
        assert list(table["status"]) == ["landed", "landed"], (name, table)
        assert list(table["take"]) == [1, 2] and str(table["take"].dtype) == "Int64", name
        [event] = run_events(stack, tmp_path / name)
        assert event["event"] == "i2v.run.completed", (name, event)
        assert event["payload"]["dest"] == str(tmp_path / name)
        assert event["payload"]["counts"] == {"landed": 2}
        assert event["payload"]["source"] == sources[name]
        related = {r["prefect.resource.id"] for r in event["related"]}
        assert f"prefect.flow-run.{run.id}" in related


@pytest.mark.server
def test_a_bake_off_fans_out_by_whole_lines_and_merges_one_sheet(
    stack: Stack, tmp_path: Path
) -> None:
    """A fan-out of a two-model bake-off: each shard runs whole lines (both pairs of a
    line), every pair is paid once, and the parent merges one table and one sheet."""

    from i2v.models import DEFAULT_MODEL
    from i2v.row_models import bake_off_id
    from i2v.simulator.zoo import SEEDANCE

    _save_key(stack)
    pictures = ["astronaut.png", "coffee.png", "rocket.jpg"]
    for name in pictures:
        shutil.copy(EXAMPLES / name, tmp_path / name)
    ids = [f"b{i}" for i in range(6)]
    manifest = tmp_path / "bake.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "prompt"])
        writer.writerows([(i, pictures[n % 3], f"orbit, take {n}") for n, i in enumerate(ids)])
    models = [DEFAULT_MODEL, SEEDANCE]
    dest = tmp_path / "out"
    sim = stack.sim
    posts = sim.stats.generate_posts
    options = _fast_options(stack, models=models)
    with client_for(stack.url) as client:
        parent = _start_fanout(client, stack, manifest, dest, 4, options)
        parent = _wait_final(client, parent.id, 240)
        shards = [
            r
            for r in client.read_flow_runs(limit=200)
            if r.name.startswith(f"{parent.name}-shard-")
        ]
    assert parent.state is not None and parent.state.is_completed(), parent.state
    table = pd.read_parquet(dest / "results.parquet")
    assert list(table["id"]) == [bake_off_id(i, m) for i in ids for m in models]
    assert set(table["status"]) == {"landed"}, table[["id", "status", "error"]]
    assert list(table["model"]) == models * len(ids)
    assert sim.stats.generate_posts - posts == 2 * len(ids), "a pair paid twice, or not"
    # Shards of 4 rows are two whole lines each: no line in two shards.
    lines = [n for r in shards for n in r.parameters["lines"]]
    assert len(shards) == 3 and sorted(lines) == sorted(set(lines)) == list(range(2, 8))
    sheets = list((dest / "runs").glob("*/comparison_sheet.png"))
    assert len(sheets) == 1, "one sheet, by the parent, for every shard's pairs"


@pytest.mark.server
def test_the_forms_offer_the_catalogs_models_and_take_any_other_name(
    stack: Stack, tmp_path: Path
) -> None:
    """`i2v models --form` after a deploy: the batch and fan-out forms list the
    catalog's image-to-video models for `catalog_model` and the bake-off's `models`,
    and a name the catalog does not list is still a valid parameter."""
    import subprocess

    from prefect.utilities.schema_tools import ValidationError, validate

    deployments = ("i2v-batch/batch", "i2v-fanout/fanout")
    env = {
        **stack.env,
        "ATLASCLOUD_BASE_URL": stack.sim.url,
        "I2V_CACHE_DIR": str(tmp_path / "cache"),
    }
    args = [str(REPO / ".venv/bin/i2v"), "models"]
    for name in deployments:
        args += ["--form", name]
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "i2v-batch/batch: 2 form fields offer" in done.stderr, done.stderr
    with client_for(stack.url) as client:
        for name in deployments:
            schema = client.read_deployment_by_name(name).parameter_openapi_schema
            props = schema["definitions"]["BatchOptions"]["properties"]
            offered = props["catalog_model"]["anyOf"][0]["enum"]
            assert "kwaivgi/kling-v3.0-std/image-to-video" in offered, offered
            assert "" in offered and not any("text-to-image" in m for m in offered)
            assert props["models"]["items"]["anyOf"][0]["enum"] == offered[1:]
            for model in ("kwaivgi/kling-v3.0-std/image-to-video", "some-lab/new/image-to-video"):
                options = {"catalog_model": model, "models": [model]}
                validate(
                    {"source": "s3://b/m.csv", "dest": "s3://b/out", "options": options},
                    schema,
                    raise_on_error=True,
                    ignore_required=True,
                )
            with pytest.raises(ValidationError):
                validate(
                    {"options": {"catalog_model": 7}},
                    schema,
                    raise_on_error=True,
                    ignore_required=True,
                )


# ------------------------------------------------------- shard planning and merging


def _plan(line: int, identity: str | None, error: str | None = None) -> Any:
    from i2v.manifest import ManifestRow
    from i2v.run import RowPlan

    row = ManifestRow(
        line=line,
        id=f"r{line}",
        image="a.png",
        image_location="/x/a.png",
        prompt="p",
        duration=6,
        error=error,
    )
    return RowPlan(row=row, row_id=f"r{line}", identity=identity, error=error)


@pytest.mark.parametrize(
    ("rows", "workers", "concurrency", "limit", "size"),
    [
        (600, 2, 40, 40, 300),  # one process fills the limit: a shard per worker
        (600, 2, 8, 40, 120),  # 8 per shard: five shards to fill 40 slots
        (600, 0, 40, None, 600),  # no worker online yet: the parent runs it all
        (600, 3, 40, None, 200),  # no limit: a shard per worker
        (2, 4, 40, None, 1),  # fewer rows than workers: a row each
    ],
)
def test_auto_shard_size(rows: int, workers: int, concurrency: int, limit: Any, size: int) -> None:
    from i2v.shards import auto_shard_size

    assert auto_shard_size(rows, workers, concurrency=concurrency, limit=limit) == size


def test_plan_shards_keeps_a_bake_offs_pairs_of_a_line_together() -> None:
    """A bake-off's pairs share their line (a shard runs whole lines), and a pair that
    repeats another line's input joins that line's shard too."""
    from i2v.shards import plan_shards

    plans = [
        _plan(2, "2-kling"),
        _plan(2, "2-veo"),
        _plan(3, "3-kling"),
        _plan(3, "3-veo"),
        _plan(4, "4-kling"),
        _plan(4, "2-veo"),  # line 4 repeats line 2's input for one model
        _plan(5, "5-kling"),
        _plan(5, None, error="bad duration for veo"),
    ]
    shards = plan_shards(plans, 2)
    assert sorted(n for s in shards for n in s) == [2, 3, 4, 5]
    where = {n: i for i, s in enumerate(shards) for n in s}
    assert where[2] == where[4] != where[3]
    assert [3] in shards and [5] in shards  # two pairs each: one shard of 2 rows


def test_plan_shards_keeps_duplicates_together() -> None:
    from i2v.shards import plan_shards

    plans = [
        _plan(2, "A"),
        _plan(3, "B"),
        _plan(4, None, error="bad picture"),
        _plan(5, "C"),
        _plan(6, "A"),  # duplicate of line 2, far away
        _plan(7, "D"),
        _plan(8, "E"),
        _plan(9, "E"),
        _plan(10, "E"),  # a group larger than the shard size
    ]
    shards = plan_shards(plans, 2)
    assert sorted(n for s in shards for n in s) == list(range(2, 11))
    where = {n: i for i, s in enumerate(shards) for n in s}
    assert where[2] == where[6]
    assert where[8] == where[9] == where[10]
    assert [8, 9, 10] in shards, "an oversized group is a shard of its own"
    assert all(len(s) <= 2 for s in shards if 8 not in s)
    assert plan_shards(plans, 100) == [list(range(2, 11))]
    assert plan_shards([], 5) == []
    from i2v.errors import ConfigError

    with pytest.raises(ConfigError):
        plan_shards(plans, 0)


def test_merge_reports_a_crashed_shard_instead_of_dropping_its_rows(tmp_path: Path) -> None:
    from i2v.config import BatchOptions
    from i2v.dest import open_storage
    from i2v.results import result_rows, write_tables
    from i2v.rows import group_jobs
    from i2v.run import JobOutcome, RowStatus
    from i2v.shards import ShardRun, merge_shards
    from i2v.state import InputRecord, Phase, StateStore

    plans = [_plan(n, f"id{n}") for n in (2, 3, 4, 5, 6)]
    plans[1].error, plans[1].identity = "picture too small", None  # line 3: rejected
    for p in plans:
        p.picture = object()  # type: ignore[assignment]
        p.row.extras = {"take": str(p.row.line)}  # a typed (Parquet) column of the team's
    typed = {"take": "Int64"}
    storage = open_storage(tmp_path / "dest")
    options = BatchOptions.model_validate({})
    ok_id = str(uuid.uuid4())
    ok = ShardRun(flow_run_id=ok_id, name="ok-shard", state="Completed")
    dead = ShardRun(
        flow_run_id=ok_id[:8] + str(uuid.uuid4())[8:],  # same 8-char prefix
        name="dead-shard",
        state="Crashed",
        message="worker lost",
    )
    # Shard 1 (lines 4, 5) finished and wrote its run table; shard 2 (2, 3, 6) left none,
    # but it had landed line 6 (record and video in DEST) and submitted line 2.
    jobs = group_jobs([plans[2], plans[3]], options)
    for job in jobs:
        job.outcome = JobOutcome(RowStatus.LANDED)
    table = result_rows(
        [plans[2], plans[3]],
        jobs,
        model="m",
        dest=storage,
        extra_columns=["take"],
        extra_types=typed,
    )
    write_tables(storage, table, f"20260101T000000Z-{ok_id[:8]}", publish=False)
    store = StateStore(storage)
    store.put(
        InputRecord(
            identity="id6",
            model="m",
            phase=Phase.LANDED,
            prediction_id="p6",
            video_key="videos/r6.mp4",
            cost_usd=0.28,
        )
    )
    storage.write_bytes("videos/r6.mp4", b"\x00\x00\x00\x18ftypmp42")
    store.put(InputRecord(identity="id2", model="m", phase=Phase.SUBMITTED, prediction_id="p2"))

    frame, reports = merge_shards(
        storage, plans, [[4, 5], [2, 3, 6]], [ok, dead], options, ["take"], typed
    )
    assert list(frame["line"]) == [2, 3, 4, 5, 6]
    assert str(frame["take"].dtype) == "Int64" and list(frame["take"]) == [2, 3, 4, 5, 6]
    by_line = frame.set_index("line")
    assert list(by_line.loc[[4, 5], "status"]) == ["landed", "landed"]
    assert by_line.loc[3, "status"] == "rejected"  # its own reason, whatever the shard did
    assert by_line.loc[6, "status"] == "landed", "its record says the lost shard landed it"
    assert by_line.loc[6, "prediction_id"] == "p6" and by_line.loc[6, "cost_usd"] == 0.28
    assert by_line.loc[2, "status"] == "not_submitted"
    assert "dead-shard" in by_line.loc[2, "error"] and "Crashed" in by_line.loc[2, "error"]
    assert "worker lost" in by_line.loc[2, "error"]
    assert "Run the fan-out again" in by_line.loc[2, "error"]
    assert [r.state for r in reports] == ["Completed", "Crashed"]
    assert reports[0].run_id and reports[1].run_id is None
    assert reports[1].counts == {"landed": 1, "not_submitted": 1, "rejected": 1}


@pytest.mark.usefixtures("prefect_harness")
def test_fanout_dry_run_plans_shards_without_running_any(
    make_simulator: Any, tmp_path: Path
) -> None:
    from flows.fanout import i2v_fanout
    from i2v.config import load_options

    sim = make_simulator(latency_s=0.1)
    manifest, distinct = _manifest(tmp_path)
    options = load_options(
        None, dry_run=True, global_concurrency_limit=None, api={"base_url": sim.url}
    )
    summary = asyncio.run(i2v_fanout(str(manifest), str(tmp_path / "d"), 6, options))
    assert summary.dry_run and len(summary.shards) == 4
    assert [s.rows for s in summary.shards] == [6, 6, 6, 6]
    assert summary.inputs == distinct and summary.counts["submit"] == 24
    assert summary.estimated_usd == pytest.approx(distinct * 0.28)
    assert sum(sim.stats.responses_by_status.values()) == 0
    assert not (tmp_path / "d").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_fanout_without_shard_size_runs_one_shard_per_online_worker(
    make_simulator: Any, tmp_path: Path
) -> None:
    """No `shard_size`: one shard per worker that sent a heartbeat lately, or more when
    the global limit needs more shards at `concurrency` each to fill its slots."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate

    from flows.fanout import i2v_fanout
    from i2v.config import load_options

    async def stand_up() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="auto-pool", type="process"))
            flow_id = await client.create_flow_from_name("i2v-shard")
            await client.create_deployment(flow_id, "shard", work_pool_name="auto-pool")
            for worker in ("w1", "w2"):
                await client.send_worker_heartbeat("auto-pool", worker)
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name="auto-limit", limit=40)
            )

    asyncio.run(stand_up())
    sim = make_simulator(latency_s=0.1)
    manifest, _ = _manifest(tmp_path)

    def shards(**changes: Any) -> list[int]:
        options = load_options(
            None, dry_run=True, api={"base_url": sim.url}, **{"concurrency": 40, **changes}
        )
        summary = asyncio.run(i2v_fanout(str(manifest), str(tmp_path / "d"), None, options))
        return [s.rows for s in summary.shards]

    assert shards(global_concurrency_limit=None) == [12, 12]  # two workers online
    assert shards(global_concurrency_limit="auto-limit") == [12, 12]  # one fills 40 slots
    # 8 per shard: five shards fill the limit's 40 slots, though only two workers poll.
    assert shards(global_concurrency_limit="auto-limit", concurrency=8) == [5, 5, 5, 5, 4]


# ------------------------------------------- the provider cap, in-process (no workers)


def _rows(folder: Path, n: int, tag: str) -> Path:
    for name in ("astronaut.png", "coffee.png", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, folder / name)
    path = folder / f"{tag}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "prompt"])
        pictures = ("astronaut.png", "coffee.png", "rocket.jpg")
        writer.writerows([(f"{tag}{i}", pictures[i % 3], f"{tag} pan {i}") for i in range(n)])
    return path


@pytest.mark.usefixtures("prefect_harness")
def test_global_limit_caps_several_runs_together(make_simulator: Any, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.batch import i2v_batch
    from i2v.config import load_options

    name = f"atlas-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=2))
    sim = make_simulator(latency_s=0.5)
    opts = load_options(
        None,
        concurrency=6,  # each run alone would put 6 in flight
        poll_interval_s=0.05,
        expected_duration_s=0.5,
        timeout_s=60,
        global_concurrency_limit=name,
        api={"simulator": False, "base_url": sim.url},
    )
    first, second = _rows(tmp_path, 6, "a"), _rows(tmp_path, 6, "b")

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(
                i2v_batch(str(first), str(tmp_path / "out-a"), opts),
                i2v_batch(str(second), str(tmp_path / "out-b"), opts),
            )
        )

    summaries = asyncio.run(both())
    assert all(s.counts["landed"] == 6 for s in summaries)
    assert sim.stats.jobs_created == 12
    assert sim.stats.max_in_flight == 2, "two runs together must share the limit of 2"
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0


@pytest.mark.usefixtures("prefect_harness")
def test_missing_global_limit_falls_back_to_the_run_concurrency(
    make_simulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.batch import i2v_batch
    from i2v.config import load_options

    sim = make_simulator(latency_s=0.5)
    opts = load_options(
        None,
        concurrency=3,
        poll_interval_s=0.05,
        expected_duration_s=0.5,
        timeout_s=60,
        global_concurrency_limit=f"absent-{uuid.uuid4().hex[:8]}",
        api={"simulator": False, "base_url": sim.url},
    )
    with caplog.at_level("WARNING"):
        summary = asyncio.run(i2v_batch(str(_rows(tmp_path, 8, "c")), str(tmp_path / "o"), opts))
    assert summary.counts["landed"] == 8
    assert sim.stats.max_in_flight == 3
    said = [r for r in caplog.records if "does not exist" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert "prefect gcl create" in said[0].getMessage()
