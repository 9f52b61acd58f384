"""`i2v models`: the image-to-video models of the catalog with their price, durations
and inputs (the listing needs no key; the catalog is cached, see `i2v.catalog`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cli.common import err, out, run_async, usage_error
from cli.logs import quiet_prefect
from cli.options import ConfigFile


async def _offer(deployment: str, names: list[str]) -> int:
    """The deployment's form offers `names` (`i2v.form_models`); fields changed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from i2v.errors import ConfigError
    from i2v.form_models import offer_models

    if not PREFECT_API_URL.value():
        raise ConfigError(
            "--form needs the server the deployments are on: set PREFECT_API_URL "
            "(or `prefect config set PREFECT_API_URL=...`)"
        )
    async with get_client() as client:
        try:
            found = await client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ConfigError(f"deployment {deployment!r} not found on the server") from None
        schema, changed = offer_models(found.parameter_openapi_schema or {}, names)
        if changed:
            await client.update_deployment(
                found.id, DeploymentUpdate(parameter_openapi_schema=schema)
            )
    return changed


def models(
    config: ConfigFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Read the catalog again, not the cached copy.")
    ] = False,
    form: Annotated[
        list[str] | None,
        typer.Option(
            "--form",
            metavar="FLOW/DEPLOYMENT",
            help="Offer these models in the deployment's form (PREFECT_API_URL's server; "
            "repeatable; run after each `prefect deploy`).",
        ),
    ] = None,
) -> None:
    """List the catalog's image-to-video models: price, durations and inputs."""
    quiet_prefect(verbose=False)  # before Prefect is imported: no telemetry banner
    from flows.clients import model_catalog
    from i2v.config import load_options
    from i2v.errors import ConfigError

    try:
        options = load_options(config)
        catalog, why = run_async(model_catalog(options, refresh=refresh))
        if catalog is None:
            raise ConfigError(f"cannot read the model catalog: {why}")
    except ConfigError as exc:
        raise typer.Exit(usage_error(exc)) from None
    if form:
        names = [m.name for m in catalog.i2v()]
        try:
            for deployment in form:
                changed = run_async(_offer(deployment, names))
                err.print(
                    f"{deployment}: {changed} form fields offer {len(names)} models",
                    highlight=False,
                )
        except ConfigError as exc:
            raise typer.Exit(usage_error(exc)) from None
    rows: list[dict[str, Any]] = [
        {
            "model": m.name,
            "price_usd": m.price_usd,
            "durations": m.schema.durations_text() if m.schema else "-",
            "first_frame": m.schema.first_frame if m.schema else None,
            "end_frame": m.schema.end_frame if m.schema else None,
            "required": sorted(m.schema.required) if m.schema else [],
            "inputs": list(m.schema.properties) if m.schema else [],
        }
        for m in sorted(catalog.i2v(), key=lambda m: m.name)
    ]
    if catalog.from_cache:
        err.print(f"catalog: the cached copy, {catalog.age_text()} old", highlight=False)
    if as_json:
        typer.echo(json.dumps({"models": rows, "age_s": catalog.age_text()}, indent=2))
        return
    for r in rows:
        price = f"${r['price_usd']:.2f}" if r["price_usd"] is not None else "no price"
        out.print(
            f"{r['model']}  {price}/run  durations {r['durations']}  "
            f"inputs {', '.join(r['inputs'])}",
            highlight=False,
            soft_wrap=True,
        )
