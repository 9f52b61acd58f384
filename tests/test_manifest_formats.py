"""Manifests as teams keep them: Parquet and JSON Lines (local and on S3) and CSV
dialects, checked by the same rules as a CSV and landed through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from i2v.errors import ManifestError
from i2v.manifest import read_manifest
from i2v.models import get_model
from tests.helpers import cli_run, sim_config

SPEC = get_model("minimax/hailuo-2.3/i2v-standard")
ROWS: list[dict[str, Any]] = [
    {
        "id": "a",
        "image": "astronaut.png",
        "prompt": "push in",
        "duration": 6,
        "take": 1,
        "hero": True,
    },
    {
        "id": "b",
        "image": "coffee.png",
        "prompt": "pan right",
        "duration": 10,
        "take": 2,
        "hero": False,
    },
    {
        "id": "c",
        "image": "rocket.jpg",
        "prompt": "lift off",
        "duration": None,
        "take": 3,
        "hero": None,
    },
]


def read(source: Any, **kw: Any) -> Any:
    return read_manifest(source, spec=SPEC, **kw)


def write_parquet(path: Path, rows: list[dict[str, Any]], *, row_group: int = 2) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    lines = [json.dumps(r) for r in rows]
    path.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_tables_read_like_a_csv_with_types_kept(pictures: Path, fmt: str) -> None:
    bad = {"id": "d", "image": "missing.png", "prompt": "x", "duration": 7, "take": 4, "hero": True}
    rows = [*ROWS, bad]
    if fmt == "parquet":
        path = write_parquet(pictures / "m.parquet", rows)
    else:
        path = write_jsonl(pictures / "m.jsonl", rows)
    m = read(path)
    assert [r.id for r in m.good_rows] == ["a", "b", "c"]
    assert [r.duration for r in m.rows[:3]] == [6, 10, SPEC.default_duration]
    assert m.rows[0].extras == {"take": "1", "hero": "true"}
    assert m.rows[2].extras == {"take": "3", "hero": ""}
    # The same message a CSV row gets.
    assert m.rows[3].error is not None and m.rows[3].error.startswith("image file not found")
    assert m.extra_types == {"take": "Int64", "hero": "boolean"}
    # Row numbers: Parquet counts rows; JSON Lines gives the file's line (a blank line 2).
    assert [r.line for r in m.rows] == ([1, 2, 3, 4] if fmt == "parquet" else [1, 3, 4, 5])


def test_table_errors_are_specific(tmp_path: Path, pictures: Path) -> None:
    (tmp_path / "list.jsonl").write_text('["a.png", "x"]\n{"image": oops}\n')
    with pytest.raises(ManifestError, match="line 1 is a JSON list, not an object"):
        read(tmp_path / "list.jsonl")  # no line of it is a row: nothing to run
    (tmp_path / "fake.parquet").write_bytes(b"image,prompt\na.png,x\n")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        read(tmp_path / "fake.parquet")
    with pytest.raises(ManifestError, match="manifest not found"):
        read(tmp_path / "nope.parquet")
    write_parquet(tmp_path / "noimage.parquet", [{"picture": "a.png", "prompt": "x"}])
    with pytest.raises(ManifestError, match="has no 'image' column; found: 'picture', 'prompt'"):
        read(tmp_path / "noimage.parquet")
    twice = pa.Table.from_arrays([pa.array(["a.png"]), pa.array(["b.png"])], ["image", "image"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(ManifestError, match="duplicate column name 'image'"):
        read(tmp_path / "twice.parquet")
    csv_named_parquet = write_parquet(tmp_path / "m.csv", ROWS)
    with pytest.raises(ManifestError, match=r"rename it \*\.parquet"):
        read(csv_named_parquet)


def test_an_unreadable_json_line_rejects_only_its_row(pictures: Path) -> None:
    good = [json.dumps(r) for r in ROWS]
    (pictures / "m.jsonl").write_bytes(
        "\n".join([good[0], '{"image": oops}', good[1], '["a.png"]', good[2]]).encode()
        + b'\n{"image": "\xff"}\n'
    )
    m = read(pictures / "m.jsonl")
    assert [r.id for r in m.good_rows] == ["a", "b", "c"]
    errors = {r.line: r.error for r in m.rows if r.error}
    assert list(errors) == [2, 4, 6]
    assert errors[2] is not None and errors[2].startswith("manifest line 2 is not valid JSON")
    assert errors[4] is not None and "line 4 is a JSON list, not an object" in errors[4]
    assert errors[6] is not None and errors[6].startswith("manifest line 6 is not UTF-8")


@pytest.mark.parametrize(
    ("content", "encoding"),
    [
        ("id;image;prompt\nx;astronaut.png;café au lait\n", "utf-8"),
        ("id\timage\tprompt\nx\tastronaut.png\tcafé au lait\n", "utf-8"),
        ("id;image;prompt\nx;astronaut.png;café au lait\n", "cp1252"),
        ("id\timage\tprompt\nx\tastronaut.png\tcafé au lait\n", "utf-16"),
    ],
)
def test_csv_dialects_are_detected(
    pictures: Path, content: str, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = pictures / "m.csv"
    path.write_bytes(content.encode(encoding))
    m = read(path)
    assert [(r.id, r.prompt, r.error) for r in m.rows] == [("x", "café au lait", None)]
    assert ("not UTF-8" in caplog.text) == (encoding == "cp1252")


# ------------------------------------------------------------------------------ landing


def _check_landed(frame: pd.DataFrame, n: int) -> None:
    assert list(frame["status"]) == ["landed"] * n, frame[["id", "status", "error"]]
    assert str(frame["take"].dtype) == "Int64" and list(frame["take"]) == [1, 2, 3][:n]
    assert str(frame["hero"].dtype) == "boolean"
    assert (
        list(frame["hero"].astype(object).where(frame["hero"].notna(), None))
        == [
            True,
            False,
            None,
        ][:n]
    )


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_local_tables_land_every_row_through_the_cli(
    simulator: Any, pictures: Path, tmp_path: Path, fmt: str
) -> None:
    path = pictures / f"m.{fmt}"
    write_parquet(path, ROWS) if fmt == "parquet" else write_jsonl(path, ROWS)
    dest = tmp_path / "out"
    result = cli_run(path, dest, sim_config(tmp_path, simulator))
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(dest / "results.parquet")
    _check_landed(frame, 3)
    assert sorted(p.name for p in (dest / "videos").iterdir()) == ["a.mp4", "b.mp4", "c.mp4"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_run_lands_the_rows_around_an_unreadable_json_line(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    path = pictures / "m.jsonl"
    good = [json.dumps(r) for r in ROWS]
    path.write_text("\n".join([good[0], '{"image": oops}', *good[1:]]) + "\n")
    dest = tmp_path / "out"
    result = cli_run(path, dest, sim_config(tmp_path, simulator))
    assert result.exit_code == 1, result.output
    frame = pd.read_parquet(dest / "results.parquet")
    assert list(frame["status"]) == ["landed", "rejected", "landed", "landed"]
    assert frame["error"][1].startswith("manifest line 2 is not valid JSON")


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("shape", ["parquet", "jsonl", "prefix"])
def test_tables_on_s3_land_every_row_through_the_cli(
    simulator: Any, pictures: Path, tmp_path: Path, s3_endpoint: str, s3_bucket: str, shape: str
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for p in pictures.iterdir():
        s3.upload_file(str(p), s3_bucket, f"in/{p.name}")
    local = tmp_path / "parts"
    local.mkdir()
    if shape == "prefix":
        # Two parts of one table (pictures cannot share its prefix: they name theirs).
        rows = [{**r, "image": f"s3://{s3_bucket}/in/{r['image']}"} for r in ROWS]
        write_parquet(local / "part-0.parquet", rows[:2])
        write_parquet(local / "part-1.parquet", rows[2:])
        for p in local.iterdir():
            s3.upload_file(str(p), s3_bucket, f"in/table/{p.name}")
        source = f"s3://{s3_bucket}/in/table"
    else:
        path = local / f"m.{shape}"
        write_parquet(path, ROWS) if shape == "parquet" else write_jsonl(path, ROWS)
        s3.upload_file(str(path), s3_bucket, f"in/m.{shape}")
        source = f"s3://{s3_bucket}/in/m.{shape}"
    dest = tmp_path / "out"
    result = cli_run(source, dest, sim_config(tmp_path, simulator))  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(dest / "results.parquet")
    _check_landed(frame, 3)
    if shape == "prefix":
        assert list(frame["line"]) == [1, 2, 3]


def test_typed_model_inputs_are_sent_typed(pictures: Path) -> None:
    """A boolean or integer model input in a Parquet manifest reaches the model's body as
    a boolean or an integer (through the same per-row model rules as a CSV's cell)."""
    import time

    from i2v.catalog import build_catalog
    from i2v.models import DEFAULT_MODEL
    from i2v.row_models import plan_row_model
    from i2v.simulator.catalog import input_schema_document, listing_entry

    veo, seedance = (
        "google/veo3.1-fast/image-to-video",
        "bytedance/seedance-v1-pro-fast/image-to-video",
    )
    listing = {
        "data": [
            listing_entry(n, "http://sim", None, index=i) for i, n in enumerate([veo, seedance])
        ]
    }
    catalog = build_catalog(
        listing, {n: input_schema_document(n) for n in (veo, seedance)}, time.time()
    )
    rows = [
        {
            "id": "v",
            "image": "astronaut.png",
            "prompt": "tilt",
            "model": veo,
            "generate_audio": False,
        },
        {
            "id": "s",
            "image": "coffee.png",
            "prompt": "orbit",
            "model": seedance,
            "seed": 42,
            "cfg_scale": 7.5,
        },
    ]
    columns = {k: None for r in rows for k in r}  # every row every column, None if unset
    m = read(write_parquet(pictures / "m.parquet", [{**columns, **r} for r in rows]))
    assert m.extra_types == {"generate_audio": "boolean", "seed": "Int64", "cfg_scale": "Float64"}
    sent = [
        plan_row_model(
            catalog,
            cell_model=r.extras["model"],
            config_model=DEFAULT_MODEL,
            prompt=r.prompt,
            duration_text="",
            extras=r.extras,
        ).inputs
        for r in m.rows
    ]
    assert sent == [{"generate_audio": False}, {"seed": 42, "cfg_scale": 7.5}]
    assert type(sent[1]["seed"]) is int and sent[0]["generate_audio"] is False


def test_a_big_parquet_manifest_is_read_a_batch_at_a_time(tmp_path: Path) -> None:
    """Arrow holds about one row group while the rows are read, not the file: 50 MB of
    prompts read with a few MB in Arrow's memory at any time."""
    from i2v.manifest_formats import parquet_table

    n, width = 100_000, 500
    prompts = pa.array([f"{i:07d}" + "x" * (width - 7) for i in range(n)])
    path = tmp_path / "big.parquet"
    pq.write_table(
        pa.table({"image": pa.array(["a.png"] * n), "prompt": prompts}),
        path,
        row_group_size=10_000,
    )
    del prompts
    table = parquet_table([(str(path), path)])
    base = pa.total_allocated_bytes()
    peak, rows = 0, 0
    for line, fields in table.records:
        rows += 1
        if line % 1000 == 0:
            peak = max(peak, pa.total_allocated_bytes() - base)
        assert line == rows and fields[1].startswith(f"{line - 1:07d}")
    assert rows == n
    assert peak < 15 * 2**20, (
        f"{peak / 2**20:.1f} MiB held for {n * width / 2**20:.0f} MiB of prompts"
    )
