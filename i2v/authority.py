"""Who decides what: the run options that only a worker's operator may decide.

A flow run's parameters come from whoever starts it: in a deployment run, anyone who
can fill the Prefect form or call the API. Where the key is sent (`api.base_url`) and
what the worker may read (`allow_outside_base`) are the worker's to decide, so a run
started from a deployment may ask for them only where the worker's environment already
says the same, or allows it:

- `api.base_url`: its origin must be the worker's own API (`ATLASCLOUD_BASE_URL`, else
  the default) or one of the exact origins in `I2V_ALLOWED_BASE_URLS`.
- `allow_outside_base: true`: only where `I2V_ALLOW_OUTSIDE_BASE` is set to 1 / true.

Which runs this applies to (deployment runs, not the operator's own CLI or Python
call) is `flows.authority`'s call; this module is the rule alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from i2v._constants import BASE_URL_ENV, DEFAULT_BASE_URL, url_origin
from i2v.config import BatchOptions
from i2v.resolve import show

ALLOWED_BASE_URLS_ENV = "I2V_ALLOWED_BASE_URLS"
ALLOW_OUTSIDE_BASE_ENV = "I2V_ALLOW_OUTSIDE_BASE"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def worker_api(env: Mapping[str, str]) -> str:
    """The API this worker sends its key to when a run names none."""
    return env.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL


def allowed_origins(env: Mapping[str, str]) -> tuple[frozenset[str], list[str]]:
    """The origins `I2V_ALLOWED_BASE_URLS` lists (comma or space separated), and its
    entries that are not an origin (`scheme://host[:port]`, nothing after but `/`):
    those allow nothing."""
    good: set[str] = set()
    bad: list[str] = []
    for entry in re.split(r"[,\s]+", env.get(ALLOWED_BASE_URLS_ENV, "")):
        if not entry:
            continue
        origin = url_origin(entry)
        rest = urlsplit(entry)
        if origin is not None and rest.path in ("", "/") and not ({"?", "#"} & set(entry)):
            good.add(origin)
        else:
            bad.append(entry)
    return frozenset(good), bad


def refusals(options: BatchOptions, env: Mapping[str, str]) -> list[str]:
    """One message per option that asks for more than the worker's environment `env`
    allows (empty: a deployment run may have these options as they are). Each message
    names the option and what to set, on the worker, to allow it."""
    found: list[str] = []
    asked = options.api.base_url
    if asked is not None and not options.api.simulator:
        own = worker_api(env)
        origin = url_origin(asked)
        allowed, ignored = allowed_origins(env)
        if origin is None or (origin != url_origin(own) and origin not in allowed):
            how = (
                f"Set {BASE_URL_ENV}, or add {origin} to {ALLOWED_BASE_URLS_ENV}, in the "
                "worker's environment"
                if origin
                else f"It is not an http(s) URL without user info; {BASE_URL_ENV} and "
                f"{ALLOWED_BASE_URLS_ENV} in the worker's environment name the APIs it may use"
            )
            note = (
                f" ({ALLOWED_BASE_URLS_ENV} entries that are not an origin, ignored: "
                + ", ".join(show(e) for e in ignored)
                + ")"
                if ignored
                else ""
            )
            found.append(
                f"options.api.base_url {show(_shown(asked))} is not this worker's API "
                f"({_shown(own)}): a run's form cannot choose where the key is sent. {how}{note}"
            )
    if options.allow_outside_base and not _true(env.get(ALLOW_OUTSIDE_BASE_ENV)):
        found.append(
            "options.allow_outside_base is true: a run's form cannot let the worker read "
            "pictures outside the manifest's folder. Set "
            f"{ALLOW_OUTSIDE_BASE_ENV}=1 in the worker's environment to allow it"
        )
    return found


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_WORDS


def _shown(url: str) -> str:
    """`url` with any user info masked: a password typed into a form stays out of logs."""
    head, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if sep and "@" in netloc:
        return f"{head}://***@{netloc.rsplit('@', 1)[1]}{slash}{tail}"
    return url
