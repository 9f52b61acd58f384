"""Is a flow run's machine still there? The rule, without Prefect.

A flow run whose machine dies (worker and run process killed, node lost) stays `Running`
on a self-hosted Prefect server forever. Runs started with
PREFECT_FLOWS_HEARTBEAT_FREQUENCY=F send a heartbeat event every F seconds from a
thread of their own (a busy event loop does not stop it), so a run whose last sign of
life is older than MISSED_BEATS x F is lost: the flows mark it Crashed and stop waiting
for it (`flows.lost_runs.mark_lost_runs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# What the pool's template (deployments/process-pool.json) gives every run, as
# PREFECT_FLOWS_HEARTBEAT_FREQUENCY: Prefect's minimum, so a lost run is noticed in ~90 s.
HEARTBEAT_S = 30
# Beats a run may miss before it counts as lost (Prefect's own zombie automation waits
# 90 s for 30 s beats): one late beat on a busy machine is not a lost machine.
MISSED_BEATS = 3


@dataclass(frozen=True)
class Sighting:
    """What the Prefect API says about one running flow run."""

    running_since: datetime | None  # when it entered its current Running state
    last_heartbeat: datetime | None  # its newest heartbeat event, if any


def last_alive(seen: Sighting) -> datetime | None:
    """The run's newest sign of life: its last heartbeat, or when it started running."""
    stamps = [t for t in (seen.running_since, seen.last_heartbeat) if t is not None]
    return max(stamps) if stamps else None


def silent_s(seen: Sighting, now: datetime) -> float:
    """Seconds since the run's last sign of life (0 when it has none to judge by)."""
    alive = last_alive(seen)
    return max(0.0, (now - alive).total_seconds()) if alive else 0.0


def is_lost(seen: Sighting, now: datetime, heartbeat_s: float | None) -> bool:
    """A running run silent for more than MISSED_BEATS heartbeats is lost.

    `heartbeat_s` is the frequency the run was started with; None (heartbeats off, or
    not known) never judges a run lost: silence then means nothing.
    """
    if not heartbeat_s:
        return False
    return silent_s(seen, now) > MISSED_BEATS * max(heartbeat_s, HEARTBEAT_S)


def lost_message(silent: float, heartbeat_s: float) -> str:
    """The Crashed state's message: what happened and what it means."""
    return (
        f"no heartbeat for {silent:.0f} s (one is sent every {heartbeat_s:.0f} s): the "
        "machine or worker running this flow run was lost"
    )
