"""The Atlas model catalog: the listing (no key) and each image-to-video model's published
input schema, cached on disk with an expiry so a run without network uses the last copy
(and says how old it is).

Entries whose `display_console` is false are left out (missing counts as shown, as in
Atlas's own code); image-to-video is read from `categories`, `tags` or `type` + name.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from i2v.errors import AtlasError, ConfigError, InputError
from i2v.model_schema import ModelSchema, read_schema
from i2v.parsing import input_schema, listed_price

CACHE_TTL_S = 24 * 3600
CACHE_DIR_ENV = "I2V_CACHE_DIR"
I2V = "IMAGE-TO-VIDEO"


class _Reader(Protocol):
    async def model_listing(self) -> Any: ...
    async def published_schema(self, url: str) -> Any: ...


@dataclass(frozen=True)
class CatalogModel:
    """One listed model: category, price per run (None: unlisted) and its schema."""

    name: str
    category: str
    price_usd: float | None
    schema: ModelSchema | None  # None: not image-to-video, or its schema could not be read


@dataclass(frozen=True)
class Catalog:
    models: dict[str, CatalogModel]
    fetched_at: float
    from_cache: bool = False

    def age_text(self, now: float | None = None) -> str:
        age = max(0.0, (now or time.time()) - self.fetched_at)
        hours = age / 3600
        return f"{hours:.1f} h" if hours >= 1 else f"{age / 60:.0f} min"

    def i2v(self) -> list[CatalogModel]:
        return [m for m in self.models.values() if m.category == I2V and m.schema is not None]

    def resolve(self, name: str) -> CatalogModel:
        """The image-to-video model `name`; InputError with close names otherwise."""
        found = self.models.get(name)
        if found is None:
            close = difflib.get_close_matches(name, list(self.models), n=3, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise InputError(f"model {name!r} is not in the catalog{hint}")
        if found.category != I2V:
            close = difflib.get_close_matches(name, [m.name for m in self.i2v()], n=3, cutoff=0.4)
            hint = f"; image-to-video models close to it: {', '.join(close)}" if close else ""
            raise InputError(
                f"model {name!r} is {found.category.lower()}, not image-to-video{hint}"
            )
        if found.schema is None:
            raise InputError(f"the input schema of {name!r} could not be read")
        return found


def category(entry: Mapping[str, Any]) -> str:
    """IMAGE-TO-VIDEO, TEXT-TO-VIDEO, ... as the entry says (upper case)."""
    for key in ("categories", "tags"):
        values = entry.get(key)
        if isinstance(values, list):
            for v in values:
                if isinstance(v, str) and v.strip().upper().replace(" ", "-") == I2V:
                    return I2V
            if key == "categories" and values and isinstance(values[0], str):
                return values[0].strip().upper()
    name = str(entry.get("model", "")).lower()
    if str(entry.get("type", "")).lower() == "video" and (
        "image-to-video" in name or "/i2v" in name
    ):
        return I2V
    return str(entry.get("type") or "unknown").upper()


def _entries(listing: Any) -> list[Mapping[str, Any]]:
    data = listing.get("data", []) if isinstance(listing, Mapping) else listing
    return [
        e
        for e in (data if isinstance(data, list) else [])
        if isinstance(e, Mapping)
        and isinstance(e.get("model"), str)
        and e.get("display_console") is not False
    ]


def build_catalog(
    listing: Any, documents: Mapping[str, Any], fetched_at: float, from_cache: bool = False
) -> Catalog:
    """The catalog from a raw listing and the schema documents fetched for it."""
    models: dict[str, CatalogModel] = {}
    for entry in _entries(listing):
        name = str(entry["model"])
        cat = category(entry)
        schema = None
        inputs = input_schema(documents.get(name)) if cat == I2V else None
        if inputs is not None:
            version = str((documents[name].get("info") or {}).get("version", ""))
            schema = read_schema(name, inputs, version=version)
        models[name] = CatalogModel(name, cat, listed_price(entry), schema)
    return Catalog(models, fetched_at, from_cache)


def default_cache_path(base_url: str) -> Path:
    root = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "i2v")
    digest = hashlib.sha256(base_url.encode()).hexdigest()[:12]
    return root / f"catalog-{digest}.json"


async def _fetch(client: _Reader) -> tuple[Any, dict[str, Any]]:
    listing = await client.model_listing()
    wanted = [
        (str(e["model"]), e["schema"])
        for e in _entries(listing)
        if category(e) == I2V and isinstance(e.get("schema"), str)
    ]
    gate = asyncio.Semaphore(8)

    async def one(url: str) -> Any:
        async with gate:
            try:
                return await client.published_schema(url.strip())
            except AtlasError:
                return None  # this model is listed without a usable schema

    docs = await asyncio.gather(*(one(url) for _, url in wanted))
    return listing, {name: doc for (name, _), doc in zip(wanted, docs, strict=True) if doc}


async def load_catalog(
    client: _Reader, cache: Path, *, ttl_s: float = CACHE_TTL_S, refresh: bool = False
) -> Catalog:
    """The catalog from a fresh cache, else the API; the API failing, the last copy."""
    cached = await asyncio.to_thread(_read_cache, cache)
    now = time.time()
    if cached and not refresh and now - float(cached.get("fetched_at", 0)) < ttl_s:
        return build_catalog(cached["listing"], cached["schemas"], cached["fetched_at"], True)
    try:
        listing, docs = await _fetch(client)
    except AtlasError as exc:
        if cached:
            return build_catalog(cached["listing"], cached["schemas"], cached["fetched_at"], True)
        raise ConfigError(f"the models listing cannot be read ({exc}) and none is cached") from exc
    await asyncio.to_thread(
        _write_cache, cache, {"fetched_at": now, "listing": listing, "schemas": docs}
    )
    return build_catalog(listing, docs, now)


def _read_cache(cache: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "listing" in found else None


def _write_cache(cache: Path, content: dict[str, Any]) -> None:
    """Whole or not at all: a reader never sees half a copy."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(content))
        tmp.replace(cache)
    except OSError:
        pass  # no cache this time: the catalog in hand is still good
