"""What a person sees in the Prefect UI, read back from the Prefect API: task runs that
all end Completed with names that say their step and row count, the step order as
graph edges, artifacts whose images and links a browser can open, the deployments'
forms (parameter schemas), the inbox's quiet unconfigured tick and the CLI's tags."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from i2v.media import is_mp4_header
from tests.helpers import EXAMPLES, cli_run, options_for, read_artifacts, run_batch, sim_config

pytestmark = [pytest.mark.timeout(300)]

STEPS = ("upload", "generate", "poll", "land")
BATCH_NAME = re.compile(r"^(upload|generate|poll|land) #(\d+) · (\d+) rows?$")


def _demo(tmp_path: Path) -> Path:
    """The shipped demo manifest and its pictures (6 rows, one duplicate)."""
    folder = tmp_path / "demo-in"
    folder.mkdir()
    for name in ("manifest.csv", "astronaut.png", "coffee.png", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder / "manifest.csv"


def _flow_run(run_id: str) -> Any:
    """The flow run of a summary's run id (its suffix is the flow run id's prefix)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    prefix = run_id.rsplit("-", 1)[1]
    with get_client(sync_client=True) as client:
        found = [
            r
            for r in client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=200)
            if str(r.id).startswith(prefix)
        ]
    assert len(found) == 1, found
    return found[0]


def _task_runs(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    with get_client(sync_client=True) as client:
        return list(
            client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])
                )
            )
        )


def _artifacts(flow_run_id: Any) -> dict[str, Any]:

    found = read_artifacts(flow_run_id=flow_run_id)
    return {str(a.key): a for a in found if a.flow_run_id == flow_run_id and a.key}


def _settled(read: Callable[[], list[Any]], done: Callable[[list[Any]], bool]) -> list[Any]:
    """The server records task runs from events, a moment after the run: wait for them."""
    import time

    deadline = time.monotonic() + 30
    while True:
        got = read()
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


# ------------------------------------------------------------------ task runs


@pytest.mark.usefixtures("prefect_harness")
def test_finished_run_has_only_completed_task_runs_named_by_step_and_rows(
    simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch still taking rows when the flow ends must be closed, not cancelled.

    Batches here wait 3 s for more rows (0.5 s by default), far longer than the flow
    takes from its last landing to its end: without the flow closing its batches, the
    runtime cancels the open ones (Crashed task runs in a run whose rows all landed).
    """
    import flows.batch
    from i2v.batching import MicroBatcher

    monkeypatch.setattr(
        flows.batch, "MicroBatcher", functools.partial(MicroBatcher, idle_s=3.0, accept_s=6.0)
    )
    summary = run_batch(_demo(tmp_path), tmp_path / "out", options_for(simulator))
    assert summary.counts["landed"] == 6
    run = _flow_run(summary.run_id)
    assert run.state.is_completed()
    runs = _settled(
        lambda: _task_runs(run.id), lambda got: all(t.state and t.state.is_final() for t in got)
    )
    states = {t.name: t.state_name for t in runs}
    assert set(states.values()) == {"Completed"}, states

    # Names: the step, its number in this run, the rows it carried (5 distinct inputs).
    names = {t.id: t.name for t in runs}
    batches = [m for m in (BATCH_NAME.match(t.name) for t in runs) if m]
    for step in STEPS:
        carried = [int(m.group(3)) for m in batches if m.group(1) == step]
        assert sum(carried) == 5, (step, sorted(names.values()))

    # The graph: read-manifest -> check-pictures -> upload -> generate -> poll -> land
    # -> results-table, each edge an input of the task run it points to.
    def upstream(task_run: Any) -> set[str]:
        return {names.get(i.id, "?") for inputs in task_run.task_inputs.values() for i in inputs}

    by_step: dict[str, set[str]] = {}
    for t in runs:
        step = BATCH_NAME.match(t.name)
        key = step.group(1) if step else t.name.rsplit("-", 1)[0]
        by_step.setdefault(key, set()).update(upstream(t))
    follows = {
        "check-pictures": "read-manifest",
        "upload": "check-pictures",
        "generate": "upload",
        "poll": "generate",
        "land": "poll",
        "results-table": "land",
    }
    for step, before in follows.items():
        assert by_step[step], (step, by_step)
        assert all(n.startswith(before) for n in by_step[step]), (step, by_step[step])


@pytest.mark.usefixtures("prefect_harness")
def test_every_row_gets_a_log_line_and_a_task_run_says_its_rows(
    simulator: Any, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    manifest = _demo(tmp_path)
    with manifest.open("a") as f:  # a row the checks reject: settled before any call
        f.write("missing,nope.png,pan left,6,none\n")
    summary = run_batch(manifest, tmp_path / "out", options_for(simulator))
    run = _flow_run(summary.run_id)

    def read() -> list[Any]:
        with get_client(sync_client=True) as client:
            flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
            return list(client.read_logs(log_filter=flt, limit=200))

    logs = _settled(read, lambda got: any("done:" in log.message for log in got))
    flow_lines = [log.message for log in logs if log.task_run_id is None]
    ids = ["astronaut-push", "astronaut-orbit", "coffee-pan", "coffee-pull", "rocket-tilt"]
    for row in [*ids, "rocket-tilt-copy"]:
        settled = [m for m in flow_lines if m.startswith(f"{row}: landed")]
        assert len(settled) == 1, (row, flow_lines)
    assert [m for m in flow_lines if m.startswith("missing: rejected")], flow_lines
    # Each land task run names the rows it carried in its own log.
    names = {t.id: t.name for t in _task_runs(run.id)}
    land_lines = [
        log.message for log in logs if names.get(log.task_run_id, "").startswith("land #")
    ]
    carried = " ".join(m for m in land_lines if m.startswith("landing "))
    for row in ids:
        assert row in carried, land_lines
    assert "rocket-tilt (+ rocket-tilt-copy)" in carried


@pytest.mark.usefixtures("prefect_harness")
def test_cli_runs_are_tagged_their_task_runs_are_not_and_record_absolute_paths(
    simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _demo(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = cli_run(
        Path("demo-in/manifest.csv"), Path("out"), sim_config(tmp_path, simulator), "--verbose"
    )
    assert result.exit_code == 0, result.output
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = [
            r
            for r in client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=200)
            if r.parameters.get("source") == str(manifest)
        ]
    assert len(runs) == 1, "the CLI's flow run records the absolute source"
    assert "i2v" in runs[0].tags
    # A tagged task run would ask the API for tag concurrency slots as it starts.
    task_runs = _task_runs(runs[0].id)
    assert task_runs and all(not t.tags for t in task_runs), [t.tags for t in task_runs]
    assert runs[0].parameters["dest"] == str(tmp_path / "out")


# ------------------------------------------------------------------ artifacts


@pytest.mark.usefixtures("prefect_harness")
def test_local_dest_summary_embeds_a_small_png_and_names_the_files(
    simulator: Any, tmp_path: Path
) -> None:
    summary = run_batch(_demo(tmp_path), tmp_path / "out", options_for(simulator))
    arts = _artifacts(_flow_run(summary.run_id).id)
    markdown = arts["i2v-summary"].data
    assert "[![" not in markdown and "file://" not in markdown
    found = re.search(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert found, markdown[:2000]
    png = base64.b64decode(found.group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(found.group(1)) < 1_000_000, "the embedded sheet must stay well under 1 MB"
    sheet = tmp_path / "out" / "runs" / summary.run_id / "contact_sheet.png"
    assert sheet.is_file() and f"`{sheet}`" in markdown  # the full-size file, as its path
    # Local videos are paths (no URL reaches them from the UI); the table has a link.
    rows = arts["i2v-results"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert {r["video_uri"] for r in rows} == {
        str(tmp_path / "out" / "videos" / f"{r['id']}.mp4") for r in rows
    }
    link = arts["i2v-results-table"].data
    assert f"{tmp_path / 'out' / 'runs' / summary.run_id / 'results.csv'}" in link


@pytest.mark.usefixtures("prefect_harness")
def test_s3_dest_artifacts_link_presigned_urls_that_open(
    simulator: Any, tmp_path: Path, s3_bucket: str
) -> None:
    dest = f"s3://{s3_bucket}/ui/run1"
    summary = run_batch(_demo(tmp_path), dest, options_for(simulator, link_hours=2))
    assert summary.counts["landed"] == 6
    arts = _artifacts(_flow_run(summary.run_id).id)

    markdown = arts["i2v-summary"].data
    assert "[![" not in markdown
    image = re.search(r"!\[[^\]]*\]\((https?://[^)\s]+)\)", markdown)
    assert image, markdown
    got = httpx.get(image.group(1), timeout=10)
    assert got.status_code == 200 and got.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "X-Amz-Expires=7200" in image.group(1), "valid for the configured 2 hours"

    rows = arts["i2v-results"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert len(rows) == 6
    for row in rows:
        assert row["video_uri"].startswith("http"), row
        assert f"/ui/run1/videos/{row['id']}.mp4" in row["video_uri"]
    video = httpx.get(rows[0]["video_uri"], timeout=10)
    assert video.status_code == 200 and is_mp4_header(video.content[:12])

    table = re.search(r"\((https?://[^)\s]+)\)", arts["i2v-results-table"].data)
    assert table, arts["i2v-results-table"].data
    csv = httpx.get(table.group(1), timeout=10)
    assert csv.status_code == 200 and csv.text.startswith("id,")


# ------------------------------------------------------------------ forms


def _schemas() -> dict[str, dict[str, Any]]:
    from prefect.utilities.callables import parameter_schema

    from flows.batch import i2v_batch, i2v_shard
    from flows.fanout import i2v_fanout
    from flows.inbox import i2v_inbox

    return {
        f.name: parameter_schema(f).model_dump()
        for f in (i2v_batch, i2v_fanout, i2v_inbox, i2v_shard)
    }


def test_forms_show_options_expanded_with_human_titles_and_no_internal_fields() -> None:
    from i2v.config import DEFAULT_PRICES_USD
    from i2v.models import MODELS

    schemas = _schemas()
    image_models = sorted(n for n, spec in MODELS.items() if spec.needs_image)
    for name, schema in schemas.items():
        options = schema["properties"]["options"]
        assert "anyOf" not in options, f"{name}: options must not be nullable"
        assert isinstance(options.get("default"), dict), f"{name}: no default to expand"
        opts = schema["definitions"]["BatchOptions"]["properties"]
        assert sorted(opts["model"]["enum"]) == image_models, name
        assert opts["prices_usd"]["default"] == DEFAULT_PRICES_USD
        assert all(k.split(":")[0] in image_models for k in DEFAULT_PRICES_USD)
        assert opts["poll_interval_s"]["title"] == "Poll interval (s)"
        assert opts["budget_usd"]["title"] == "Budget (USD)"
        auto = {k: p["title"] for k, p in opts.items() if p["title"] == k.replace("_", " ").title()}
        assert not {k for k in auto if "_" in k or len(k) < 4}, f"untitled fields: {auto}"
        # The simulator is a CLI and test switch: not in any deployment's form, and not
        # in the form's defaults (the server would refuse them against the schema).
        api = schema["definitions"]["ApiSettings"]["properties"]
        assert not {"simulator", "simulator_latency_s"} & set(api), name
        assert "simulator" not in options["default"]["api"]
        # Descriptions free of HTML-looking text (`<run-id>` is swallowed by the UI).
        text = json.dumps(schema)
        assert not re.findall(r"<[a-z][a-z_-]*>", text), (name, re.findall(r"<[^>]*>", text))
    batch = schemas["i2v-batch"]["properties"]
    assert set(batch) == {"source", "dest", "options"}, "internal fields in the user's form"
    assert {"lines", "source", "dest", "options"} == set(schemas["i2v-shard"]["properties"])
    assert schemas["i2v-fanout"]["properties"]["deployment"]["default"] == "i2v-shard/shard"


def test_the_deployment_file_gives_shards_their_own_internal_deployment() -> None:
    import yaml

    from tests.helpers import REPO

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert by_name["shard"]["entrypoint"] == "flows/batch.py:i2v_shard"
    assert by_name["fanout"]["parameters"]["deployment"] == "i2v-shard/shard"
    assert by_name["batch"]["entrypoint"] == "flows/batch.py:i2v_batch"
    for dep in by_name.values():
        assert not re.findall(r"<[a-z][a-z_-]*>", dep.get("description", "")), dep["name"]


# ------------------------------------------------------------------ the inbox


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("inbox", ["{{ $I2V_INBOX }}", ""])
def test_unconfigured_inbox_tick_completes_with_one_line_saying_what_to_set(
    inbox: str, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.inbox import i2v_inbox

    with caplog.at_level("INFO"):
        state = asyncio.run(
            i2v_inbox(inbox=inbox, dest_root="{{ $I2V_DEST_ROOT }}", return_state=True)
        )
    assert state.is_completed(), state
    said = [r.getMessage() for r in caplog.records if "not configured" in r.getMessage()]
    assert len(said) == 1, said
    assert "I2V_INBOX" in said[0] and "I2V_DEST_ROOT" in said[0]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
