"""The processes a benchmark starts, and the guarantee that it stops them all.

Every child runs in a session of its own, so a Ctrl-C in the terminal reaches only the
benchmark, and stopping a child also stops whatever it spawned in its process group
(Prefect's temporary API server, for instance).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent
PROBE = Path(__file__).with_name("_cli_probe.py")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0]), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def group_members(leader: int) -> list[int]:
    """Live processes of the session and process group that `leader` started."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        # [0] state, [2] process group, [3] session.
        if fields and fields[0] != "Z" and int(fields[2]) == leader == int(fields[3]):
            members.append(int(entry.name))
    return members


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process has used so far."""
    fields = _proc_stat(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Processes:
    """Starts children (output to `logs/<name>.log`) and stops every one on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                args,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
        """SIGTERM the child and its group; SIGKILL whatever is left after `grace_s`."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = group_members(proc.pid)
            if not pids and proc.poll() is not None:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if proc.poll() is not None and not group_members(proc.pid):
                    return
                time.sleep(0.05)

    def stop_all(self) -> None:
        """Stop every child; a second Ctrl-C meanwhile cannot leave any behind."""
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
        try:
            for proc in reversed(self._started):
                self.stop(proc)
            self._started.clear()
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def http_json(url: str, body: dict[str, Any] | None = None, timeout_s: float = 10) -> Any:
    """GET (or POST `body` as JSON to) `url` and decode the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_until_serving(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60, any_status: bool = False
) -> None:
    """Return once `url` answers (any HTTP status with `any_status`); raise if the child died."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            if any_status:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.1)


@dataclass
class Simulator:
    """The Atlas simulator in its own process, as `python -m i2v.simulator.server`."""

    url: str
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, procs: Processes, *, latency_s: float, max_concurrent: int) -> Simulator:
        port = free_port()
        args = [PYTHON, "-m", "i2v.simulator.server", "--port", str(port)]
        args += ["--latency-s", str(latency_s), "--max-concurrent", str(max_concurrent)]
        proc = procs.start("simulator", args)
        sim = cls(f"http://127.0.0.1:{port}", proc)
        wait_until_serving(f"{sim.url}/_sim/stats", proc)
        return sim

    def stats(self) -> dict[str, Any]:
        return dict(http_json(f"{self.url}/_sim/stats"))

    def reset(self) -> None:
        http_json(f"{self.url}/_sim/reset", body={})

    def configure(self, **knobs: Any) -> None:
        http_json(f"{self.url}/_sim/config", body=knobs)

    def cpu_s(self) -> float | None:
        return cpu_seconds(self.proc.pid)


def start_moto(procs: Processes) -> str:
    """A moto S3 server on loopback; returns its endpoint URL."""
    port = free_port()
    proc = procs.start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)])
    endpoint = f"http://127.0.0.1:{port}"
    wait_until_serving(endpoint, proc, any_status=True)
    return endpoint


@dataclass
class CliRun:
    """One `i2v run` as a user runs it, timed from outside."""

    name: str
    started_at: float  # epoch seconds, just before the process was started
    wall_s: float
    exit_code: int
    peak_rss_mib: float | None  # of the process that runs the flow
    cpu_s: float | None  # user + system of that process
    children_cpu_s: float | None  # of its reaped children: Prefect's temporary server
    log: Path

    def check(self) -> None:
        if self.exit_code != 0:
            raise RuntimeError(f"`i2v run` ({self.name}) exited {self.exit_code}; see {self.log}")


def run_cli(
    procs: Processes,
    name: str,
    cli_args: list[str],
    env: dict[str, str],
    timeout_s: float,
) -> CliRun:
    """Run `i2v run CLI_ARGS...` in a subprocess through the probe, wait for it to end."""
    report = procs.logs / f"{name}.probe.json"
    report.unlink(missing_ok=True)
    args = [PYTHON, str(PROBE), "run", *cli_args]
    started_at, t0 = time.time(), time.monotonic()
    proc = procs.start(name, args, env={**env, "I2V_BENCH_PROBE": str(report)})
    try:
        code = proc.wait(timeout_s)
        wall = time.monotonic() - t0
    finally:
        procs.stop(proc)
    probe = json.loads(report.read_text()) if report.exists() else {}
    rss_kib = probe.get("peak_rss_kib")
    return CliRun(
        name=name,
        started_at=started_at,
        wall_s=wall,
        exit_code=code,
        peak_rss_mib=rss_kib / 1024 if rss_kib is not None else None,
        cpu_s=probe.get("cpu_s"),
        children_cpu_s=probe.get("children_cpu_s"),
        log=procs.logs / f"{name}.log",
    )


def run_child(
    procs: Processes,
    name: str,
    args: list[str],
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> float:
    """Run a child that must succeed; returns its wall seconds."""
    t0 = time.monotonic()
    proc = procs.start(name, args, env)
    try:
        code = proc.wait(timeout_s)
        wall = time.monotonic() - t0
    finally:
        procs.stop(proc)
    if code != 0:
        raise RuntimeError(f"{name} exited {code}; see {procs.logs / name}.log")
    return wall
