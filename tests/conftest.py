"""Shared fixtures: the Atlas simulator over real HTTP, a moto S3 server on loopback,
Prefect's real engine, and real pictures."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLES, TEST_API_KEY, free_port

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Never let a test reach a real provider by accident.
os.environ["ATLASCLOUD_BASE_URL"] = "http://127.0.0.1:9"
os.environ["ATLASCLOUD_API_KEY"] = TEST_API_KEY
# Records a run could not write to DEST go to this session's own folder, not ~/.local.
os.environ["I2V_JOURNAL_DIR"] = tempfile.mkdtemp(prefix="i2v-test-journal-")
# Picture URLs reach internal hosts only where a test allows them itself.
os.environ.pop("I2V_PRIVATE_HOSTS", None)


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    """A folder with the shipped sample photos (copied, so tests may write beside them)."""
    dst = tmp_path / "pictures"
    dst.mkdir()
    for p in EXAMPLES.iterdir():
        if p.suffix.lower() in {".png", ".jpg", ".jpeg"}:
            shutil.copy(p, dst / p.name)
    return dst


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., Any]]:
    """Start Atlas simulators on free loopback ports; knobs as keyword arguments."""
    from i2v.simulator.server import start_simulator

    handles: list[Any] = []

    def _make(**knobs: Any) -> Any:
        handle = start_simulator(port=0, **knobs)
        handles.append(handle)
        return handle

    yield _make
    for h in handles:
        h.stop()


@pytest.fixture
def simulator(make_simulator: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """One simulator with fast defaults; ATLASCLOUD_BASE_URL points at it."""
    handle = make_simulator(latency_s=0.3)
    monkeypatch.setenv("ATLASCLOUD_BASE_URL", handle.url)
    return handle


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on loopback (moto server); AWS env points boto3 at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        )
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(autouse=True)
def own_result_storage(tmp_path: Path) -> Any:
    """Prefect's task results (and so its caches) per test: no test, and no earlier
    session, can hand another a cached result."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "prefect-results"}):
        yield tmp_path / "prefect-results"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's real engine against a temporary database, once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
