"""`i2v simulate`: serve the Atlas-compatible simulator (`i2v.simulator`) on loopback.

Registered on the app by `cli.main`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import err


def simulate(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8765,
    host: Annotated[str, typer.Option("--host", help="Bind address (loopback).")] = "127.0.0.1",
    latency: Annotated[float, typer.Option("--latency", help="Seconds per job.")] = 2.0,
    rate_429: Annotated[float, typer.Option("--rate-429", help="Probability of a 429.")] = 0.0,
    rate_5xx: Annotated[
        float, typer.Option("--rate-5xx", help="Probability of a 5xx on GETs.")
    ] = 0.0,
    balance_jobs: Annotated[
        int | None, typer.Option("--balance-jobs", help="Answer 402 after this many jobs.")
    ] = None,
    balance_usd: Annotated[
        float | None,
        typer.Option("--balance-usd", help="The account's balance: 402 once it can't pay."),
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option("--max-concurrent", help="Provider cap on jobs processing.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="Accept only this key (default: any).")
    ] = None,
    moderation_trigger: Annotated[
        str, typer.Option("--moderation-trigger", help="Prompts with this fail with 1039.")
    ] = "nsfw",
    seed: Annotated[int | None, typer.Option("--seed", help="RNG seed.")] = None,
) -> None:
    """Serve the Atlas-compatible simulator (for demos and tests; no key, no cost)."""
    from i2v.simulator.config import SimulatorConfig
    from i2v.simulator.server import serve

    cfg = SimulatorConfig(
        latency_s=latency,
        rate_429=rate_429,
        rate_5xx=rate_5xx,
        balance_jobs=balance_jobs,
        balance_usd=balance_usd,
        max_concurrent=max_concurrent,
        api_key=api_key,
        moderation_trigger=moderation_trigger,
        seed=seed,
    )
    err.print(f"Atlas simulator on http://{host}:{port} (ATLASCLOUD_BASE_URL=http://{host}:{port})")
    serve(port=port, host=host, config=cfg)
