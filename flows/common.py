"""What every flow shares: opening a run (S3, DEST, rows, plans), the API client, the
provider slot, stop signals, and the one publisher of a run's artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from i2v.client import AtlasClient
from i2v.concurrency import AdaptiveLimiter
from i2v.config import BatchOptions
from i2v.errors import ConfigError
from i2v.lifecycle import dry_run_counts
from i2v.manifest import Manifest
from i2v.results import RunSummary
from i2v.run import Job, RowPlan, RunContext, RunControl
from i2v.s3 import make_s3_client
from i2v.session import Timeouts
from i2v.storage import Storage, open_storage
from tasks.rows import check_pictures, read_rows

SIMULATOR_KEY = "simulator-local-key"
TABLE_ARTIFACT_COLUMNS = ["id", "status", "error", "error_code", "prediction_id", "video_uri"]

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
    manifest = await asyncio.to_thread(read_rows, source, options, s3)
    if lines is not None:
        wanted = set(lines)
        manifest.rows = [r for r in manifest.rows if r.line in wanted]
    plans = await check_pictures(opaque(manifest), options, opaque(s3))
    inputs = len({p.identity for p in plans if p.identity and not p.error})
    logger.info(
        "%d rows, %d distinct inputs, %d rejected before any call",
        len(plans),
        inputs,
        sum(1 for p in plans if p.error),
    )
    return OpenedRun(new_run_id(), s3, storage, manifest, plans)


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


async def provider_slot_factory(
    name: str | None,
) -> Any:
    """A factory of Prefect global-concurrency slots named `name`, or None.

    The limit lives on the Prefect server, so every run and worker sharing the server
    shares the provider cap. When it does not exist we say so once and rely on the
    per-run `concurrency` alone.
    """
    if not name:
        return None
    from prefect.client.orchestration import get_client
    from prefect.concurrency.asyncio import concurrency
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

    def slot() -> AbstractAsyncContextManager[None]:
        # Leases are renewed while held, so a 15-minute prediction keeps its slot.
        return concurrency(name, occupy=1, strict=True)

    return slot


async def publish_artifacts(
    frame: Any,
    summary: RunSummary,
    *,
    title: str,
    facts: Sequence[str] = (),
    sections: Sequence[str] = (),
    sheet_md: str = "",
    summary_key: str = "i2v-summary",
) -> None:
    """The run's table artifact (key `i2v-results`) and its markdown summary."""
    from tasks.artifacts import summary_tail

    cols = TABLE_ARTIFACT_COLUMNS
    table = frame[cols].astype(object).where(frame[cols].notna(), "")
    await acreate_table_artifact(
        key="i2v-results",
        table=[{str(k): v for k, v in row.items()} for row in table.to_dict(orient="records")],
        description=f"Results of {title} into {summary.dest}",
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
    lines += summary_tail(summary.top_errors, summary.results_uri, sheet_md)
    await acreate_markdown_artifact(
        key=summary_key, markdown="\n".join(lines), description=f"i2v {title}"
    )


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
