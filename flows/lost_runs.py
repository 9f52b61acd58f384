"""Lost machines: the flow runs that are Running but have sent no heartbeat for too
long (`i2v.liveness` decides when) are marked Crashed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from i2v.liveness import HEARTBEAT_S, MISSED_BEATS, Sighting, is_lost, lost_message, silent_s

log = logging.getLogger("i2v.flows")

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
EVENTS_PAGE = 50  # the most events the API returns in one page


def own_heartbeat_s() -> int | None:
    """How often this flow run sends heartbeats (None: it sends none)."""
    from prefect.settings import get_current_settings

    value = get_current_settings().flows.heartbeat_frequency
    return None if value is None else max(value, HEARTBEAT_S)


async def last_heartbeats(
    client: Any, ids: Sequence[UUID], since: datetime
) -> dict[UUID, datetime] | None:
    """The newest heartbeat of each flow run in `ids` since `since`, from the events API
    (one request per 50 runs); None when the events cannot be read."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    # Beats stamped by a machine whose clock runs ahead still count.
    until = datetime.now(UTC) + timedelta(minutes=5)
    found: dict[UUID, datetime] = {}
    for start in range(0, len(ids), EVENTS_PAGE):
        wanted = [f"prefect.flow-run.{i}" for i in ids[start : start + EVENTS_PAGE]]
        query = EventFilter(
            occurred=EventOccurredFilter(since=since, until=until),
            event=EventNameFilter(name=[HEARTBEAT_EVENT]),
            resource=EventResourceFilter(id=wanted, distinct=True),  # the newest of each
        )
        try:
            page = await client.read_events(filter=query, limit=len(wanted))
        except Exception as exc:  # a busy or older server: judge nothing this time
            log.debug("heartbeats unreadable: %s: %s", type(exc).__name__, exc)
            return None
        for event in page.events:
            run_id = UUID(event.resource.id.rsplit(".", 1)[1])
            found[run_id] = max(event.occurred, found.get(run_id, event.occurred))
    return found


async def mark_lost_runs(
    client: Any,
    runs: Sequence[Any],
    heartbeat_s: float | None,
    *,
    me: UUID | None = None,
) -> dict[UUID, str] | None:
    """Mark Crashed each of `runs` (flow runs as just read) that is Running but has sent
    no heartbeat for MISSED_BEATS x `heartbeat_s` (`i2v.liveness`); their ids with the
    message they were marked with, or None when silence could not be judged.

    Nothing is judged without a frequency, or when not one heartbeat can be read, of
    these runs or of this run (`me`): a server that keeps no events would make every
    run look silent. The Crashed state is proposed, not forced, so a run that ended
    meanwhile keeps its own state.
    """
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Crashed

    running = {
        run.id: run.state.timestamp
        for run in runs
        if run.state is not None and run.state.type == StateType.RUNNING
    }
    if not running:
        return {}
    if not heartbeat_s:
        return None
    since = min(running.values()) - timedelta(seconds=MISSED_BEATS * heartbeat_s)
    beats = await last_heartbeats(client, [*running, *([me] if me else [])], since)
    if not beats:
        return None
    now = datetime.now(UTC)
    lost: dict[UUID, str] = {}
    for run_id, since_running in running.items():
        seen = Sighting(running_since=since_running, last_heartbeat=beats.get(run_id))
        if not is_lost(seen, now, heartbeat_s):
            continue
        message = lost_message(silent_s(seen, now), heartbeat_s)
        result = await client.set_flow_run_state(run_id, Crashed(message=message))
        if result.status == SetStateStatus.ACCEPT:
            lost[run_id] = message
    return lost
