"""An Atlas-Cloud-compatible API simulator served over real HTTP on loopback.

    from i2v.simulator import start_simulator
    with start_simulator(latency_s=0.3) as sim:   # sim.url, sim.config, sim.stats
        ...

Names are imported lazily: `python -m i2v.simulator.server` must not find its own module
already imported by this package, and importing the config stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from i2v.simulator.app import Simulator
    from i2v.simulator.config import SimulatorConfig
    from i2v.simulator.render import parse_motion, render_video
    from i2v.simulator.server import SimulatorHandle, serve, start_simulator
    from i2v.simulator.stats import SimulatorStats

__all__ = [
    "Simulator",
    "SimulatorConfig",
    "SimulatorHandle",
    "SimulatorStats",
    "parse_motion",
    "render_video",
    "serve",
    "start_simulator",
]

_HOMES = {
    "Simulator": "app",
    "SimulatorStats": "stats",
    "SimulatorConfig": "config",
    "parse_motion": "render",
    "render_video": "render",
    "SimulatorHandle": "server",
    "serve": "server",
    "start_simulator": "server",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"i2v.simulator.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
