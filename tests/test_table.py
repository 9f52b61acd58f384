"""The Python entry point: a team's own flow builds prompts in a DataFrame, runs them
through `run_table` (the batch as a subflow) and uses the results DataFrame."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prefect import flow

from flows.table import run_table
from i2v.config import BatchOptions
from i2v.errors import ConfigError
from tests.helpers import EXAMPLES, options_for

SUBJECTS = {"astronaut.png": "astronaut", "coffee.png": "cup of coffee", "rocket.jpg": "rocket"}


@flow(name="team-content-flow")
async def team_flow(pictures: str, dest: str, options: BatchOptions) -> pd.DataFrame:
    """What a content team writes: prompts from their own data, videos, then use them."""
    rows = pd.DataFrame(
        {
            "id": [f"clip-{n}" for n in range(len(SUBJECTS))],
            "image": list(SUBJECTS),
            "prompt": [f"slow push in on the {s}, soft light" for s in SUBJECTS.values()],
            "campaign_id": [101, 101, 202],
            "featured": [True, False, True],
        }
    )
    results = await run_table(rows, dest, options, pictures=pictures)
    return results[results["status"] == "landed"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_team_flow_gets_a_dataframe_of_its_rows_back(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    landed = asyncio.run(team_flow(str(pictures), str(dest), options_for(simulator)))
    assert list(landed["id"]) == ["clip-0", "clip-1", "clip-2"]
    assert list(landed["image"]) == list(SUBJECTS)  # as the team gave it
    assert all(Path(uri).is_file() for uri in landed["video_uri"])
    # The team's own columns come back typed.
    assert str(landed["campaign_id"].dtype) == "Int64"
    assert list(landed["campaign_id"]) == [101, 101, 202]
    assert str(landed["featured"].dtype) == "boolean"
    # The rows went to DEST as a manifest file, not as a flow parameter.
    manifests = list((dest / "runs").glob("table-*/manifest.parquet"))
    assert len(manifests) == 1 and len(pd.read_parquet(manifests[0])) == 3

    async def batch_parameters() -> dict[str, Any]:
        from prefect import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["i2v-batch"])), limit=200
            )
        [mine] = [r for r in runs if str(r.parameters.get("dest")) == str(dest)]
        assert mine.parent_task_run_id is not None, "the batch ran as a subflow"
        return dict(mine.parameters)

    parameters = asyncio.run(batch_parameters())
    assert parameters["source"] == str(manifests[0])


def test_s3_dest_with_local_pictures_is_refused_before_anything_runs(pictures: Path) -> None:
    rows = [{"image": "rocket.jpg", "prompt": "lift off"}]
    with pytest.raises(ConfigError, match="pictures on S3"):
        asyncio.run(run_table(rows, "s3://bucket/out", pictures=pictures))


@pytest.mark.usefixtures("prefect_harness")
def test_a_list_of_dicts_into_an_s3_dest_with_pictures_on_s3(
    simulator: Any, s3_endpoint: str, s3_bucket: str
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for name in ("astronaut.png", "rocket.jpg"):
        s3.upload_file(str(EXAMPLES / name), s3_bucket, f"pics/{name}")
    rows = [
        {"id": "a", "image": "astronaut.png", "prompt": "push in", "take": 1},
        {"id": "b", "image": "rocket.jpg", "prompt": "lift off", "take": 2},
    ]
    dest = f"s3://{s3_bucket}/out"

    @flow
    async def team() -> pd.DataFrame:
        return await run_table(
            rows, dest, options_for(simulator), pictures=f"s3://{s3_bucket}/pics"
        )

    results = asyncio.run(team())
    assert list(results["status"]) == ["landed", "landed"]
    assert list(results["video_uri"]) == [f"{dest}/videos/a.mp4", f"{dest}/videos/b.mp4"]
    assert list(results["image"]) == ["astronaut.png", "rocket.jpg"]  # as given
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/runs/")["Contents"]]
    assert sum(k.endswith("/manifest.parquet") and "/table-" in k for k in keys) == 1
