"""What every flow needs at run time: the API client, S3 access, the provider slot."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, cast

from prefect.logging import get_run_logger
from prefect.utilities.annotations import quote

from i2v.client import AtlasClient, Timeouts
from i2v.config import BatchOptions
from i2v.errors import ConfigError
from i2v.pipeline import RunContext
from i2v.storage import make_s3_client

SIMULATOR_KEY = "simulator-local-key"

T = TypeVar("T")


def opaque(value: T) -> T:
    """Pass `value` to a task without Prefect walking through it.

    Prefect visits every task argument to find upstream futures; for our run context
    and job objects that walk cost more CPU than the task itself (measured: ~6 s per
    200-row batch), and they hold no futures.
    """
    return cast(T, quote(value))


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
async def atlas_client(options: BatchOptions, ctx: RunContext) -> AsyncIterator[AtlasClient]:
    """The Atlas client for this run; with `api.simulator` the simulator runs in-process."""
    handle = None
    base_url: str | None
    if options.api.simulator:
        from i2v.simulator.server import start_simulator

        handle = await asyncio.to_thread(
            start_simulator, port=0, latency_s=options.api.simulator_latency_s
        )
        key, base_url = SIMULATOR_KEY, handle.url
        ctx.log.info("using the Atlas simulator at %s (no key, no cost)", base_url)
    else:
        key, base_url = resolve_api_key(options), options.api.base_url
    try:
        async with AtlasClient(
            api_key=key,
            base_url=base_url,
            on_rate_limited=ctx.limiter.on_rate_limited,
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
