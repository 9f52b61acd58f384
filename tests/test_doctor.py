"""`i2v doctor` end to end against the simulator over real HTTP (its models listing and
published schemas, drifted on purpose), moto S3, a local DEST, and Prefect's API; the
schema comparison and the DEST check on their own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from i2v.models import DEFAULT_MODEL, get_model
from tests.helpers import TEST_API_KEY, sim_config

pytestmark = [pytest.mark.timeout(180)]

runner = CliRunner()


def doctor(*args: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["doctor", *args])
    return result.exit_code, result.output.splitlines()


def failed(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("✗")]


def line_with(lines: list[str], text: str) -> str:
    found = [line for line in lines if text in line]
    assert found, f"no line with {text!r} in:\n" + "\n".join(lines)
    return found[0]


# ------------------------------------------------------------------- the simulator side


def test_the_models_listing_has_the_real_shape_and_each_schema_is_served(
    make_simulator: Any,
) -> None:
    sim = make_simulator(catalog_prices={DEFAULT_MODEL: 0.28})
    body = httpx.get(sim.url + "/api/v1/models").json()
    assert body["code"] == 200
    entry = next(e for e in body["data"] if e["model"] == DEFAULT_MODEL)
    assert {"uuid", "model", "type", "displayName", "schema", "price", "display_console"} <= set(
        entry
    )
    assert entry["type"] == "Video" and entry["display_console"] is True
    from i2v.parsing import input_schema, listed_price, model_catalog

    assert model_catalog(body)[DEFAULT_MODEL] == 0.28 and listed_price(entry) == 0.28
    for each in body["data"]:
        doc = httpx.get(each["schema"]).json()
        inputs = input_schema(doc)
        assert inputs is not None and inputs["x-order-properties"] == list(inputs["properties"])
    inputs = input_schema(httpx.get(entry["schema"]).json())
    assert inputs is not None
    assert inputs["required"] == ["image"]
    assert inputs["properties"]["duration"]["enum"] == [6, 10]
    sim.config.schema_drift = ("nonsense",)
    assert httpx.get(entry["schema"]).status_code == 500
    assert httpx.get(sim.url + "/_sim/schemas/no/such-model.json").status_code == 404


# ------------------------------------------------------------------------ end to end


def test_all_good_against_the_simulator_and_a_local_dest(
    make_simulator: Any, tmp_path: Path
) -> None:
    sim = make_simulator(catalog_prices={DEFAULT_MODEL: 0.28})
    dest = tmp_path / "dest"
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)), "--dest", str(dest))
    assert code == 0, "\n".join(lines)
    assert not failed(lines)
    line_with(lines, f"API host {sim.url} answers (GET /api/v1/models: 11 models")
    line_with(lines, "the API key is accepted (from ATLASCLOUD_API_KEY)")
    line_with(lines, f"model {DEFAULT_MODEL} is listed (Video)")
    line_with(
        lines,
        "the published input schema takes what we send (image, prompt, duration, "
        "enable_prompt_expansion; durations 6/10 s)",
    )
    line_with(lines, "price: the catalog's $0.28 per 6 s video matches the config")
    line_with(lines, f"DEST {dest} is writable")
    assert list(dest.iterdir()) == [], "the marker is removed"
    assert TEST_API_KEY not in "\n".join(lines)
    assert sim.stats.generate_posts == 0 and sim.stats.uploads == 0, "nothing paid"


@pytest.mark.parametrize(
    ("drift", "says"),
    [
        ("renamed_field", "it has no field 'image', which we send (renamed to 'image_url'?)"),
        ("new_required_field", "it requires 'resolution', which we do not send"),
        ("other_durations", "durations are 5/8 s, we check 6/10 s"),
    ],
)
def test_a_schema_that_disagrees_is_named(
    make_simulator: Any, tmp_path: Path, drift: str, says: str
) -> None:
    sim = make_simulator(schema_drift=(drift,))
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)))
    assert code == 2
    (bad,) = failed(lines)
    assert "published input schema" in bad and says in bad, bad
    assert "start no big run" in lines[lines.index(bad) + 1]


def test_a_refused_key_is_named_and_never_printed(make_simulator: Any, tmp_path: Path) -> None:
    sim = make_simulator(api_key="sk-the-right-one")
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)))
    assert code == 2
    (bad,) = failed(lines)
    assert bad.startswith("✗ the API key is refused (HTTP 401; from ATLASCLOUD_API_KEY)")
    text = "\n".join(lines)
    assert TEST_API_KEY not in text and "sk-the-right-one" not in text


def test_no_key_is_named(
    make_simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator()
    monkeypatch.delenv("ATLASCLOUD_API_KEY")
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)))
    assert code == 2
    (bad,) = failed(lines)
    assert bad == "✗ no API key: ATLASCLOUD_API_KEY is not set"
    assert sim.stats.polls == 0, "no key check without a key"


def test_a_cloudflare_block_and_a_dead_host(make_simulator: Any, tmp_path: Path) -> None:
    sim = make_simulator(blocked_user_agents=("i2v-pipeline",))
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)))
    assert code == 2
    bad = line_with(lines, "✗ API host")
    assert "block page" in bad and "1010" in bad
    assert "ATLASCLOUD_USER_AGENT" in lines[lines.index(bad) + 1]

    config = tmp_path / "dead.yaml"
    config.write_text("api:\n  base_url: http://127.0.0.1:9\n")
    code, lines = doctor("--config", str(config))
    assert code == 2 and "does not answer" in line_with(lines, "✗ API host http://127.0.0.1:9")


def test_the_workers_picture_hosts(
    make_simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(sim_config(tmp_path, make_simulator()))
    _, lines = doctor("--config", config)
    assert not [line for line in lines if "I2V_PRIVATE_HOSTS" in line]  # unset: no line
    monkeypatch.setenv("I2V_PRIVATE_HOSTS", "pictures.internal, 10.20.0.0/16")
    code, lines = doctor("--config", config)
    assert code == 0, "\n".join(lines)
    assert lines[1] == (
        "✓ picture URLs may reach these internal hosts (I2V_PRIVATE_HOSTS): "
        "pictures.internal,10.20.0.0/16; their pictures go to the provider through uploadMedia"
    )
    monkeypatch.setenv("I2V_PRIVATE_HOSTS", "pictures.internal:http")
    code, lines = doctor("--config", config)
    assert code == 2
    assert failed(lines)[0].startswith(
        "✗ I2V_PRIVATE_HOSTS entry 'pictures.internal:http' is not a host name"
    )


def test_an_unknown_model_and_the_catalog_price(make_simulator: Any, tmp_path: Path) -> None:
    sim = make_simulator(known_models=("minimax/hailuo-2.3/i2v-pro",))
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)))
    assert code == 2
    assert f"model {DEFAULT_MODEL} is not in the models listing" in failed(lines)[0]

    sim = make_simulator(catalog_prices={DEFAULT_MODEL: 0.35})
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)))
    assert code == 2
    (bad,) = failed(lines)
    assert bad == "✗ price: the catalog says $0.35 per 6 s video, the config $0.28"
    assert "prices_usd" in lines[lines.index(bad) + 1]

    sim = make_simulator(catalog_prices={DEFAULT_MODEL: 0.20})
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)))
    assert code == 0
    line_with(lines, "the catalog says $0.20 per 6 s video, the config $0.28 (budgets count")


def test_s3_dest_checks(make_simulator: Any, tmp_path: Path, s3_bucket: str) -> None:
    import boto3

    sim = make_simulator()
    config = str(sim_config(tmp_path, sim))
    code, lines = doctor("--config", config, "--dest", f"s3://{s3_bucket}/videos/run1")
    assert code == 0, "\n".join(lines)
    line_with(lines, f"✓ S3: credentials from env, region us-east-1, bucket '{s3_bucket}'")
    line_with(lines, f"✓ DEST s3://{s3_bucket}/videos/run1 is writable")
    left = boto3.client("s3").list_objects_v2(Bucket=s3_bucket).get("KeyCount")
    assert left == 0, "the marker is removed"

    code, lines = doctor("--config", config, "--dest", "s3://no-such-bucket-i2v/x")
    assert code == 2
    line_with(lines, "✗ S3: bucket 'no-such-bucket-i2v' does not exist")


def test_an_unwritable_local_dest(make_simulator: Any, tmp_path: Path) -> None:
    sim = make_simulator()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, lines = doctor("--config", str(sim_config(tmp_path, sim)), "--dest", str(blocker / "x"))
    assert code == 2
    assert "is not writable" in line_with(lines, f"✗ DEST {blocker / 'x'}")


@pytest.mark.usefixtures("prefect_harness")
def test_the_prefect_api_and_the_global_limit(make_simulator: Any, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    sim = make_simulator()
    name = f"doctor-{os.getpid()}-{tmp_path.name}"[:60]
    config = sim_config(tmp_path, sim, global_concurrency_limit=name)
    code, lines = doctor("--config", str(config))
    assert code == 2
    line_with(lines, "✓ Prefect API http")
    (bad,) = failed(lines)
    assert bad.startswith(f"✗ Prefect global concurrency limit '{name}' does not exist")
    assert f"prefect gcl create {name} --limit 20" in lines[lines.index(bad) + 1]

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=7))
    code, lines = doctor("--config", str(config))
    assert code == 0, "\n".join(lines)
    line_with(lines, f"✓ Prefect global concurrency limit '{name}': 7 slots (0 in use)")


# ---------------------------------------------------------------------- on their own


def test_compare_schema_reads_refs_and_any_of_enums() -> None:
    from i2v.doctor_api import compare_schema
    from i2v.parsing import input_schema

    doc = {
        "components": {
            "schemas": {
                "Input": {"$ref": "#/components/schemas/Body"},
                "Body": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string"},
                        "prompt": {"type": "string", "maxLength": 1500},
                        "duration": {"$ref": "#/components/schemas/Duration"},
                        "enable_prompt_expansion": {"type": "string"},
                    },
                },
                "Duration": {"anyOf": [{"const": 6}, {"const": "10"}]},
            }
        }
    }
    inputs = input_schema(doc)
    assert inputs is not None
    sent = ["image", "prompt", "duration", "enable_prompt_expansion"]
    spec = get_model(DEFAULT_MODEL)
    assert compare_schema(inputs, sent, spec) == [
        "'enable_prompt_expansion' is a string, we send a boolean",
        "prompts take at most 1500 characters, we allow 2000",
    ]
    assert input_schema({"components": {}}) is None and input_schema([]) is None


def test_a_store_that_ignores_conditional_writes_is_refused(tmp_path: Path) -> None:
    from i2v.doctor import check_dest
    from i2v.local_storage import LocalStorage

    class LastWriterWins(LocalStorage):
        def write_if_absent(self, key: str, data: bytes, *, content_type: str | None = None) -> str:
            self.write_bytes(key, data)
            return "v"

    check = check_dest(LastWriterWins(tmp_path))
    assert not check.ok and "ignores conditional writes" in check.line
    assert "pay twice" in check.todo
    assert check_dest(LocalStorage(tmp_path)).ok
