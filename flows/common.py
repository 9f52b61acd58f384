"""What every flow shares: opening a run (S3, DEST, rows, plans), the API client, the
provider slot, stop signals, and the one publisher of a run's artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast
from uuid import UUID, uuid4

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from i2v.client import AtlasClient
from i2v.concurrency import AdaptiveLimiter
from i2v.config import BatchOptions
from i2v.dest import open_storage
from i2v.errors import ConfigError
from i2v.lifecycle import dry_run_counts
from i2v.liveness import HEARTBEAT_S, MISSED_BEATS, Sighting, is_lost, lost_message, silent_s
from i2v.manifest import Manifest
from i2v.results import RunSummary, qc_flags, qc_section
from i2v.run import Job, RowPlan, RowStatus, RunContext, RunControl
from i2v.session import Timeouts
from i2v.storage import Storage
from tasks.rows import check_pictures, read_rows

SIMULATOR_KEY = "simulator-local-key"
log = logging.getLogger("i2v.flows")
TABLE_ARTIFACT_COLUMNS = ["id", "status", "error", "error_code", "prediction_id", "video_uri"]
# Rows in the table artifact: Prefect keeps it in its database and sends it whole to each
# browser that opens the run; the results table in DEST has every row.
TABLE_ARTIFACT_ROWS = 1000

T = TypeVar("T")

# The caller's listeners and stop switch for the flows it runs in this context (the
# CLI sets it around one command); a worker's run gets a fresh one.
_CONTROL: ContextVar[RunControl | None] = ContextVar("i2v_run_control", default=None)


@contextlib.contextmanager
def controlled(control: RunControl) -> Iterator[RunControl]:
    """Run the flows called inside this block under `control`."""
    token = _CONTROL.set(control)
    try:
        yield control
    finally:
        _CONTROL.reset(token)


def current_control() -> RunControl:
    return _CONTROL.get() or RunControl()


@contextlib.contextmanager
def untagged_task_runs() -> Iterator[None]:
    """Task runs started inside carry no tags, whatever the flow run's tags are.

    A tagged task run asks the API for the tag's concurrency slots as it starts, and
    Prefect remembers "no such limit" for only 5 s: a wave of 40 submissions waited up
    to 2 s behind that call (measured, N = 200). The flow run keeps its tags (`i2v`
    from the CLI, a deployment's own), where the UI's filters work; a deployment's
    task runs carried none already.
    """
    from prefect.context import TagsContext

    with TagsContext(current_tags=set()):
        yield


@contextlib.contextmanager
def stop_on_signals(control: RunControl) -> Iterator[None]:
    """SIGTERM (a worker cancelling the run, Docker, Kubernetes) and the first SIGINT
    wind the run down with its bookkeeping done, instead of killing it mid-flight.

    Only where this thread owns the signals (the main thread of the process); a second
    SIGINT falls back to the default: stop now.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def handler(signum: int) -> None:
        name = signal.Signals(signum).name
        if control.signal is not None and signum == signal.SIGINT:
            loop.remove_signal_handler(signum)
            signal.raise_signal(signum)
            return
        control.request_stop(name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, handler, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def opaque(value: T) -> T:
    """Pass `value` to a task without Prefect walking through it.

    Prefect visits every task argument to find upstream futures; for our run context
    and job objects that walk cost more CPU than the task itself (measured: ~6 s per
    200-row batch), and they hold no futures.
    """
    return cast(T, quote(value))


def run_task_after(
    task: Any,
    after: Iterable[UUID | None],
    *,
    edge: str,
    task_run_id: UUID | None = None,
    **parameters: Any,
) -> Any:
    """`task(**parameters)`, its task run drawn in the flow run's graph after the task
    runs `after`, as an input of its parameter `edge`.

    Prefect draws an edge only where a task's result, state or future is passed to
    another task, and `wait_for` would wait for them. Our steps hand rows on one at a
    time while the upstream task run is still open (`i2v.batching`), and their
    arguments are `opaque` (not walked), so the edge is declared instead: the same
    dependency record Prefect's own task runners pass to the engine. Returns what the
    task returns (a coroutine for an async task).
    """
    from prefect.client.schemas.objects import TaskRunResult
    from prefect.task_engine import run_task

    upstream = {TaskRunResult(id=i) for i in after if i is not None}
    return run_task(
        task=task,
        task_run_id=task_run_id,
        parameters=parameters,
        dependencies={edge: cast(Any, upstream)} if upstream else None,
        return_type="result",
    )


def new_run_id() -> str:
    """Sortable and traceable: UTC time plus the Prefect flow run id's prefix."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run = flow_run.get_id()
    return f"{stamp}-{str(run)[:8]}" if run else stamp


@dataclass
class OpenedRun:
    """A run's inputs, read and checked: nothing has been paid yet."""

    run_id: str
    s3: Any
    dest: Storage
    manifest: Manifest
    plans: list[RowPlan]
    # The check-pictures task run: where every row's steps start in the run's graph.
    checked_by: UUID | None = None


async def open_run(
    source: str,
    dest: str,
    options: BatchOptions,
    *,
    lines: Sequence[int] | None = None,
) -> OpenedRun:
    """S3 client, DEST, the manifest (only `lines`, for a shard) and its checked plans."""
    logger = get_run_logger()
    s3 = s3_client_for(options) if "s3://" in source + dest else None
    storage = open_storage(dest, s3_client=s3)
    read_id, check_id = uuid4(), uuid4()
    manifest = await asyncio.to_thread(
        run_task_after,
        read_rows,
        (),
        edge="source",
        task_run_id=read_id,
        source=source,
        options=options,
        s3_client=opaque(s3),
    )
    if lines is not None:
        wanted = set(lines)
        manifest.rows = [r for r in manifest.rows if r.line in wanted]
    checked = await run_task_after(
        check_pictures,
        [read_id],
        edge="manifest",
        task_run_id=check_id,
        manifest=opaque(manifest),
        options=options,
        s3_client=opaque(s3),
    )
    plans = checked.plans
    inputs = len({p.identity for p in plans if p.identity and not p.error})
    for plan in plans:  # settled already: each gets its line, as every other row does
        if plan.error:
            logger.info("%s: rejected (%s)", plan.row_id, plan.error)
    logger.info(
        "%d rows, %d distinct inputs, %d rejected before any call",
        len(plans),
        inputs,
        sum(1 for p in plans if p.error),
    )
    return OpenedRun(new_run_id(), s3, storage, manifest, plans, checked_by=check_id)


def resolve_api_key(options: BatchOptions) -> str:
    """The key from the named Prefect Secret block, else ATLASCLOUD_API_KEY.

    The key is never a flow parameter, so it never reaches the run's recorded inputs.
    """
    block = options.api.api_key_secret_block
    if block:
        from prefect.blocks.system import Secret

        try:
            secret: Any = Secret.load(block, _sync=True)  # type: ignore[call-arg]
        except ValueError as exc:
            raise ConfigError(
                f"Prefect Secret block {block!r} not found ({exc}); create it or unset "
                "api.api_key_secret_block to use ATLASCLOUD_API_KEY"
            ) from None
        value = secret.get()
        if not value:
            raise ConfigError(f"Prefect Secret block {block!r} is empty")
        return str(value)
    key = os.environ.get("ATLASCLOUD_API_KEY", "").strip()
    if not key:
        raise ConfigError(
            "ATLASCLOUD_API_KEY is not set: export it, or name a Prefect Secret block in "
            "api.api_key_secret_block (or use configs/local.yaml for the simulator)"
        )
    return key


def s3_client_for(options: BatchOptions) -> Any:
    """A boto3 S3 client: from a prefect-aws AwsCredentials block when named, else the
    standard chain (env, profile, instance role), honouring AWS_ENDPOINT_URL."""
    session = None
    if options.aws_credentials_block:
        from prefect_aws import AwsCredentials

        creds: Any = AwsCredentials.load(options.aws_credentials_block, _sync=True)  # type: ignore[call-arg]
        session = creds.get_boto3_session()
    from i2v.s3 import make_s3_client  # boto3 only for S3 locations

    return make_s3_client(session)


@asynccontextmanager
async def atlas_client(
    options: BatchOptions, limiter: AdaptiveLimiter
) -> AsyncIterator[AtlasClient]:
    """The Atlas client for this run; with `api.simulator` the simulator runs in-process."""
    handle = None
    base_url: str | None
    if options.api.simulator:
        from i2v.simulator.server import start_simulator

        handle = await asyncio.to_thread(
            start_simulator, port=0, latency_s=options.api.simulator_latency_s
        )
        key, base_url = SIMULATOR_KEY, handle.url
        get_run_logger().info("using the Atlas simulator at %s (no key, no cost)", base_url)
    else:
        key, base_url = resolve_api_key(options), options.api.base_url
    try:
        async with AtlasClient(
            api_key=key,
            base_url=base_url,
            user_agent=options.api.user_agent,
            on_rate_limited=limiter.on_rate_limited,
            timeouts=Timeouts(generate_s=options.api.generate_timeout_s),
            # httpcore scans the whole pool on every request: a pool much larger than
            # the requests actually in flight costs CPU and buys nothing.
            max_connections=min(128, max(32, options.concurrency * 2)),
        ) as client:
            yield client
    finally:
        if handle is not None:
            await asyncio.to_thread(handle.stop)


async def provider_cap(name: str | None, want: int) -> LeasedCap | None:
    """The run's share of the provider cap, a Prefect global concurrency limit named
    `name`, or None when there is none.

    The limit lives on the Prefect server, so every run and worker sharing the server
    shares the provider cap. When it does not exist we say so once and rely on the
    per-run `concurrency` alone.
    """
    if not name:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    try:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        logger.warning(
            "global concurrency limit %r does not exist: relying on this run's concurrency "
            "alone (create it with `prefect gcl create %s --limit N` to cap all runs)",
            name,
            name,
        )
        return None
    if not limit.active:
        logger.warning("global concurrency limit %r is inactive: not enforcing it", name)
        return None
    logger.info("provider cap: global concurrency limit %r (%d slots)", name, limit.limit)
    return LeasedCap(name, want=min(want, limit.limit))


# A Prefect server's answers while its database is busy (503 is SQLite's "database is
# locked"): the increment did not happen.
BUSY_ANSWERS = frozenset({429, 502, 503, 504})
INCREMENT_PATH = "/v2/concurrency_limits/increment-with-lease"


async def _increment_once(client: Any, name: str, slots: int, lease_s: float) -> Any:
    """One increment-with-lease request, not retried: (status code, response).

    The client's own methods wait 2 s before every retry, and a long-lived server on
    SQLite answers 503 at once while a run's first writes hold its database: a wave of
    rows waited 2.4 s for its slots (measured, N = 200). So the request goes through
    the client's httpx client without its retry wrapper; a server that wants a CSRF
    token (403), or a client without that attribute, gets the ordinary method.
    """
    import httpx

    body = {"names": [name], "slots": slots, "mode": "concurrency", "lease_duration": lease_s}
    http = getattr(client, "_client", None)
    if isinstance(http, httpx.AsyncClient):
        response = await httpx.AsyncClient.send(
            http, http.build_request("POST", INCREMENT_PATH, json=body)
        )
        if response.status_code != 403:
            return response.status_code, response
    try:
        response = await client.increment_concurrency_slots_with_lease(
            names=[name], slots=slots, mode="concurrency", lease_duration=lease_s
        )
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code, exc.response
    return response.status_code, response


class LeasedCap:
    """The run's slots of a global concurrency limit, held as leases for its live window.

    One slot per row per server round trip (and a retry wait whenever the limit is
    full) made a capped run ten times slower. Here a run leases blocks of slots as its
    rows need them (one request for as many as are waiting, down to one while the
    limit is nearly full), hands them from row to row locally, renews the leases while
    it holds them, and gives a block back once none of its slots was needed for
    `LINGER_S` (so the tail frees the cap for other runs). The server counts every
    slot: all runs together never exceed the limit.
    """

    LEASE_S = 60.0  # the server's minimum lease
    RENEW_EVERY_S = 20.0
    LINGER_S = 0.5
    BUSY_RETRY_S = 0.1

    def __init__(self, name: str, *, want: int) -> None:
        self.name = name
        self.want = max(1, want)
        self._idle: list[tuple[Any, float]] = []  # one (lease id, idle since) per free slot
        self._blocks: dict[Any, int] = {}  # lease id -> slots it holds
        self._waiters = 0
        self._wake = asyncio.Condition()
        self._grower: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.acquired = 0  # leases taken from the server, for tests and the log
        self.peak_held = 0

    @property
    def held(self) -> int:
        return sum(self._blocks.values())

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        lease = await self._take()
        try:
            yield
        finally:
            async with self._wake:
                self._idle.append((lease, asyncio.get_running_loop().time()))
                self._wake.notify()

    async def _take(self) -> Any:
        async with self._wake:
            self._waiters += 1
            try:
                while not self._idle:
                    if self.held < self.want and self._grower is None:
                        self._grower = asyncio.ensure_future(self._grow())
                    await self._wake.wait()
                return self._idle.pop()[0]
            finally:
                self._waiters -= 1

    async def _grow(self) -> None:
        """Lease slots for the rows waiting now; wait as the server says while full."""
        from prefect.client.orchestration import get_client

        try:
            async with get_client() as client:
                while self._waiters and self.held < self.want:
                    await self._grow_once(client)
        finally:
            # Waiters that came while this grower was finishing saw it still running:
            # wake them so they look again (and start the next grower if need be).
            async with self._wake:
                self._grower = None
                self._wake.notify_all()

    async def _grow_once(self, client: Any) -> None:
        # All or nothing on the server: halve what is asked until it fits, so runs
        # sharing a nearly full limit still grow by what is free (one slot per retry
        # wait starved a fan-out's shards).
        slots = min(self._waiters, self.want - self.held)
        lease, full = await self._lease(client, slots, wait_if_full=slots == 1)
        while lease is None and full and slots > 1:
            slots //= 2
            lease, full = await self._lease(client, slots, wait_if_full=slots == 1)
        if lease is None:
            return
        async with self._wake:
            self._blocks[lease] = slots
            self.acquired += 1
            self.peak_held = max(self.peak_held, self.held)
            now = asyncio.get_running_loop().time()
            self._idle += [(lease, now)] * slots
            self._wake.notify_all()
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.ensure_future(self._keep())

    async def _lease(self, client: Any, slots: int, *, wait_if_full: bool) -> tuple[Any, bool]:
        """(lease id, False); or (None, True): the limit has not `slots` free (waited
        out first if asked); or (None, False): no answer, after a pause."""
        try:
            code, answer = await _increment_once(client, self.name, slots, self.LEASE_S)
        except Exception as exc:  # the server is away: rows wait for it, never past the cap
            log.warning("cannot lease a slot of %r (%s); retrying", self.name, exc)
            await asyncio.sleep(1.0)
            return None, False
        if code == 423:
            if wait_if_full:  # not even one slot: the server says when to look again
                wait = float(answer.headers.get("Retry-After", 1.0))
                await asyncio.sleep(min(max(wait, 0.05), 1.0))
            return None, True
        if code in BUSY_ANSWERS:  # nothing was leased: ask again in a moment
            await asyncio.sleep(self.BUSY_RETRY_S)
            return None, False
        if code >= 400:  # e.g. the limit was deleted: rows wait, never past the cap
            log.warning("cannot lease a slot of %r (HTTP %s); retrying", self.name, code)
            await asyncio.sleep(1.0)
            return None, False
        return answer.json()["lease_id"], False

    async def aclose(self) -> None:
        """Give every lease back now (the run is over): other runs need not wait for
        them to expire."""
        from prefect.client.orchestration import get_client

        for task in (self._grower, self._keeper):
            if task is not None:
                task.cancel()
        get_run_logger().info(
            "provider cap %r: %d slot leases (at most %d slots at once) served this run's rows",
            self.name,
            self.acquired,
            self.peak_held,
        )
        leases, self._blocks, self._idle = list(self._blocks), {}, []
        async with get_client() as client:
            for lease in leases:
                with contextlib.suppress(Exception):
                    await client.release_concurrency_slots_with_lease(lease_id=lease)

    async def _keep(self) -> None:
        """Renew held leases; give back the blocks no row needed for a while."""
        from prefect.client.orchestration import get_client

        renewed_at = asyncio.get_running_loop().time()
        async with get_client() as client:
            while self._blocks:
                await asyncio.sleep(self.LINGER_S)
                now = asyncio.get_running_loop().time()
                async with self._wake:
                    spare = [] if self._waiters else self._spare_blocks(now)
                    self._idle = [(lease, t) for lease, t in self._idle if lease not in spare]
                    for lease in spare:
                        del self._blocks[lease]
                for lease in spare:
                    with contextlib.suppress(Exception):
                        await client.release_concurrency_slots_with_lease(lease_id=lease)
                if now - renewed_at >= self.RENEW_EVERY_S:
                    renewed_at = now
                    for lease in list(self._blocks):
                        with contextlib.suppress(Exception):
                            await client.renew_concurrency_lease(
                                lease_id=lease, lease_duration=self.LEASE_S
                            )

    def _spare_blocks(self, now: float) -> list[Any]:
        """Leases whose every slot has been idle for `LINGER_S`."""
        idle: dict[Any, list[float]] = {}
        for lease, since in self._idle:
            idle.setdefault(lease, []).append(since)
        return [
            lease
            for lease, times in idle.items()
            if len(times) == self._blocks.get(lease) and now - max(times) >= self.LINGER_S
        ]


# ------------------------------------------------------------------ lost machines

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


async def publish_artifacts(
    frame: Any,
    summary: RunSummary,
    *,
    title: str,
    facts: Sequence[str] = (),
    sections: Sequence[str] = (),
    sheet_md: str = "",
    summary_key: str = "i2v-summary",
    storage: Storage | None = None,
    link_hours: float = 24.0,
) -> None:
    """The run's table artifact (key `i2v-results`), its markdown summary and, given
    DEST's `storage`, a link artifact to the run's table (`tasks.artifacts`).

    The table's `video_uri` cells are links a browser opens for an S3 DEST (presigned,
    valid `link_hours`); a folder DEST's are paths (no URL reaches them from the UI).
    """
    from tasks.artifacts import publish_results_link, summary_tail, video_links

    cols = TABLE_ARTIFACT_COLUMNS
    shown = artifact_rows(frame)
    table = shown[cols].astype(object).where(shown[cols].notna(), "")
    if storage is not None:
        table["video_uri"] = await asyncio.to_thread(
            video_links, storage, list(table["video_uri"]), link_hours
        )
        await publish_results_link(storage, summary.run_id, link_hours=link_hours)
    await acreate_table_artifact(
        key="i2v-results",
        table=[{str(k): v for k, v in row.items()} for row in table.to_dict(orient="records")],
        description=f"Results of {title} into {summary.dest}"
        + (
            ""
            if len(shown) == len(frame)
            else f" ({len(shown)} of {len(frame)} rows: every row that did not land first; "
            f"all of them in {summary.results_uri or 'DEST/results.csv'})"
        ),
    )
    spend = f"${summary.spent_usd:.2f}" + (" (simulated)" if summary.simulated else "")
    lines = [
        f"# i2v {title}",
        "",
        f"- source: `{summary.source}`",
        f"- dest: `{summary.dest}`",
        f"- rows: {summary.rows} ({summary.inputs} distinct inputs)",
        *facts,
        f"- spent this run: {spend} over {summary.submissions} submissions",
        f"- time: {summary.elapsed_s:.1f} s, polls: {summary.polls}",
        "",
        "| status | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary.counts.items() if v],
        *sections,
    ]
    if summary.stop_message:
        lines += ["", f"**Stopped:** {summary.stop_message}"]
    lines += qc_section(summary.qc_flagged or qc_flags(frame))
    lines += summary_tail(summary.top_errors, summary.results_uri, sheet_md)
    await acreate_markdown_artifact(
        key=summary_key, markdown="\n".join(lines), description=f"i2v {title}"
    )


def artifact_rows(frame: Any, limit: int = TABLE_ARTIFACT_ROWS) -> Any:
    """At most `limit` rows of the table, in table order: the rows that did not land
    (those need a person) before the landed ones."""
    if len(frame) <= limit:
        return frame
    # Plain numpy booleans: the table's string columns compare to pyarrow booleans,
    # which have no cumsum.
    landed = (frame["status"] == str(RowStatus.LANDED)).to_numpy(dtype=bool, na_value=False)
    room = max(0, limit - int((~landed).sum()))
    return frame[~landed | (landed.cumsum() <= room)].head(limit)


def dry_run_summary(
    ctx: RunContext, source: str, opened: OpenedRun, jobs: Sequence[Job]
) -> RunSummary:
    """Counts and the cost estimate without calling the API or writing anything."""
    counts, estimate = dry_run_counts(ctx, opened.plans, jobs)
    with contextlib.suppress(Exception):
        ctx.log.info("dry run: %s; estimated cost $%.2f", counts, estimate)
    return RunSummary(
        run_id=ctx.run_id,
        source=source,
        dest=ctx.dest.uri,
        rows=len(opened.plans),
        inputs=len(jobs),
        counts=counts,
        estimated_usd=estimate,
        dry_run=True,
        simulated=ctx.simulated,
    )
