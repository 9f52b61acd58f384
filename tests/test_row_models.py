"""Per-row models (`i2v.row_models`): one manifest through several simulator models of
different shapes; every row a schema cannot take is refused before anything is paid."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from i2v.catalog import Catalog, build_catalog
from i2v.errors import InputError
from i2v.models import DEFAULT_MODEL, MODELS
from i2v.row_models import (
    bake_off_id,
    model_price,
    plan_row_model,
    short_name,
)
from i2v.simulator.catalog import input_schema_document, listing_entry
from i2v.simulator.config import SimulatorConfig
from i2v.state import input_identity
from tests.test_model_zoo import KLING, SEEDANCE, T2I, VEO, VIDU, WAN
from tests.test_simulator import client, upload, wait_done

Sim = Any


def sim_catalog() -> Catalog:
    names = SimulatorConfig().known_models
    listing = {"data": [listing_entry(n, "http://sim", None, index=i) for i, n in enumerate(names)]}
    return build_catalog(listing, {n: input_schema_document(n) for n in names}, time.time())


MANIFEST: list[dict[str, str]] = [
    {"id": "a", "model": "", "duration": "6", "prompt": "pan right"},
    {
        "id": "b",
        "model": KLING,
        "duration": "10",
        "prompt": "zoom in",
        "end_image": "E",
        "cfg_scale": "0.7",
    },
    {
        "id": "c",
        "model": VEO,
        "duration": "4",
        "prompt": "tilt",
        "generate_audio": "no",
        "resolution": "1080p",
    },
    {"id": "d", "model": SEEDANCE, "duration": "3", "prompt": "orbit", "seed": "42"},
    {"id": "e", "model": WAN, "duration": "15", "prompt": "dolly", "end_image": "E"},
    {"id": "f", "model": VIDU, "duration": "8", "prompt": "drift"},
    # rows a schema cannot take
    {"id": "x1", "model": VEO, "duration": "4", "prompt": ""},
    {"id": "x2", "model": KLING, "duration": "6", "prompt": "p"},
    {"id": "x3", "model": SEEDANCE, "duration": "13", "prompt": "p"},
    {"id": "x4", "model": VEO, "duration": "8", "prompt": "p", "resolution": "4k"},
    {"id": "x5", "model": SEEDANCE, "duration": "5", "prompt": "p", "end_image": "E"},
    {"id": "x6", "model": T2I, "duration": "", "prompt": "p"},
    {"id": "x7", "model": "kwaivgi/kling-v3.0-sdt/image-to-video", "duration": "5", "prompt": "p"},
]
REFUSED = {
    "x1": "prompt is required",
    "x2": "duration 6 is not allowed by kwaivgi/kling-v3.0-std/image-to-video; use 5|10 s",
    "x3": "use 2-12 s",
    "x4": "resolution must be one of 720p, 1080p",
    "x5": "takes no end frame",
    "x6": "not image-to-video",
    "x7": f"close names: {KLING}",
}


def plan(row: dict[str, str], catalog: Catalog) -> Any:
    extras = {k: v for k, v in row.items() if k not in ("id", "model", "duration", "prompt")}
    return plan_row_model(
        catalog,
        cell_model=row["model"],
        config_model=DEFAULT_MODEL,
        prompt=row["prompt"],
        duration_text=row["duration"],
        extras=extras,
        price_overrides={VEO: 1.00, KLING: 0.10},
    )


@pytest.fixture
def sim(make_simulator: Callable[..., Sim]) -> Sim:
    return make_simulator(latency_s=0.1)


def test_one_manifest_through_six_models_valid_rows_land_bad_rows_refused(sim: Sim) -> None:
    catalog = sim_catalog()
    with client(sim) as c:
        url = upload(c)
        for row in MANIFEST:
            if row["id"] in REFUSED:
                with pytest.raises(InputError, match=REFUSED[row["id"]]):
                    plan(row, catalog)
                continue
            rm = plan(row, catalog)
            body = rm.body(url, url if rm.end_image else None, row["prompt"])
            r = c.post("/api/v1/model/generateVideo", json={"model": rm.model, **body})
            assert r.status_code == 200, (row["id"], r.text)
            done = wait_done(c, r.json()["data"]["id"])
            assert done["status"] == "completed", row["id"]
    assert sim.stats.jobs_created == 6


def test_what_is_sent_typed_priced_and_in_the_identity() -> None:
    catalog = sim_catalog()
    veo = plan(MANIFEST[2], catalog)
    assert veo.inputs == {"generate_audio": False, "resolution": "1080p"}
    assert veo.price_usd == 1.00  # the configured price is higher than the catalog's
    kling = plan(MANIFEST[1], catalog)
    # 10 s against the catalog's one price for 5 s: twice it, above the configured $0.10.
    assert kling.price_usd == pytest.approx(0.84) and kling.end_image == "E"
    assert kling.model_inputs_json() == '{"cfg_scale":0.7,"duration":10}'
    same = kling.identity("sha", "end", "zoom in")
    assert same != kling.identity("sha", "other-end", "zoom in")
    cheaper = plan({**MANIFEST[1], "cfg_scale": "0.2"}, catalog)
    assert cheaper.identity("sha", "end", "zoom in") != same
    assert model_price(None, "m", None) is None
    assert model_price(0.5, "m", {"m:8": 2.0, "m": 0.1}, duration=8, default_duration=4) == 2.0
    assert model_price(0.5, "m", {"m": 0.1}, duration=8, default_duration=4) == 1.0


def test_default_path_keeps_its_identity() -> None:
    # A row of the config's hand-table model without an end picture takes the hand-table
    # path, whatever other columns it has: identity as before.
    from i2v.manifest import ManifestRow
    from i2v.row_plans import takes_schema_path

    def row(**extras: str) -> ManifestRow:
        return ManifestRow(2, "a", "a.png", "/a.png", "p", 6, extras=extras)

    assert not takes_schema_path(row(notes="x", cfg_scale="0.5"), DEFAULT_MODEL)
    assert not takes_schema_path(row(model=DEFAULT_MODEL), DEFAULT_MODEL)
    assert takes_schema_path(row(model=KLING), DEFAULT_MODEL)
    assert takes_schema_path(row(), DEFAULT_MODEL, catalog_model=KLING)
    assert takes_schema_path(row(end_image="e.png"), DEFAULT_MODEL)
    old = input_identity(
        picture_sha256="s",
        prompt="p",
        duration=6,
        model=DEFAULT_MODEL,
        options={"enable_prompt_expansion": False},
    )
    assert (
        old == "8549a3a6fa7da89fb939620273ed200cc3bc234bb7c46202e8ef68f81c4b1e53"
    )  # pinned: the identity before per-row models
    assert DEFAULT_MODEL in MODELS


def test_bake_off_names() -> None:
    assert short_name(KLING) == "kling-v3.0-std"
    assert short_name(DEFAULT_MODEL) == "hailuo-2.3-i2v-standard"
    assert bake_off_id("row1", VEO) == "row1--veo3.1-fast"
    assert len({short_name(m) for m in (*MODELS, KLING, VEO, SEEDANCE, WAN, VIDU)}) == 10
