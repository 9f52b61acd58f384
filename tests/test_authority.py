"""Who decides what: options only a worker may decide (where the key goes, what it may
read) are refused in deployment runs unless the worker's environment allows them, and
kept in the operator's own calls. The rule from a table; the flows' side through
Prefect's real engine (a worker's process by its environment, a deployment run's
subflow by its ancestry on the server). The real worker: tests/test_deployments.py."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import pytest
from prefect import flow

from flows.batch import i2v_batch
from i2v._constants import url_origin
from i2v.authority import allowed_origins, refusals
from i2v.config import BatchOptions, load_options
from tests.helpers import EXAMPLES, options_for, requests_seen, table, write_manifest

SIM = "http://127.0.0.1:5555"
OWN = "https://api.atlascloud.ai"


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://api.atlascloud.ai", OWN),
        ("HTTPS://API.AtlasCloud.ai:443/v1/", OWN),
        ("http://127.0.0.1:5555/", SIM),
        ("http://localhost:80", "http://localhost"),
        ("http://[::1]:8080/x", "http://[::1]:8080"),
        ("https://user:pw@api.atlascloud.ai", None),
        ("ftp://api.atlascloud.ai", None),
        ("https://", None),
        ("api.atlascloud.ai", None),
        ("http://127.0.0.1:99999", None),
    ],
)
def test_url_origin(url: str, origin: str | None) -> None:
    assert url_origin(url) == origin


def test_allowed_origins_are_exact_origins() -> None:
    env = {"I2V_ALLOWED_BASE_URLS": f" {SIM}/, https://Proxy.example:8443\nhttps://p/x *"}
    good, bad = allowed_origins(env)
    assert good == {SIM, "https://proxy.example:8443"}
    assert bad == ["https://p/x", "*"]
    assert allowed_origins({}) == (frozenset(), [])


def _options(**values: Any) -> BatchOptions:
    api = values.pop("api", {})
    return load_options(None, api=api, **values)


# (options, worker environment, the settings refused)
RULES: list[tuple[dict[str, Any], dict[str, str], list[str]]] = [
    ({}, {}, []),  # nothing asked
    ({"api": {"base_url": OWN}}, {}, []),  # the default API, spelled out
    ({"api": {"base_url": OWN + "/"}}, {}, []),
    ({"api": {"base_url": SIM}}, {}, ["options.api.base_url"]),
    ({"api": {"base_url": SIM}}, {"ATLASCLOUD_BASE_URL": SIM + "/"}, []),  # the worker's own
    ({"api": {"base_url": OWN}}, {"ATLASCLOUD_BASE_URL": SIM}, ["options.api.base_url"]),
    ({"api": {"base_url": SIM}}, {"I2V_ALLOWED_BASE_URLS": f"https://x.test,{SIM}"}, []),
    ({"api": {"base_url": SIM + "/other/path"}}, {"I2V_ALLOWED_BASE_URLS": SIM}, []),
    ({"api": {"base_url": "http://127.0.0.1:5556"}}, {"I2V_ALLOWED_BASE_URLS": SIM}, ["base_url"]),
    ({"api": {"base_url": "https://127.0.0.1:5555"}}, {"I2V_ALLOWED_BASE_URLS": SIM}, ["base_url"]),
    ({"api": {"base_url": f"http://u:p@{SIM[7:]}"}}, {"I2V_ALLOWED_BASE_URLS": SIM}, ["base_url"]),
    ({"api": {"base_url": SIM}}, {"I2V_ALLOWED_BASE_URLS": SIM + "/api"}, ["base_url"]),
    ({"api": {"base_url": SIM, "simulator": True}}, {}, []),  # the key goes nowhere
    ({"allow_outside_base": True}, {}, ["options.allow_outside_base"]),
    ({"allow_outside_base": True}, {"I2V_ALLOW_OUTSIDE_BASE": "0"}, ["allow_outside_base"]),
    ({"allow_outside_base": True}, {"I2V_ALLOW_OUTSIDE_BASE": "1"}, []),
    ({"allow_outside_base": True}, {"I2V_ALLOW_OUTSIDE_BASE": " True "}, []),
    ({"allow_outside_base": False}, {}, []),
    (
        {"allow_outside_base": True, "api": {"base_url": SIM}},
        {"I2V_ALLOWED_BASE_URLS": SIM},
        ["allow_outside_base"],
    ),
    ({"allow_outside_base": True, "api": {"base_url": SIM}}, {}, ["base_url", "outside_base"]),
]


@pytest.mark.parametrize(("values", "env", "refused"), RULES)
def test_what_a_deployment_run_may_ask_for(
    values: dict[str, Any], env: dict[str, str], refused: list[str]
) -> None:
    found = refusals(_options(**values), env)
    assert len(found) == len(refused), found
    for message, setting in zip(found, refused, strict=True):
        assert setting in message
        assert "in the worker's environment" in message


def test_the_refusal_says_what_and_how_to_allow_it() -> None:
    [message] = refusals(_options(api={"base_url": SIM + "/v1"}), {})
    assert message == (
        f"options.api.base_url '{SIM}/v1' is not this worker's API ({OWN}): a run's form "
        "cannot choose where the key is sent. Set ATLASCLOUD_BASE_URL, or add "
        f"{SIM} to I2V_ALLOWED_BASE_URLS, in the worker's environment"
    )
    [message] = refusals(
        _options(api={"base_url": "https://me:hunter2@evil.test"}),
        {"I2V_ALLOWED_BASE_URLS": "evil.test"},
    )
    assert "hunter2" not in message and "'https://***@evil.test'" in message
    assert "entries that are not an origin, ignored: 'evil.test'" in message
    [message] = refusals(_options(allow_outside_base=True), {})
    assert message.startswith("options.allow_outside_base is true")
    assert "I2V_ALLOW_OUTSIDE_BASE=1" in message


# ------------------------------------------------------------------ the flows' side


def _manifest(folder: Path, *, outside: bool = False) -> Path:
    """Two rows; with `outside`, the second picture sits beside (not in) the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / "coffee.png", folder / "coffee.png")
    second = "rocket.jpg"
    if outside:
        shutil.copy(EXAMPLES / "rocket.jpg", folder.parent / "rocket.jpg")
        second = "../rocket.jpg"
    else:
        shutil.copy(EXAMPLES / "rocket.jpg", folder / "rocket.jpg")
    return write_manifest(
        folder,
        [
            {"id": "a", "image": "coffee.png", "prompt": "pan left"},
            {"id": "b", "image": second, "prompt": "zoom in"},
        ],
    )


@pytest.fixture
def worker_process(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process as a worker starts it for a flow run (Prefect's own variable)."""
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", str(uuid.uuid4()))
    for name in ("I2V_ALLOWED_BASE_URLS", "I2V_ALLOW_OUTSIDE_BASE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("which", ["batch", "fanout", "inbox"])
def test_a_worker_refuses_a_form_base_url_before_any_request(
    which: str, worker_process: pytest.MonkeyPatch, make_simulator: Any, tmp_path: Path
) -> None:
    from flows.authority import WorkerSettingRefused
    from flows.fanout import i2v_fanout
    from flows.inbox import i2v_inbox

    sim = make_simulator(latency_s=0.1)
    manifest = _manifest(tmp_path / "in")
    dest = tmp_path / "out"
    options = options_for(sim)
    runs = {
        "batch": lambda: i2v_batch(str(manifest), str(dest), options),
        "fanout": lambda: i2v_fanout(str(manifest), str(dest), 1, options),
        "inbox": lambda: i2v_inbox(str(manifest.parent), str(dest), options),
    }
    with pytest.raises(WorkerSettingRefused) as refused:
        asyncio.run(runs[which]())
    assert str(refused.value).startswith(f"options.api.base_url '{sim.url}' is not this worker")
    assert requests_seen(sim) == 0 and sim.stats.uploads == 0
    assert not dest.exists(), "a refused run writes nothing"


@pytest.mark.usefixtures("prefect_harness")
def test_a_worker_allows_what_its_environment_allows(
    worker_process: pytest.MonkeyPatch, make_simulator: Any, tmp_path: Path
) -> None:
    from flows.authority import WorkerSettingRefused

    sim = make_simulator(latency_s=0.1)
    worker_process.setenv("I2V_ALLOWED_BASE_URLS", f"https://elsewhere.test {sim.url}/")
    summary = asyncio.run(
        i2v_batch(str(_manifest(tmp_path / "in")), str(tmp_path / "o"), options_for(sim))
    )
    assert summary.counts["landed"] == 2

    # allow_outside_base: refused, then allowed by I2V_ALLOW_OUTSIDE_BASE.
    manifest = _manifest(tmp_path / "outside" / "in", outside=True)
    dest = tmp_path / "outside" / "out"
    options = options_for(sim, allow_outside_base=True)
    seen = requests_seen(sim)
    with pytest.raises(WorkerSettingRefused, match=r"^options\.allow_outside_base is true"):
        asyncio.run(i2v_batch(str(manifest), str(dest), options))
    assert requests_seen(sim) == seen and not dest.exists()
    worker_process.setenv("I2V_ALLOW_OUTSIDE_BASE", "1")
    assert asyncio.run(i2v_batch(str(manifest), str(dest), options)).counts["landed"] == 2
    assert set(table(dest)["status"]) == {"landed"}


@flow(name="team-flow")
async def team_flow(source: str, dest: str, options: BatchOptions) -> Any:
    """A team's own flow calling i2v_batch as a subflow."""
    return await i2v_batch(source, dest, options)


@pytest.mark.usefixtures("prefect_harness")
def test_a_subflow_of_a_deployment_run_is_refused_by_its_ancestry(
    make_simulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No worker environment here: the subflow's own flow run has no deployment, its
    parent does (a deployment run executed in this process by Prefect's engine)."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    sim = make_simulator(latency_s=0.1)
    manifest = _manifest(tmp_path / "in")
    options = options_for(sim)
    params = {"source": str(manifest), "dest": str(tmp_path / "d1"), "options": options}
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(team_flow)
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=f"team-{uuid.uuid4().hex[:8]}",
            entrypoint="tests/test_authority.py:team_flow",
        )
        deployed = client.create_flow_run_from_deployment(
            deployment_id, parameters={**params, "options": options.model_dump(mode="json")}
        )
    running = run_flow(team_flow, flow_run=deployed, parameters=params, return_type="state")
    state: Any = asyncio.run(cast(Coroutine[Any, Any, Any], running))
    assert state.is_failed(), state
    assert "options.api.base_url" in str(state.message) + repr(state.data), state
    assert requests_seen(sim) == 0 and not (tmp_path / "d1").exists()
    with get_client(sync_client=True) as client:
        children = [r for r in client.read_flow_runs(limit=50) if r.parent_task_run_id is not None]
        child = next(r for r in children if r.parameters.get("dest") == str(tmp_path / "d1"))
        assert child.deployment_id is None and child.state is not None and child.state.is_failed()
        assert "I2V_ALLOWED_BASE_URLS" in str(child.state.message)

    # The same flow called by the operator (no deployment anywhere above) keeps its options.
    summary = asyncio.run(team_flow(str(manifest), str(tmp_path / "d2"), options))
    assert summary.counts["landed"] == 2
