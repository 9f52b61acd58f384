"""`i2v status`: a DEST made by real runs (simulator over HTTP), records written directly
on a folder and on moto S3 (the ETag index), the i2v-status flow and its deployment."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from i2v.dest import open_storage
from i2v.needs_person import build_status
from i2v.state import HOST, InputRecord, Phase, StateStore, utcnow
from tests.helpers import REPO, cli_run, read_artifacts, sim_config, state_records, write_manifest

pytestmark = [pytest.mark.timeout(300)]

runner = CliRunner()


def status_json(dest: str | Path) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["status", str(dest), "--json"])
    return result.exit_code, json.loads(result.stdout)


def groups(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(g["kind"], g["key"]): g for g in body["needs_person"]}


# ------------------------------------------------------------- a DEST made by real runs


@pytest.mark.usefixtures("prefect_harness")
def test_status_of_a_dest_made_by_two_runs(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=0.2)
    rows = [
        {"id": "a", "image": "astronaut.png", "prompt": "pan right"},
        {"id": "a-copy", "image": "astronaut.png", "prompt": "pan right"},
        {"id": "mod", "image": "rocket.jpg", "prompt": "something nsfw"},
        {"id": "short", "image": "coffee.png", "prompt": "a short clip"},
        {"id": "stuck", "image": "rocket.jpg", "prompt": "never finishes"},
        {"id": "bad", "image": "missing.png", "prompt": "x"},
    ]
    manifest = write_manifest(pictures, rows)
    dest = tmp_path / "out"
    config = sim_config(tmp_path, sim, timeout_s=2)
    first = cli_run(manifest, dest, config)
    assert first.exit_code == 1, first.output
    # Run 2: two new rows; the budget pays one, whose answer is lost (ambiguous).
    late = [
        {"id": "late1", "image": "coffee.png", "prompt": "zoom in"},
        {"id": "late2", "image": "astronaut.png", "prompt": "tilt up"},
    ]
    manifest = write_manifest(pictures, rows + late)
    config.write_text(config.read_text() + "  generate_timeout_s: 1\n")
    sim.config.generate_delay_s = 3
    second = cli_run(manifest, dest, config, "--budget-usd", "0.3")
    assert second.exit_code == 1, second.output
    sim.config.generate_delay_s = 0
    requests = sum(sim.stats.responses_by_status.values())

    code, body = status_json(dest)
    assert code == 1
    assert sum(sim.stats.responses_by_status.values()) == requests, "status calls no API"
    assert body["rows"] == 8 and body["exit_code"] == 1
    assert body["rows_by_status"] == {
        "landed": 3,
        "failed": 1,
        "rejected": 1,
        "timed_out": 1,
        "not_submitted": 1,
        "ambiguous": 1,
    }
    assert body["inputs"] == 5
    assert body["inputs_by_status"] == {"landed": 2, "failed": 1, "timed_out": 1, "ambiguous": 1}
    # Spent: a and short made, stuck reserved (the copy is free); mod refunded by the
    # provider; the lost answer may have been paid.
    assert body["spent"]["usd"] == pytest.approx(3 * 0.28)
    assert body["spent"]["inputs"] == 3
    assert body["spent"]["charged_usd"] == pytest.approx(2 * 0.28)
    assert body["spent"]["reserved_usd"] == pytest.approx(0.28)
    assert body["spent"]["refunded_usd"] == pytest.approx(0.28)
    assert body["spent"]["refunded_inputs"] == 1
    [model_bill] = body["spent"]["by_model"].values()
    assert model_bill["refunded"] == 1 and model_bill["charged"] == 2 and model_bill["maybe"] == 1
    assert body["spent"]["maybe_usd"] == pytest.approx(0.28) and body["spent"]["maybe_inputs"] == 1
    assert body["spent"]["simulated"] is False  # an external simulator looks real
    assert len(body["spent"]["by_day"]) == 1 and body["spent"]["first_at"]
    runs = body["runs"]
    assert [r["rows"] for r in runs] == [8, 6] and body["runs_total"] == 2
    assert runs[0]["run_id"] > runs[1]["run_id"]  # newest first
    assert runs[1]["counts"]["landed"] == 3 and runs[1]["qc_flagged"] == 1

    found = groups(body)
    assert set(found) == {
        ("ambiguous", ""),
        ("timed_out", ""),
        ("failed", "1039"),
        ("not_submitted", "budget"),
        ("rejected", ""),
        ("qc", ""),
    }
    ambiguous = found[("ambiguous", "")]
    (lost,) = ambiguous["items"]
    assert lost["ids"] in (["late1"], ["late2"]) and lost["at"]
    argv = shlex.split(ambiguous["command"])
    assert argv[:5] == ["i2v", "run", str(manifest), "--dest", str(dest)]
    assert argv[5:] == ["--config", str(config), "--budget-usd", "0.3", "--resubmit-ambiguous"]
    (never,) = found[("not_submitted", "budget")]["items"]
    assert never["ids"] == [({"late1", "late2"} - set(lost["ids"])).pop()]
    budget = found[("not_submitted", "budget")]
    assert "--budget-usd" in budget["what_to_do"]
    assert budget["command"].endswith("--budget-usd NEW_LIMIT") and "0.3" not in budget["command"]
    stuck = next(r for r in state_records(dest) if r["prompt"] == "never finishes")
    timed = found[("timed_out", "")]
    assert timed["items"][0]["prediction_id"] == stuck["prediction_id"]
    assert timed["items"][0]["ids"] == ["stuck"]
    assert "--resubmit-ambiguous" not in timed["command"] and str(manifest) in timed["command"]
    moderation = found[("failed", "1039")]
    assert "change the picture or the prompt" in moderation["what_to_do"]
    assert moderation["items"][0]["ids"] == ["mod"] and moderation["items"][0]["prediction_id"]
    assert found[("rejected", "")]["items"][0]["ids"] == ["bad"]
    qc = found[("qc", "")]["items"]
    assert [(i["ids"], i["qc"]) for i in qc] == [(["short"], "short:4.1s")]
    assert qc[0]["video_uri"] == str(dest / "videos" / "short.mp4")
    assert body["needs_person_rows"] == 6

    text = runner.invoke(app, ["status", str(dest)])
    assert text.exit_code == 1
    out = text.stdout
    assert "rows: 8 in the current table: 3 landed, 1 failed" in out
    assert "spent: $0.84 on 3 paid inputs" in out
    assert "1 refunded (failed at the provider) $0.28" in out
    assert "by model:" in out and "by day:" in out
    assert "and up to $0.28 more: 1 ambiguous submissions may have been paid" in out
    assert "needs a person (6 rows):" in out
    assert f"command: {ambiguous['command']}" in out
    assert f"stuck: prediction {stuck['prediction_id']}" in out
    assert "short: short:4.1s" in out
    assert os.environ["ATLASCLOUD_API_KEY"] not in out


@pytest.mark.usefixtures("prefect_harness")
def test_a_dest_where_everything_landed_needs_nobody(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    manifest = write_manifest(
        pictures, [{"id": "one", "image": "rocket.jpg", "prompt": "pan left"}]
    )
    dest = tmp_path / "out"
    assert cli_run(manifest, dest, sim_config(tmp_path, simulator)).exit_code == 0
    result = runner.invoke(app, ["status", str(dest)])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().endswith("nothing needs a person.")
    code, body = status_json(dest)
    assert code == 0 and body["needs_person"] == [] and body["inputs_by_status"] == {"landed": 1}


# ---------------------------------------------------------------- records written directly


def _record(i: int, phase: Phase, **changes: Any) -> InputRecord:
    base: dict[str, Any] = {
        "identity": f"{i:064x}",
        "model": "minimax/hailuo-2.3/i2v-standard",
        "phase": phase,
        "prediction_id": f"pred-{i}",
        "submit_started_at": "2025-06-01T10:00:00.000Z",
        "submitted_at": "2025-06-01T10:00:01.000Z",
        "cost_usd": 0.28,
    }
    base.update(changes)
    return InputRecord(**base)


def test_status_of_records_alone(tmp_path: Path) -> None:
    store = StateStore(open_storage(tmp_path))
    store.put(_record(1, Phase.LANDED, video_key="videos/x.mp4", qc="ok"))
    store.put(_record(2, Phase.FAILED, error_code="no_output", error="done, no video"))
    store.put(_record(3, Phase.FAILED, error_code="purged", error="forgotten"))
    store.put(_record(4, Phase.SUCCEEDED, output_url="http://x/y.mp4"))
    store.put(_record(5, Phase.FAILED, error_code="2013", error="provider error"))
    # A live claim of this process is in flight; an old one is ambiguous.
    live = _record(
        6, Phase.SUBMITTING, prediction_id=None, submit_started_at=utcnow(), cost_usd=None
    )
    store.put(live.model_copy(update={"owner_host": HOST, "owner_pid": os.getpid()}))
    store.put(_record(7, Phase.SUBMITTING, prediction_id=None, cost_usd=None))
    store.put(_record(8, Phase.SUBMITTED, submitted_at="2025-06-02T09:00:00.000Z"))
    code, body = status_json(tmp_path)
    assert code == 1 and body["rows"] is None
    assert body["inputs_by_status"] == {
        "failed": 4,
        "landed": 1,
        "in_flight": 1,
        "ambiguous": 1,
        "timed_out": 1,
    }
    found = groups(body)
    assert {k for k in found if k[0] == "failed"} == {
        ("failed", "no_output"),
        ("failed", "purged"),
        ("failed", "landing"),
        ("failed", "2013"),
    }
    assert "console" in found[("failed", "purged")]["what_to_do"]
    assert found[("failed", "purged")]["command"] is None
    assert "without paying" in found[("failed", "landing")]["what_to_do"]
    assert found[("failed", "no_output")]["command"]  # rerun: it polls again
    # No run recorded a command: a template with DEST filled in.
    assert found[("ambiguous", "")]["command"] == (
        f"i2v run MANIFEST --dest {tmp_path} --config FILE --resubmit-ambiguous"
    )
    # The provider error (2013) was refunded; no output and purged were not.
    assert body["spent"]["by_day"] == {"2025-06-01": pytest.approx(4 * 0.28), "2025-06-02": 0.28}
    assert body["spent"]["days"]["2025-06-01"]["refunded"] == 1
    assert body["spent"]["last_at"] == "2025-06-02T09:00:00.000Z"
    text = runner.invoke(app, ["status", str(tmp_path)]).stdout
    assert (
        "2025-06-01: spent $1.12 (4 charged $1.12; 1 refunded (failed at the provider) $0.28)"
        in text
    )

    (tmp_path / "_state" / f"{9:064x}.json").write_text("{not json")
    code, body = status_json(tmp_path)
    assert code == 1 and body["unreadable"] == [str(tmp_path / "_state" / f"{9:064x}.json")]


def test_records_started_in_one_instant_list_in_one_order(tmp_path: Path) -> None:
    # The index and a full read hand records over in different orders.
    flagged = [_record(i, Phase.LANDED, qc=f"short:{i}.0s") for i in (3, 1, 2)]
    storage = open_storage(tmp_path)
    orders = {
        tuple(
            i.identity for g in build_status(storage, recs, None, []).needs_person for i in g.items
        )
        for recs in (flagged, flagged[::-1])
    }
    assert orders == {tuple(f"{i:064x}" for i in (1, 2, 3))}


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["status", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "error:" in missing.output
    bad = runner.invoke(app, ["status", "ftp://x/y"])
    assert bad.exit_code == 2 and "unsupported destination" in bad.output


def test_s3_status_reads_only_records_that_changed(s3_bucket: str) -> None:
    from i2v.status import dest_status
    from i2v.status_index import INDEX_KEY

    dest = f"s3://{s3_bucket}/big"
    storage = open_storage(dest)
    store = StateStore(storage)
    n = 300
    for i in range(n):
        store.put(_record(i, Phase.LANDED if i % 10 else Phase.TIMED_OUT, video_key="v"))
    cold = dest_status(storage)
    assert (cold.records_read, cold.records_from_index) == (n, 0)
    assert cold.inputs_by_status == {"landed": 270, "timed_out": 30}
    assert storage.exists(INDEX_KEY)

    warm = dest_status(open_storage(dest))
    assert (warm.records_read, warm.records_from_index) == (0, n)
    varying = {"generated_at", "read_s", "records_read", "records_from_index"}
    assert warm.model_dump(exclude=varying) == cold.model_dump(exclude=varying)

    # One record moves on, one appears, one is removed: exactly those are read again.
    store.put(_record(0, Phase.LANDED, video_key="v", qc="frozen"))
    store.put(_record(n, Phase.FAILED, error_code="1039"))
    store.delete(f"{5:064x}")
    changed = dest_status(open_storage(dest))
    assert (changed.records_read, changed.records_from_index) == (2, n - 2)
    assert changed.inputs_by_status == {"landed": 270, "timed_out": 29, "failed": 1}
    assert [g.kind for g in changed.needs_person] == ["timed_out", "failed", "qc"]

    # A broken index is only a cache: everything is read again, the answer the same.
    storage.write_bytes(INDEX_KEY, b"garbage")
    again = dest_status(open_storage(dest))
    assert again.records_read == n and again.inputs_by_status == changed.inputs_by_status

    code, body = status_json(dest)
    assert code == 1 and body["inputs"] == n and body["records_read"] == 0


def test_s3_status_without_the_bucket_is_a_storage_error(s3_endpoint: str) -> None:
    result = runner.invoke(app, ["status", "s3://no-such-bucket-i2v/x"])
    assert result.exit_code == 2 and "storage error" in result.output


# ------------------------------------------------------------------- flow and deployment


@pytest.mark.usefixtures("prefect_harness")
def test_the_status_flow_publishes_a_markdown_artifact(tmp_path: Path) -> None:

    from flows.status import STATUS_ARTIFACT_KEY, i2v_status

    store = StateStore(open_storage(tmp_path))
    store.put(_record(1, Phase.FAILED, error_code="1039", error="moderation"))
    state = asyncio.run(i2v_status(str(tmp_path), return_state=True))
    assert state.is_completed()
    body = state.result()
    assert body["exit_code"] == 1 and body["inputs"] == 1
    arts = [
        a
        for a in read_artifacts(
            key=STATUS_ARTIFACT_KEY, flow_run_id=state.state_details.flow_run_id
        )
        if a.key == STATUS_ARTIFACT_KEY and a.flow_run_id == state.state_details.flow_run_id
    ]
    assert len(arts) == 1
    assert f"# i2v status of `{tmp_path}`" in arts[0].data
    assert "## failed, error 1039" in arts[0].data and "change the picture" in arts[0].data


def test_the_status_flow_is_deployable() -> None:
    import yaml
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    (dep,) = [d for d in spec["deployments"] if d["name"] == "status"]
    assert dep["entrypoint"] == "flows/status.py:i2v_status"
    assert dep["enforce_parameter_schema"] is True
    flow = load_flow_from_entrypoint(str(REPO / dep["entrypoint"]))
    assert flow.name == "i2v-status"
    schema = parameter_schema(flow).model_dump()
    assert schema["required"] == ["dest"]
    assert set(schema["properties"]) == {"dest", "aws_credentials_block"}
