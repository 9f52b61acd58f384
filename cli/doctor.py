"""`i2v doctor [--config F] [--dest D]`: is everything ready before money is spent?

One line per check with ✓ or ✗ and, for ✗, what to do (`i2v.doctor` holds the checks);
only calls that cost nothing. The Prefect checks are here, since nothing in `i2v`
imports Prefect: the API is reachable, and the global concurrency limit the config
names exists. Registered on the app by `cli.main`. Exit codes: 0 all good, 2 otherwise.
The key is never printed.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import quick_client, run_async, usage_error
from cli.options import ConfigFile

if TYPE_CHECKING:
    from i2v.doctor import Check

DOCTOR_EXAMPLES = """Examples:

\b
  i2v doctor --config configs/atlascloud.yaml --dest s3://bucket/videos/run1
  i2v doctor --config configs/local.yaml --dest out/demo

Exit codes: 0 every check passed, 2 something needs fixing (each ✗ says what to do)."""

PREFECT_TIMEOUT_S = 20.0


def doctor(
    config: ConfigFile = None,
    dest: Annotated[
        str | None,
        typer.Option(
            "--dest", metavar="DEST", help="Also check this folder or s3://bucket/prefix."
        ),
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option("--manifest", metavar="SOURCE", help="Also check each model its rows name."),
    ] = None,
) -> None:
    """Check the API host, the key, the model and its published input schema, the
    price, DEST (and S3) and the Prefect API, using only calls that cost nothing."""
    from i2v.config import load_options
    from i2v.doctor import Check, exit_code
    from i2v.errors import ConfigError, ManifestError
    from i2v.manifest import read_manifest_for

    try:
        options = load_options(config)
        rows = read_manifest_for(manifest, options) if manifest else None
    except (ConfigError, ManifestError) as exc:
        raise typer.Exit(usage_error(exc)) from None
    where = f"config {config}" if config else "default options (no --config)"
    first = Check(True, f"{where}: model {options.model}, duration {options.duration} s")
    checks = [first, *_picture_hosts(), *run_async(_checks(options, dest, rows))]
    for check in checks:
        typer.echo(check.render())
    raise typer.Exit(exit_code(checks))


def _picture_hosts() -> list[Check]:
    """The internal hosts this worker lets picture URLs reach, when it names any."""
    from i2v.doctor import Check
    from i2v.errors import ConfigError
    from i2v.private_hosts import PRIVATE_HOSTS_ENV, worker_allowance

    try:
        allowance = worker_allowance()
    except ConfigError as exc:
        return [Check(False, str(exc), f"fix {PRIVATE_HOSTS_ENV} in the worker's environment")]
    if not allowance:
        return []
    return [
        Check(
            True,
            f"picture URLs may reach these internal hosts ({PRIVATE_HOSTS_ENV}): "
            f"{allowance.text}; their pictures go to the provider through uploadMedia",
        )
    ]


async def _checks(options: Any, dest: str | None, manifest: Any = None) -> list[Check]:
    from i2v.doctor_api import api_checks
    from i2v.doctor_models import model_checks

    handle = None
    if options.api.simulator:
        from i2v.simulator.server import start_simulator

        handle = await asyncio.to_thread(start_simulator, port=0, latency_s=0.1)
        key: str | None = "simulator-local-key"
        base_url: str | None = handle.url
        source = "in-process simulator: no key needed"
    else:
        key, source = _key(options)
        base_url = options.api.base_url
    try:
        # The key is never sent when none was found: the key check is skipped.
        async with quick_client(options, base_url, key or "no-key-given", 4) as client:
            checks = await api_checks(
                client, client if key else None, key_source=source, options=options
            )
            if checks[0].ok:
                checks += await model_checks(client, options, manifest)
    finally:
        if handle is not None:
            await asyncio.to_thread(handle.stop)
    if dest:
        checks += await asyncio.to_thread(_dest_checks, options, dest)
    checks += await _prefect_checks(options.global_concurrency_limit)
    return checks


def _key(options: Any) -> tuple[str | None, str]:
    """(the key or None, where it came from); the key itself is never shown."""
    block = options.api.api_key_secret_block
    if block:
        from flows.clients import resolve_api_key  # Prefect: only when a block is named
        from i2v.errors import ConfigError

        try:
            return resolve_api_key(options), f"from the Prefect Secret block {block!r}"
        except ConfigError as exc:
            return None, str(exc)
        except Exception as exc:
            return None, f"the Prefect Secret block {block!r} cannot be read ({exc})"
    if os.environ.get("ATLASCLOUD_API_KEY", "").strip():
        return os.environ["ATLASCLOUD_API_KEY"].strip(), "from ATLASCLOUD_API_KEY"
    return None, "ATLASCLOUD_API_KEY is not set"


def _dest_checks(options: Any, dest: str) -> list[Check]:
    from i2v.dest import open_storage
    from i2v.doctor import Check, check_dest, check_s3
    from i2v.errors import ConfigError

    checks: list[Check] = []
    s3 = None
    if dest.strip().lower().startswith("s3://"):
        import boto3

        from i2v.s3 import make_s3_client, split_s3_uri

        session = boto3.session.Session()
        if options.aws_credentials_block:
            from flows.clients import s3_client_for  # Prefect: only when a block is named

            s3 = s3_client_for(options)
        else:
            s3 = make_s3_client(session)
        try:
            bucket, _ = split_s3_uri(dest.strip())
        except ConfigError as exc:
            return [Check(False, f"DEST {dest}: {exc}", "give s3://bucket/prefix")]
        checks.append(check_s3(bucket, s3, session))
    try:
        storage = open_storage(dest, s3_client=s3)
    except ConfigError as exc:
        return [*checks, Check(False, f"DEST {dest}: {exc}", "give a folder or s3://bucket/prefix")]
    return [*checks, check_dest(storage)]


async def _prefect_checks(limit_name: str | None) -> list[Check]:
    """The Prefect API answers, and the global concurrency limit exists (the only
    checks that import Prefect)."""
    from prefect.settings import PREFECT_API_URL

    from i2v.doctor import Check

    url = PREFECT_API_URL.value()
    if not url:
        return [
            Check(
                True,
                "Prefect: no API set (PREFECT_API_URL): `i2v run` starts a temporary local "
                "one, so no global concurrency limit caps it; deployments need a server",
            )
        ]
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    checks: list[Check] = []
    try:
        async with get_client() as client:
            problem = await asyncio.wait_for(client.api_healthcheck(), PREFECT_TIMEOUT_S)
            if problem is not None:
                raise problem
            checks.append(Check(True, f"Prefect API {url} answers"))
            if not limit_name:
                return checks
            try:
                limit = await asyncio.wait_for(
                    client.read_global_concurrency_limit_by_name(limit_name), PREFECT_TIMEOUT_S
                )
            except ObjectNotFound:
                checks.append(
                    Check(
                        False,
                        f"Prefect global concurrency limit {limit_name!r} does not exist: "
                        "each run keeps only to its own --concurrency",
                        f"prefect gcl create {limit_name} --limit 20 (the provider cap across "
                        "all runs), or set global_concurrency_limit: null",
                    )
                )
                return checks
            if not limit.active:
                checks.append(
                    Check(
                        False,
                        f"Prefect global concurrency limit {limit_name!r} is inactive",
                        f"prefect gcl update {limit_name} --enable",
                    )
                )
            else:
                checks.append(
                    Check(
                        True,
                        f"Prefect global concurrency limit {limit_name!r}: {limit.limit} slots "
                        f"({limit.active_slots} in use)",
                    )
                )
    except Exception as exc:
        checks.append(
            Check(
                False,
                f"Prefect API {url} does not answer ({type(exc).__name__}: {exc})",
                "start it (prefect server start) or fix PREFECT_API_URL",
            )
        )
    return checks
