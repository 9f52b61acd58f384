"""Other hosts' models in the simulator and the schema rules (`i2v.model_schema`):
real field names and duration shapes, every body checked against the published schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from i2v.catalog import Catalog, build_catalog, load_catalog
from i2v.client import AtlasClient
from i2v.errors import ConfigError, InputError
from i2v.model_schema import build_body, convert, read_schema
from i2v.models import DEFAULT_MODEL
from i2v.parsing import input_schema
from i2v.simulator.zoo import KLING, SEEDANCE, T2I, VEO, VIDU, WAN
from tests.test_simulator import KEY, client, decode_frames, free_port, upload, wait_done

Sim = Any


@pytest.fixture
def sim(make_simulator: Callable[..., Sim]) -> Sim:
    return make_simulator(latency_s=0.1)


def schema_of(sim: Sim, model: str) -> Any:
    listing = httpx.get(sim.url + "/api/v1/models").json()["data"]
    entry = next(e for e in listing if e["model"] == model)
    doc = httpx.get(entry["schema"]).json()
    return entry, read_schema(model, input_schema(doc) or {})


def test_listing_carries_categories_types_and_prices(sim: Sim) -> None:
    listing = {e["model"]: e for e in httpx.get(sim.url + "/api/v1/models").json()["data"]}
    assert listing[KLING]["categories"] == ["IMAGE-TO-VIDEO"]
    assert listing[T2I]["categories"] == ["TEXT-TO-IMAGE"] and listing[T2I]["type"] == "Image"
    assert listing[VEO]["price"]["actual"] == 0.80
    assert "minimax/hailuo-2.3/i2v-standard" in listing


def test_schema_shapes_first_and_end_frame_and_durations(sim: Sim) -> None:
    shapes = {m: schema_of(sim, m)[1] for m in (KLING, VEO, SEEDANCE, WAN, VIDU)}
    assert (shapes[KLING].first_frame, shapes[KLING].end_frame) == ("image_url", "end_image_url")
    assert (shapes[WAN].first_frame, shapes[WAN].end_frame) == ("image", "last_image")
    assert shapes[VIDU].first_frame == "images" and shapes[VIDU].end_frame is None
    assert shapes[KLING].durations_text() == "5|10"
    assert shapes[VEO].durations_text() == "4|6|8"
    assert shapes[SEEDANCE].durations_text() == "2-12"
    assert "prompt" in shapes[VEO].required


@pytest.mark.parametrize(
    ("model", "extras", "duration"),
    [
        (KLING, {"cfg_scale": 0.7, "negative_prompt": "blur"}, 10),
        (VEO, {"generate_audio": False, "resolution": "1080p"}, 4),
        (SEEDANCE, {"seed": 42, "cfg_scale": 3.5}, 3),
        (WAN, {"seed": 7}, 5),
        (VIDU, {}, 4),
    ],
)
def test_each_shape_is_taken_and_renders_the_duration(
    sim: Sim, model: str, extras: dict[str, Any], duration: int
) -> None:
    _, schema = schema_of(sim, model)
    with client(sim) as c:
        url = upload(c)
        end = url if schema.end_frame else None
        body = build_body(
            schema,
            image=url,
            prompt="The camera pans right",
            duration=duration,
            end_image=end,
            extras=extras,
        )
        r = c.post("/api/v1/model/generateVideo", json={"model": model, **body})
        assert r.status_code == 200, r.text
        done = wait_done(c, r.json()["data"]["id"])
        assert done["status"] == "completed" and done["model"] == model
        seconds, _ = decode_frames(c.get(done["outputs"][0]).content)
    assert seconds == pytest.approx(duration, abs=0.1)


@pytest.mark.parametrize(
    ("model", "body", "needle"),
    [
        (KLING, {"image": "x"}, "'image' is not an input"),
        (KLING, {"image_url": "x", "duration": 6}, "duration must be one of 5, 10"),
        (VEO, {"image": "x"}, "prompt is required"),
        (VEO, {"image": "x", "prompt": "p", "generate_audio": "yes"}, "true or false"),
        (VEO, {"image": "x", "prompt": "p", "resolution": "4k"}, "resolution must be one of"),
        (SEEDANCE, {"image": "x", "duration": 13}, "at most 12"),
        (SEEDANCE, {"image": "x", "seed": 1.5}, "seed must be an integer"),
        (VIDU, {"images": "x", "prompt": "p"}, "non-empty list"),
        (T2I, {"prompt": "p"}, "not a video model"),
    ],
)
def test_bodies_that_break_the_schema_are_400_and_make_no_job(
    sim: Sim, model: str, body: dict[str, Any], needle: str
) -> None:
    r = httpx.post(
        sim.url + "/api/v1/model/generateVideo",
        json={"model": model, **body},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 400 and needle in r.json()["msg"], r.text
    assert sim.stats.jobs_created == 0


def test_build_body_refuses_before_sending(sim: Sim) -> None:
    _, veo = schema_of(sim, VEO)
    with pytest.raises(InputError, match="prompt is required"):
        build_body(veo, image="https://x/a.png", prompt=None, duration=4)
    with pytest.raises(InputError, match="takes no end frame"):
        build_body(veo, image="https://x/a.png", prompt="p", duration=4, end_image="e")
    with pytest.raises(InputError, match="duration must be one of 4, 6, 8"):
        build_body(veo, image="https://x/a.png", prompt="p", duration=5)
    assert convert(veo, "generate_audio", "no") is False
    with pytest.raises(InputError, match="resolution must be one of"):
        convert(veo, "resolution", "4k")
    _, seed = schema_of(sim, SEEDANCE)
    assert convert(seed, "seed", "42") == 42 and convert(seed, "cfg_scale", "2.5") == 2.5


# ---- the catalog (i2v.catalog) and `i2v models`


def test_catalog_keeps_shown_i2v_models_caches_and_falls_back(sim: Sim, tmp_path: Path) -> None:
    cache = tmp_path / "catalog.json"

    async def load(base: str, **kw: Any) -> Catalog:
        async with AtlasClient(api_key="unused", base_url=base) as c:
            return await load_catalog(c, cache, **kw)

    cat = asyncio.run(load(sim.url))
    names = {m.name for m in cat.i2v()}
    assert {KLING, VEO, SEEDANCE, WAN, VIDU, DEFAULT_MODEL} <= names
    assert T2I not in names and "minimax/hailuo-2.3/t2v-standard" not in names
    assert cat.models[VEO].price_usd == 0.80 and not cat.from_cache
    with pytest.raises(InputError, match="not image-to-video"):
        cat.resolve(T2I)
    with pytest.raises(InputError, match=f"close names: {KLING}"):
        cat.resolve("kwaivgi/kling-v3.0-std/image-to-vide")
    assert cat.resolve(KLING).schema.first_frame == "image_url"  # type: ignore[union-attr]
    # A fresh cache is used; a stale one is replaced; no network falls back to the copy.
    assert asyncio.run(load(sim.url)).from_cache
    dead = f"http://127.0.0.1:{free_port()}"
    offline = asyncio.run(load(dead, ttl_s=0))
    assert offline.from_cache and KLING in offline.models
    with pytest.raises(ConfigError, match="none is cached"):
        cache.unlink()
        asyncio.run(load(dead))


def test_hidden_models_are_left_out() -> None:
    listing = {
        "data": [
            {"model": "a/i2v", "categories": ["IMAGE-TO-VIDEO"], "display_console": False},
            {"model": "b/image-to-video", "type": "Video"},
        ]
    }
    doc = {"components": {"schemas": {"Input": {"properties": {"image": {"type": "string"}}}}}}
    cat = build_catalog(listing, {"b/image-to-video": doc}, 0.0)
    assert list(cat.models) == ["b/image-to-video"] and cat.i2v()[0].schema.first_frame == "image"  # type: ignore[union-attr]


def test_i2v_models_command_lists_price_durations_inputs(
    sim: Sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("I2V_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ATLASCLOUD_BASE_URL", sim.url)
    r = CliRunner().invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = {m["model"]: m for m in json.loads(r.stdout)["models"]}
    assert rows[SEEDANCE]["durations"] == "2-12" and rows[KLING]["end_frame"] == "end_image_url"
    assert rows[VEO]["price_usd"] == 0.8 and "generate_audio" in rows[VEO]["inputs"]
    assert T2I not in rows
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and f"{VIDU}  $0.30/run  durations 4|8" in r.output
