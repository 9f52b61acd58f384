"""A model per row through the real run (`i2v run` against the simulator over HTTP):
first-frame fields named `image`, `image_url` or `images`, end frames, enum and range
durations and typed extra inputs, each body from the model's published schema; rows a
schema cannot take are rejected before anything is paid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from i2v.models import DEFAULT_MODEL
from i2v.simulator.zoo import KLING, SEEDANCE, T2I, VEO, VIDU, WAN
from tests.helpers import cli_run, sim_config, state_records, table, write_manifest

FAST = "minimax/hailuo-2.3/fast"

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("I2V_CACHE_DIR", str(tmp_path / "cache"))


def row(id: str, model: str = "", **cells: Any) -> dict[str, Any]:
    base = {"id": id, "image": "astronaut.png", "prompt": "slow push in", "model": model}
    return {**base, **{k: str(v) for k, v in cells.items()}}


GOOD = [
    row("hailuo", duration=6),  # the config's model: the hand-table path
    row("kling", KLING, duration=10, end_image="coffee.png", cfg_scale=0.7),
    row("veo", VEO, duration=8, generate_audio="no", resolution="1080p"),
    row("seedance", SEEDANCE, duration=7, seed=42, cfg_scale=3),
    row("wan", WAN, duration=15, end_image="rocket.jpg"),
    row("vidu", VIDU, duration=4),
    row("fast", FAST, duration=10),
]
BAD = {
    "kling-7s": (row("kling-7s", KLING, duration=7), "duration 7 is not allowed"),
    "typo": (row("typo", "kwaivgi/kling-v3.0-sd/image-to-video"), "close names: " + KLING),
    "t2i": (row("t2i", T2I), "not image-to-video"),
    "veo-no-prompt": (row("veo-no-prompt", VEO, prompt="", duration=4), "prompt"),
    "seed-end": (row("seed-end", SEEDANCE, end_image="coffee.png"), "takes no end frame"),
    "seed-cfg": (row("seed-cfg", SEEDANCE, cfg_scale=20), "cfg_scale"),
    "veo-audio": (row("veo-audio", VEO, generate_audio="maybe"), "generate_audio"),
    "no-end": (row("no-end", KLING, end_image="nope.png"), "end_image: "),
}


def test_one_manifest_through_many_models_chosen_per_row(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    manifest = write_manifest(pictures, GOOD + [r for r, _ in BAD.values()])
    dest = tmp_path / "out"
    config = sim_config(tmp_path, simulator)

    result = cli_run(manifest, dest, config)
    assert result.exit_code == 1, result.output  # some rows rejected

    stats = simulator.stats
    assert 400 not in stats.responses_by_status, "the simulator refused a body"
    assert stats.generate_posts == len(GOOD) and stats.jobs_created == len(GOOD)
    assert stats.uploads == 3, "each picture once: first frames and end frames alike"
    frame = table(dest).set_index("id")
    for good in GOOD:
        got = frame.loc[good["id"]]
        assert got["status"] == "landed", (good["id"], got["error"])
        assert got["model"] == (good["model"] or DEFAULT_MODEL)
        assert got["duration"] == int(good["duration"])
        # The simulator renders the requested duration; QC checked it for this model.
        assert abs(got["video_duration_s"] - int(good["duration"])) < 0.5, good["id"]
        assert got["qc"] == "ok", (good["id"], got["qc"])
        assert json.loads(got["model_inputs"])["duration"] == int(good["duration"])
    for bad_id, (_, needle) in BAD.items():
        got = frame.loc[bad_id]
        assert got["status"] == "rejected" and needle in got["error"], (bad_id, got["error"])
        assert pd.isna(got["prediction_id"]), bad_id
    assert "manifest_model" not in frame.columns
    # Typed extra inputs went as the schema's types, and are recorded.
    assert json.loads(frame.loc["veo", "model_inputs"]) == {
        "duration": 8,
        "generate_audio": False,
        "resolution": "1080p",
    }
    assert json.loads(frame.loc["seedance", "model_inputs"]) == {
        "cfg_scale": 3.0,
        "duration": 7,
        "seed": 42,
    }
    # Each input's state names its model and, for schema rows, the schema version.
    records = {r["model"]: r for r in state_records(dest)}
    assert set(records) == {g["model"] or DEFAULT_MODEL for g in GOOD}
    assert records[DEFAULT_MODEL]["schema_version"] is None
    assert all(records[m]["schema_version"] for m in (KLING, VEO, SEEDANCE, WAN, VIDU, FAST))
    assert records[KLING]["cost_usd"] == pytest.approx(0.84)  # 10 s at twice the listed 5 s

    # Never paid twice, per model: a rerun submits nothing.
    again = cli_run(manifest, dest, config)
    assert again.exit_code == 1, again.output
    assert simulator.stats.generate_posts == len(GOOD)
    assert (table(dest).set_index("id").loc[[g["id"] for g in GOOD], "status"] == "landed").all()


def test_dry_run_shows_rows_new_inputs_and_dollars_per_model(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    manifest = write_manifest(pictures, [*GOOD[:3], BAD["t2i"][0]])
    result = cli_run(manifest, tmp_path / "dry", sim_config(tmp_path, simulator), "--dry-run")
    assert result.exit_code == 0, result.output
    assert simulator.stats.generate_posts == 0
    text = " ".join(result.output.split())
    assert f"{DEFAULT_MODEL}: 1 rows, 1 new inputs, $0.28" in text
    assert f"{KLING}: 1 rows, 1 new inputs, $0.84" in text  # 10 s: twice the listed 5 s
    assert f"{VEO}: 1 rows, 1 new inputs, $0.80" in text
    assert f"{T2I}: 1 rows, 0 new inputs, $0.00" in text


def test_model_option_names_any_catalog_model_for_empty_cells(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    rows = [
        row("plain"),  # Kling's own default duration (5 s), not the config's 6
        row("ten", duration=10),
        row("six", duration=6),  # fine for Hailuo, not for Kling
        row("own", VEO, duration=4),
    ]
    manifest = write_manifest(pictures, rows)
    dest = tmp_path / "out"
    result = cli_run(manifest, dest, sim_config(tmp_path, simulator), "--model", KLING)
    assert result.exit_code == 1, result.output
    frame = table(dest).set_index("id")
    assert list(frame["model"]) == [KLING, KLING, KLING, VEO]
    assert list(frame["status"]) == ["landed", "landed", "rejected", "landed"]
    assert frame.loc["plain", "duration"] == 5 and "5|10" in frame.loc["six", "error"]
    assert simulator.stats.generate_posts == 3 and 400 not in simulator.stats.responses_by_status


def test_bake_off_of_three_models_on_the_examples_lands_the_sheet(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    import shutil

    from PIL import Image

    from i2v.row_models import bake_off_id
    from i2v.sheet import THUMB_WIDTH
    from tests.helpers import read_artifacts

    shutil.copy(Path(__file__).parents[1] / "examples" / "manifest.csv", pictures)
    manifest = pictures / "manifest.csv"
    ids = list(pd.read_csv(manifest)["id"])
    dest = tmp_path / "out"
    config = sim_config(tmp_path, simulator)
    plain = cli_run(manifest, dest, config)  # the default model first: paid once
    assert plain.exit_code == 0, plain.output
    paid = simulator.stats.generate_posts  # one row of the examples is a duplicate
    assert 0 < paid < len(ids)

    models = [DEFAULT_MODEL, SEEDANCE, FAST]
    result = cli_run(manifest, dest, config, "--models", ",".join(models))
    assert result.exit_code == 0, result.output
    # The default model's pairs are the inputs paid before: never paid again.
    assert simulator.stats.generate_posts == 3 * paid
    assert 400 not in simulator.stats.responses_by_status
    frame = table(dest)
    assert list(frame["id"]) == [bake_off_id(i, m) for i in ids for m in models]
    assert (frame["status"] == "landed").all()
    assert list(frame["model"]) == [m for _ in ids for m in models]
    runs = sorted((dest / "runs").glob("*/comparison_sheet.png"))
    assert len(runs) == 1, "one sheet, for the bake-off run"
    with Image.open(runs[0]) as sheet:
        assert 3 * THUMB_WIDTH <= sheet.width < 4 * THUMB_WIDTH  # a column per model
    assert read_artifacts(key="comparison-sheet"), "the sheet is linked from the run"


def test_doctor_checks_each_model_the_config_and_manifest_name(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    manifest = write_manifest(pictures, [GOOD[1], GOOD[3], BAD["typo"][0]])
    config = sim_config(tmp_path, simulator, catalog_model=VEO)
    args = ["doctor", "--config", str(config), "--manifest", str(manifest)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output  # the typo is named with its close names
    assert f"model {VEO}: $0.80, durations 4|6|8" in text
    assert f"model {KLING}: $0.42" in text and "end frame `end_image_url`" in text
    assert "manifest columns sent as inputs: cfg_scale" in text
    assert "seed" in text and f"model {SEEDANCE}:" in text
    assert "close names: " + KLING in text
    assert simulator.stats.generate_posts == 0


def test_a_bake_off_reads_each_rows_duration_for_each_model(pictures: Path) -> None:
    """A 5 s row is Hailuo's problem only: Kling's pair keeps it for Kling's schema."""
    from i2v.config import load_options
    from i2v.row_plans import read_rows_for

    manifest = write_manifest(pictures, [row("five", duration=5), row("six", duration=6)])
    options = load_options(None, models=[DEFAULT_MODEL, KLING])
    rows = {r.id: r for r in read_rows_for(str(manifest), options).rows}
    hailuo, kling = "five--hailuo-2.3-i2v-standard", "five--kling-v3.0-std"
    assert list(rows) == [hailuo, kling, "six--hailuo-2.3-i2v-standard", "six--kling-v3.0-std"]
    assert rows[hailuo].error and "duration" in rows[hailuo].error
    assert rows[kling].error is None and rows[kling].duration_text == "5"
    assert rows["six--hailuo-2.3-i2v-standard"].duration == 6  # as a plain run reads it
    assert rows[kling].extras["model"] == KLING


def test_the_budget_counts_each_rows_own_price(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """$1.10 covers Veo ($0.80) and Hailuo ($0.28), not Kling at 10 s ($0.84) between."""
    rows = [GOOD[2], GOOD[1], GOOD[0]]  # veo $0.80, kling 10 s $0.84, hailuo $0.28
    manifest = write_manifest(pictures, rows)
    dest = tmp_path / "out"
    config = sim_config(tmp_path, simulator, concurrency=1)
    result = cli_run(manifest, dest, config, "--budget-usd", "1.1")
    assert result.exit_code == 1, result.output
    frame = table(dest).set_index("id")
    assert frame.loc["veo", "status"] == "landed"
    assert frame.loc["veo", "cost_usd"] == pytest.approx(0.80)
    assert frame.loc["kling", "status"] == "not_submitted"
    assert "next video $0.84" in frame.loc["kling", "error"]
    assert simulator.stats.generate_posts == 2  # veo, then hailuo's $0.28 still fits
    assert frame.loc["hailuo", "status"] == "landed"
