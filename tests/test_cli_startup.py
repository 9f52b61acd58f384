"""`i2v run`'s start-up (cli/prefect_api.py): Prefect's temporary server is started
first, in the background, used by the flow, and never outlives the CLI: not after a
normal exit, a SIGTERM, a Ctrl-C or a kill -9, and a usage error does not wait for it.

The real CLI in a subprocess with configs/local.yaml (the simulator in-process), no
PREFECT_API_URL, one PREFECT_HOME for the module (only the first run creates the
database)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, free_port, write_manifest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/environ").exists(), reason="finds processes through /proc"
)
LOCAL = str(REPO / "configs" / "local.yaml")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("startup") / "prefect-home"


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",  # two busy cores
    )
    return env


def processes_of(home: Path) -> list[int]:
    """Live processes (the CLI's children included) started with this PREFECT_HOME."""
    mark = f"PREFECT_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def none_left(home: Path, within_s: float = 0.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (left := processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


class Cli:
    """`i2v run --verbose ...` with its stderr read line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "run", *args, "--verbose"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            assert self.proc.poll() is None, f"exited before {text!r}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            time.sleep(0.02)

    def finish(self, timeout_s: float = 120) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code


@pytest.fixture
def one_row(tmp_path: Path, pictures: Path) -> Iterator[list[str]]:
    manifest = write_manifest(pictures, [{"id": "r1", "image": "coffee.png", "prompt": "pan"}])
    yield [str(manifest), "--dest", str(tmp_path / "out"), "--config", LOCAL]


@pytest.mark.timeout(240)
def test_a_run_uses_the_server_it_started_early_and_leaves_nothing_behind(
    one_row: list[str], env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    cli = Cli(one_row, env)
    code = cli.finish(180)
    assert code == 0, cli.output
    assert (tmp_path / "out" / "results.parquet").exists()
    assert "Starting Prefect's temporary server in the background" in cli.output
    assert "Prefect's temporary server is ready on http://127.0.0.1:" in cli.output
    assert "Starting temporary server" not in cli.output, "Prefect started a second one"
    assert "View at" not in cli.output, "a link to a UI the temporary server does not serve"
    assert none_left(home) == [], "the CLI exited before its server"


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)]
)
def test_a_signal_while_the_server_starts_leaves_nothing_behind(
    one_row: list[str], env: dict[str, str], home: Path, signum: int, code: int
) -> None:
    """Before the flow (the flow's own wind-down is tests/test_edges.py): SIGTERM and
    SIGINT exit 143 and 130 through the CLI's cleanup, a kill -9 of the CLI alone makes
    the server stop itself."""
    cli = Cli(one_row, env)
    cli.wait_for("Starting Prefect's temporary server in the background")
    time.sleep(0.5)  # the server is loading
    cli.proc.send_signal(signum)
    assert cli.finish(30) == code, cli.output
    assert "Traceback" not in cli.output, cli.output
    assert none_left(home, within_s=0 if signum != signal.SIGKILL else 10) == []


@pytest.mark.timeout(240)
def test_sigterm_in_the_flow_winds_down_then_stops_the_server(
    one_row: list[str], env: dict[str, str], home: Path
) -> None:
    cli = Cli(one_row, env)
    cli.wait_for("submitted as prediction")
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.finish(60) == 143, cli.output
    assert "stopped by SIGTERM" in cli.output
    assert none_left(home) == []


@pytest.mark.timeout(240)
def test_kill_9_of_the_cli_alone_once_the_server_serves_stops_the_server(
    one_row: list[str], env: dict[str, str], home: Path
) -> None:
    cli = Cli(one_row, env)
    cli.wait_for("Prefect's temporary server is ready")
    cli.proc.kill()
    cli.finish(30)
    assert none_left(home, within_s=10) == []


def test_a_usage_error_does_not_wait_for_the_server(
    env: dict[str, str], home: Path, tmp_path: Path, pictures: Path
) -> None:
    bad = tmp_path / "noimage.csv"
    bad.write_text("picture,prompt\ncoffee.png,pan\n")
    started = time.monotonic()
    cli = Cli([str(bad), "--dest", str(tmp_path / "o"), "--config", LOCAL], env)
    assert cli.finish(60) == 2, cli.output
    assert time.monotonic() - started < 3.0
    assert none_left(home) == []


def test_a_configured_api_that_refuses_connections_is_one_line_before_prefect_loads(
    env: dict[str, str], home: Path, tmp_path: Path, one_row: list[str]
) -> None:
    port = free_port()  # nothing listens there
    env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    started = time.monotonic()
    cli = Cli(one_row, env)
    assert cli.finish(60) == 2, cli.output
    assert time.monotonic() - started < 5.0
    assert f"the Prefect API at http://127.0.0.1:{port}/api" in cli.output
    assert "Traceback" not in cli.output
    assert none_left(home) == []


def test_the_server_child_leaves_an_api_set_in_a_profile_alone(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The child reads Prefect's own settings: an API named in a profile (not in the
    environment) means nothing to serve, and `i2v run` leaves Prefect to use it."""
    home = tmp_path / "profile-home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        'active = "remote"\n[profiles.remote]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n'
    )
    read_fd, write_fd = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-P", "-m", "cli.prefect_api", str(os.getpid()), str(write_fd)],
        env={**env, "PREFECT_HOME": str(home)},
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as answer:
        assert answer.read() == b"api\n"
    assert child.wait(60) == 0
