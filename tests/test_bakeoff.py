"""Bake-off (`i2v.bakeoff`): examples/ through three simulator models of different
shapes, each (row, model) its own input, and the rows x models comparison sheet."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from i2v.bakeoff import (
    COMPARISON_SHEET_NAME,
    Cell,
    comparison_key,
    comparison_sheet,
    expand,
    parse_models,
    per_model_totals,
)
from i2v.local_storage import LocalStorage
from i2v.models import DEFAULT_MODEL
from i2v.row_models import plan_row_model
from i2v.sheet import save_sheet
from i2v.simulator.zoo import KLING, SEEDANCE, VEO
from tests.test_row_models import sim_catalog
from tests.test_simulator import EXAMPLES, client, upload, wait_done

Sim = Any


@pytest.fixture
def sim(make_simulator: Callable[..., Sim]) -> Sim:
    return make_simulator(latency_s=0.05)


def test_bake_off_of_three_models_on_examples_lands_the_grid_sheet(
    sim: Sim, tmp_path: Path
) -> None:
    models = parse_models(f"{KLING}, {VEO},{SEEDANCE},{VEO}")
    assert models == [KLING, VEO, SEEDANCE]
    with (EXAMPLES / "manifest.csv").open() as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    pairs = expand(list(rows), models)
    assert len(pairs) == 18 and pairs[0][0] == "astronaut-push--kling-v3.0-std"
    catalog = sim_catalog()
    dest = LocalStorage(tmp_path / "dest")
    cells: dict[tuple[str, str], Cell] = {}
    identities: set[str] = set()
    with client(sim) as c:
        urls = {name: upload(c, EXAMPLES / name) for name in {r["image"] for r in rows.values()}}
        for bake_id, row_id, model in pairs:
            row = rows[row_id]
            # The manifest's 6/10 s are Hailuo's: each model gets its own default here.
            rm = plan_row_model(
                catalog,
                cell_model=model,
                config_model=DEFAULT_MODEL,
                prompt=row["prompt"],
                duration_text="",
                extras={"subject": row["subject"]},
            )
            identities.add(rm.identity(row["image"], None, row["prompt"]))
            body = rm.body(urls[row["image"]], None, row["prompt"])
            r = c.post("/api/v1/model/generateVideo", json={"model": model, **body})
            assert r.status_code == 200, r.text
            done = wait_done(c, r.json()["data"]["id"], timeout_s=60)
            video = tmp_path / f"{bake_id}.mp4"
            video.write_bytes(c.get(done["outputs"][0]).content)
            dest.put_file(f"videos/{bake_id}.mp4", video, content_type="video/mp4")
            cells[(row_id, model)] = Cell(f"videos/{bake_id}.mp4", rm.price_usd, "ok")
    # The copy row shares its input per model; different models never share one.
    assert len(identities) == 5 * 3
    cells[("coffee-pull", VEO)] = Cell(None, 0.80, "failed")
    sheet = comparison_sheet(dest, list(rows), models, cells, thumb_width=120)
    assert sheet is not None
    key = save_sheet(dest, sheet, "run-1", name=COMPARISON_SHEET_NAME)
    assert key == comparison_key("run-1") == "runs/run-1/comparison_sheet.png"
    with Image.open(tmp_path / "dest" / key) as png:
        assert png.size == sheet.size
        assert png.width > 3 * 120 and png.height > 6 * 60  # 3 columns x 6 rows
        # The failed cell is the grey "unreadable" tile, the others a frame.
        grey = png.convert("RGB").getpixel((6 + 1 * 126 + 60, 6 + 3 * (png.height // 6) + 10))
        assert grey == (90, 90, 90)


def test_dry_run_totals_per_model() -> None:
    totals = per_model_totals([(KLING, True, 0.42), (KLING, False, 0.42), (VEO, True, 0.8)])
    assert totals == {KLING: (2, 1, 0.42), VEO: (1, 1, 0.8)}
