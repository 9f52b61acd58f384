"""Run the simulator over real HTTP: in a background thread (tests, demos) or blocking (CLI).

python -m i2v.simulator.server --port 8765 --latency-s 0.5 --rate-429 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from i2v.simulator.app import Simulator
from i2v.simulator.config import SimulatorConfig, knob_names, parse_knob
from i2v.simulator.outputs import DownloadCut
from i2v.simulator.stats import SimulatorStats

__all__ = ["SimulatorHandle", "main", "serve", "start_simulator"]

# Keep-alive longer than any client pool's idle expiry (httpx: 5 s), so a client never
# reuses a connection the server is closing at that instant.
_KEEP_ALIVE_S = 75


class _DropDeliberateCuts(logging.Filter):
    """Hide uvicorn's traceback for downloads cut on purpose (`download_failures`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BaseExceptionGroup):
            return not all(isinstance(e, DownloadCut) for e in exc.exceptions)
        return not isinstance(exc, DownloadCut)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropDeliberateCuts) for f in logger.filters):
        logger.addFilter(_DropDeliberateCuts())


class _ThreadedServer(uvicorn.Server):
    """uvicorn.Server that notices `should_exit` within 10 ms rather than 100 ms.

    Test suites start and stop hundreds of simulators; the stock tick made each stop
    cost about 0.2 s.
    """

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            for _ in range(10):  # one stock tick, in ten slices
                if self.should_exit:
                    break
                await asyncio.sleep(0.01)


class SimulatorHandle:
    """A simulator serving in a background thread.

    `config` is live (change knobs any time), `stats` counts what it saw.
    """

    def __init__(
        self,
        url: str,
        simulator: Simulator,
        server: uvicorn.Server,
        thread: threading.Thread,
        sock: socket.socket,
    ) -> None:
        self.url = url
        self.simulator = simulator
        self._server = server
        self._thread = thread
        self._sock = sock

    @property
    def config(self) -> SimulatorConfig:
        return self.simulator.config

    @property
    def stats(self) -> SimulatorStats:
        return self.simulator.stats

    def finish_stuck(self) -> int:
        """Let every stuck job complete now; returns how many."""
        return self.simulator.finish_stuck()

    def reset_stats(self) -> None:
        """Zero the counters (jobs still processing stay in flight)."""
        self.simulator.stats.reset()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(timeout_s)
            if self._thread.is_alive():  # a client still holds a stream open
                self._server.force_exit = True
                self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimulatorHandle(url={self.url!r})"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def start_simulator(port: int = 0, host: str = "127.0.0.1", **knobs: Any) -> SimulatorHandle:
    """Serve a new simulator in a background thread; returns once it accepts connections.

    `port=0` picks a free port. Knobs are `SimulatorConfig` fields (TypeError otherwise).
    """
    simulator = Simulator(SimulatorConfig(**knobs))
    # Bind here rather than in uvicorn: the port is known (and taken) before we return.
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP; without it Nagle plus delayed ACKs add ~40 ms to every request.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    bound_port = int(sock.getsockname()[1])
    _install_log_filter()
    server = _ThreadedServer(
        uvicorn.Config(
            simulator,
            log_config=None,  # leave the host process's logging alone
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_keep_alive=_KEEP_ALIVE_S,
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"atlas-simulator-{bound_port}",
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the simulator did not start on {host}:{bound_port}")
        time.sleep(0.005)
    return SimulatorHandle(_url(host, bound_port), simulator, server, thread, sock)


def serve(port: int, host: str = "127.0.0.1", config: SimulatorConfig | None = None) -> None:
    """Serve a simulator in the foreground until interrupted (Ctrl-C / SIGTERM)."""
    _install_log_filter()
    uvicorn.run(
        Simulator(config or SimulatorConfig()),
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=_KEEP_ALIVE_S,
        timeout_graceful_shutdown=2,
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m i2v.simulator.server --port P [--<knob> VALUE ...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m i2v.simulator.server",
        description="Atlas Cloud API simulator on loopback (no key, no network, no cost).",
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    defaults = SimulatorConfig().as_dict()
    for name in knob_names():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar="VALUE",
            help=f"default {defaults[name]!r}",
        )
    args = parser.parse_args(argv)
    config = SimulatorConfig()
    try:
        config.update(
            {
                name: parse_knob(name, getattr(args, name))
                for name in knob_names()
                if getattr(args, name) is not None
            }
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(f"Atlas simulator on {_url(args.host, args.port)}", flush=True)
    serve(args.port, args.host, config)


if __name__ == "__main__":
    main()
