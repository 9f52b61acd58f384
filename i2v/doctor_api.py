"""`i2v doctor`'s checks of the Atlas Cloud API, each a `Check` (`i2v.doctor`), using
only calls that cost nothing: the host answers, the key is accepted, the model is
listed, its published input schema takes what we send, and the catalog's price.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from i2v.account import check_balance
from i2v.client import AtlasClient
from i2v.config import BatchOptions
from i2v.doctor import Check
from i2v.errors import (
    AtlasAPIError,
    AtlasError,
    AuthError,
    BlockedError,
    NotFoundError,
    RegionBlockedError,
    TransportError,
)
from i2v.models import ModelSpec, build_inputs, get_model
from i2v.parsing import input_schema, listed_price, model_catalog, model_entry
from i2v.preflight import PROBE_PREDICTION_ID
from i2v.rows import model_options_of

# What each field we send must be, when the schema says a type.
_FIELD_TYPES: dict[str, tuple[str, ...]] = {
    "image": ("string",),
    "prompt": ("string",),
    "duration": ("integer", "number", "string"),
}


def sent_fields(options: BatchOptions) -> list[str]:
    """The fields a generate request of this config carries (besides `model`)."""
    spec = get_model(str(options.model))
    body = build_inputs(
        spec,
        image="https://example.invalid/picture.png",
        prompt="a prompt",
        duration=spec.default_duration,
        options=model_options_of(options),
    )
    return list(body)


async def check_host(client: AtlasClient) -> tuple[Check, Any]:
    """The host answers the models listing with the API's JSON; returns the listing."""
    where = client.base_url
    started = time.monotonic()
    try:
        listing = await client.model_listing()
    except BlockedError as exc:
        return Check(
            False,
            f"API host {where} answers with a block page, not the API ({exc.message})",
            "set ATLASCLOUD_USER_AGENT (or api.user_agent) to a browser-like User-Agent "
            f"(sent: {client.user_agent!r}); if that does not help, the network is blocked",
        ), None
    except TransportError as exc:
        return Check(
            False,
            f"API host {where} does not answer ({exc.message})",
            "check api.base_url / ATLASCLOUD_BASE_URL, the network, proxy and firewall",
        ), None
    except AtlasError as exc:
        status = getattr(exc, "status_code", None)
        return Check(
            False,
            f"API host {where} answers GET /api/v1/models with HTTP {status} ({exc.message})",
            "check api.base_url / ATLASCLOUD_BASE_URL: it must be the API, e.g. "
            "https://api.atlascloud.ai",
        ), None
    ms = (time.monotonic() - started) * 1000
    models = model_catalog(listing)
    if not models:
        return Check(
            False,
            f"API host {where} answers, but not with a models listing",
            "check api.base_url / ATLASCLOUD_BASE_URL: it must be the API",
        ), listing
    return Check(
        True, f"API host {where} answers (GET /api/v1/models: {len(models)} models, {ms:.0f} ms)"
    ), listing


async def check_key(client: AtlasClient | None, source: str) -> Check:
    """The key works: a prediction that cannot exist is 404 for a good key, 401 for a bad
    one. `source` says where the key came from (never the key itself)."""
    if client is None:
        return Check(
            False,
            f"no API key: {source}",
            "export ATLASCLOUD_API_KEY=... (never in a config file), or name a Prefect "
            "Secret block in api.api_key_secret_block",
        )
    try:
        await client.get_prediction(PROBE_PREDICTION_ID)
    except NotFoundError:
        return Check(True, f"the API key is accepted ({source})")
    except AuthError as exc:
        return Check(
            False,
            f"the API key is refused (HTTP {exc.status_code}; {source})",
            "check the key in the Atlas Cloud console and export it again as "
            "ATLASCLOUD_API_KEY (or update the Secret block)",
        )
    except BlockedError as exc:
        return Check(
            False,
            f"the key check got a block page, not the API ({exc.message})",
            "set ATLASCLOUD_USER_AGENT (or api.user_agent) to a browser-like User-Agent",
        )
    except RegionBlockedError:
        return Check(
            False,
            "Atlas Cloud refuses requests from this region (HTTP 451)",
            "run from a region Atlas Cloud serves",
        )
    except AtlasAPIError as exc:
        if exc.status_code in (400, 404):
            return Check(True, f"the API key is accepted ({source})")
        return Check(
            False,
            f"the key check answered HTTP {exc.status_code} ({exc.message})",
            "try again later; if it persists, see the Atlas Cloud status page",
        )
    except AtlasError as exc:
        return Check(False, f"the key check got no answer ({exc.message})", "check the network")
    return Check(
        False,
        f"a prediction that cannot exist ({PROBE_PREDICTION_ID}) was found",
        "check api.base_url: this does not behave like the Atlas Cloud API",
    )


def check_model(listing: Any, model: str) -> tuple[Check, Mapping[str, Any] | None]:
    """The configured model is in the listing; returns its entry."""
    entry = model_entry(listing, model)
    if entry is None:
        names = list(model_catalog(listing))
        close = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return Check(
            False,
            f"model {model} is not in the models listing{hint}",
            "set `model` in the config to a model Atlas Cloud lists",
        ), None
    hidden = entry.get("display_console") is False
    note = ", hidden from the console" if hidden else ""
    kind = entry.get("type")
    return Check(True, f"model {model} is listed ({kind or 'no type'}{note})"), entry


def compare_schema(inputs: Mapping[str, Any], sent: Sequence[str], spec: ModelSpec) -> list[str]:
    """How a published `Input` schema disagrees with what we send (empty: it agrees)."""
    props = inputs.get("properties")
    props = props if isinstance(props, Mapping) else {}
    required = [str(r) for r in inputs.get("required") or [] if isinstance(r, str)]
    problems: list[str] = []
    missing = [f for f in sent if f not in props]
    new = [p for p in props if p not in sent]
    for field in missing:
        alike = difflib.get_close_matches(field, new, n=1, cutoff=0.5)
        renamed = f" (renamed to {alike[0]!r}?)" if alike else ""
        problems.append(f"it has no field {field!r}, which we send{renamed}")
    for field in required:
        if field not in sent:
            problems.append(f"it requires {field!r}, which we do not send")
    for field in sent:
        node = props.get(field)
        kind = node.get("type") if isinstance(node, Mapping) else None
        wanted = _FIELD_TYPES.get(field, ("boolean",))
        if isinstance(kind, str) and kind not in wanted:
            problems.append(f"{field!r} is a {kind}, we send a {wanted[0]}")
    duration = props.get("duration")
    if "duration" in sent and isinstance(duration, Mapping) and spec.durations:
        enum = _enum(duration)
        if enum is not None and sorted(enum) != sorted(spec.durations):
            ours = "/".join(str(d) for d in spec.durations)
            theirs = "/".join(str(d) for d in sorted(enum)) or "none"
            problems.append(f"durations are {theirs} s, we check {ours} s")
    prompt = props.get("prompt")
    if "prompt" in sent and isinstance(prompt, Mapping):
        limit = prompt.get("maxLength")
        if isinstance(limit, int) and limit < spec.max_prompt_chars:
            problems.append(
                f"prompts take at most {limit} characters, we allow {spec.max_prompt_chars}"
            )
    return problems


def _enum(node: Mapping[str, Any]) -> list[int] | None:
    values = node.get("enum")
    if values is None:
        options = node.get("anyOf") or node.get("oneOf")
        if isinstance(options, list):
            values = [o.get("const", o.get("enum")) for o in options if isinstance(o, Mapping)]
            values = [v for vs in values for v in (vs if isinstance(vs, list) else [vs])]
    if not isinstance(values, list):
        return None
    out: list[int] = []
    for value in values:
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            continue
    return out


async def check_schema(
    client: AtlasClient, entry: Mapping[str, Any], options: BatchOptions
) -> Check:
    """The model's published input schema takes exactly what we send."""
    spec = get_model(str(options.model))
    sent = sent_fields(options)
    url = entry.get("schema")
    if not isinstance(url, str) or not url.strip():
        return Check(
            False,
            f"the listing gives no input schema URL for {spec.name}",
            "cannot check the inputs: compare them with the model page by hand",
        )
    try:
        document = await client.published_schema(url.strip())
    except AtlasError as exc:
        return Check(
            False,
            f"the input schema at {url} cannot be read ({exc.message})",
            "try again; if it persists, compare the inputs with the model page by hand",
        )
    inputs = input_schema(document)
    if inputs is None:
        return Check(
            False,
            f"the document at {url} has no components.schemas.Input",
            "compare the inputs with the model page by hand",
        )
    problems = compare_schema(inputs, sent, spec)
    if problems:
        return Check(
            False,
            f"the published input schema of {spec.name} disagrees with what we send: "
            + "; ".join(problems),
            "the provider changed the model's inputs: start no big run; update i2v/models.py "
            "(the fields sent, the durations) to the schema, or choose another model",
        )
    durations = "/".join(str(d) for d in spec.durations) + " s" if spec.durations else "none"
    return Check(
        True,
        f"the published input schema takes what we send ({', '.join(sent)}; durations {durations})",
    )


def check_price(entry: Mapping[str, Any] | None, options: BatchOptions) -> Check:
    """The catalog's price against the configured one (budgets count the higher)."""
    spec = get_model(str(options.model))
    configured = options.price(spec.default_duration)
    listed = listed_price(entry) if entry is not None else None
    what = f"{spec.default_duration} s video" if spec.default_duration else "video"
    if listed is None:
        return Check(
            True,
            f"price: the catalog lists none; budgets use the configured ${configured:.2f} "
            f"per {what}",
        )
    if abs(listed - configured) < 0.005:
        return Check(True, f"price: the catalog's ${listed:.2f} per {what} matches the config")
    if listed > configured:
        return Check(
            False,
            f"price: the catalog says ${listed:.2f} per {what}, the config ${configured:.2f}",
            f"set prices_usd[{spec.name}] to {listed:g} (and its 10 s price); budgets already "
            "count the catalog's higher price, so no budget is overspent",
        )
    return Check(
        True,
        f"price: the catalog says ${listed:.2f} per {what}, the config ${configured:.2f} "
        "(budgets count the higher)",
    )


async def api_checks(
    client: AtlasClient,
    key_client: AtlasClient | None,
    *,
    key_source: str,
    options: BatchOptions,
) -> list[Check]:
    """The API checks in order; later ones are skipped when the host does not answer."""
    host, listing = await check_host(client)
    checks = [host]
    if not host.ok and listing is None:
        if key_client is None:  # a missing key needs no network to tell
            checks.append(await check_key(None, key_source))
        return checks
    checks.append(await check_key(key_client, key_source))
    model, entry = check_model(listing, str(options.model))
    checks.append(model)
    if entry is not None:
        checks.append(await check_schema(client, entry, options))
    checks.append(check_price(entry, options))
    if key_client is not None and checks[1].ok:
        checks.append(await check_balance(key_client, options))
    return checks
