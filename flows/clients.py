"""The clients a run talks through, with the worker's credentials: the Atlas API
(or the in-process simulator), its key, and S3."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prefect.logging import get_run_logger

from i2v.catalog import Catalog
from i2v.client import AtlasClient
from i2v.concurrency import AdaptiveLimiter
from i2v.config import BatchOptions
from i2v.errors import AtlasError, ConfigError
from i2v.session import Timeouts

SIMULATOR_KEY = "simulator-local-key"


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


async def model_catalog(
    options: BatchOptions, *, refresh: bool = False
) -> tuple[Catalog | None, str | None]:
    """The model catalog (`i2v.catalog`: cached, no key sent; `refresh` reads the
    provider's again), or why it cannot be read."""
    from i2v.catalog import default_cache_path, load_catalog
    from i2v.retry import RetryPolicy

    handle = None
    base_url = options.api.base_url
    if options.api.simulator:
        from i2v.simulator.server import start_simulator

        handle = await asyncio.to_thread(start_simulator, port=0, latency_s=0.0)
        base_url = handle.url
    try:
        async with AtlasClient(
            api_key="no-key-given",  # the listing and the schemas need none
            base_url=base_url,
            user_agent=options.api.user_agent,
            retry=RetryPolicy(max_attempts=2, base_delay_s=0.25),
            timeouts=Timeouts(connect_s=5.0, read_s=15.0),
            max_connections=8,
        ) as client:
            # The in-process simulator listens on a new port each time: one cache for all.
            where = "in-process-simulator" if handle is not None else client.base_url
            catalog = await load_catalog(client, default_cache_path(where), refresh=refresh)
    except (ConfigError, AtlasError) as exc:
        return None, str(exc)
    finally:
        if handle is not None:
            await asyncio.to_thread(handle.stop)
    return catalog, None
