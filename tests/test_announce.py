"""Each run leaves one `i2v.run.*` event naming its DEST, counts, spend and results, the
flow run as related resource, and (when videos landed) its assets' lineage; read back
through the Prefect API (POST /api/events/filter)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from flows.announce import asset_key, dest_resource
from tests.helpers import options_for, run_batch, write_manifest


async def read_events(prefix: str, resource_id: str | None = None) -> list[Any]:
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(prefix=[prefix]),
        resource=EventResourceFilter(id=[resource_id]) if resource_id else None,
    )
    async with get_client() as client:
        page = await client.read_events(filter=flt, limit=50)
    return list(page.events)


def wait_events(prefix: str, resource_id: str | None = None, n: int = 1) -> list[Any]:
    """Events are sent in the background: poll the API until `n` have arrived."""
    deadline = time.monotonic() + 30
    while True:
        found = asyncio.run(read_events(prefix, resource_id))
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_emits_one_event_with_its_dest_counts_and_lineage(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    manifest = write_manifest(
        pictures,
        [
            {"id": "a", "image": "astronaut.png", "prompt": "push in"},
            {"id": "b", "image": "rocket.jpg", "prompt": "lift off"},
        ],
    )
    dest = tmp_path / "out"
    summary = run_batch(manifest, dest, options_for(simulator))
    [event] = wait_events("i2v.run.", dest_resource(str(dest)))
    assert event.event == "i2v.run.completed"
    assert event.resource.name == str(dest)
    assert event.payload["counts"] == {"landed": 2} and event.payload["landed"] == 2
    assert event.payload["results_uri"] == str(dest / "results.parquet")
    assert event.payload["run_id"] == summary.run_id
    assert event.payload["spent_usd"] == summary.spent_usd > 0
    [flow_run] = [r for r in event.related if r.role == "flow-run"]
    assert flow_run.id.startswith("prefect.flow-run.")

    results = asset_key(str(dest / "results.parquet"))
    [made] = wait_events("prefect.asset.materialization.succeeded", results)
    upstream = [r.id for r in made.related if r.role == "asset"]
    assert upstream == [asset_key(str(manifest))]
    assert wait_events("prefect.asset.materialization.succeeded", asset_key(str(dest / "videos")))


@pytest.mark.usefixtures("prefect_harness")
def test_incomplete_and_failed_runs_say_so(simulator: Any, pictures: Path, tmp_path: Path) -> None:
    mixed = write_manifest(
        pictures,
        [
            {"id": "a", "image": "astronaut.png", "prompt": "push in"},
            {"id": "b", "image": "missing.png", "prompt": "lift off"},
        ],
    )
    dest = tmp_path / "mixed"
    run_batch(mixed, dest, options_for(simulator))
    [event] = wait_events("i2v.run.", dest_resource(str(dest)))
    assert event.event == "i2v.run.incomplete"
    assert event.payload["counts"] == {"landed": 1, "rejected": 1}
    assert event.payload["not_landed"] == 1
    assert "image file not found" in event.payload["top_errors"][0]["error"]

    gone = tmp_path / "failed"
    with pytest.raises(Exception, match="manifest not found"):
        run_batch(tmp_path / "nope.csv", gone, options_for(simulator))
    [failed] = wait_events("i2v.run.", dest_resource(str(gone)))
    assert failed.event == "i2v.run.failed"
    assert "manifest not found" in failed.payload["error"]


def test_the_readme_automation_is_one_prefect_takes() -> None:
    """examples/automation_publish.yaml, validated as `prefect automation create` does."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore

    from tests.helpers import EXAMPLES

    data = yaml.safe_load((EXAMPLES / "automation_publish.yaml").read_text())
    [automation] = [AutomationCore.model_validate(a) for a in data["automations"]]
    trigger: Any = automation.trigger
    assert trigger.expect == {"i2v.run.completed"}
    assert dict(trigger.match.root) == {
        "prefect.resource.id": dest_resource("s3://media/videos/weekly")
    }
    assert automation.actions[0].type == "run-deployment"
