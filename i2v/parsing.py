"""Reading Atlas Cloud's answers: pure functions, tolerant of the API's variants.

Statuses are normalised from their many spellings, ids and outputs are found in either
envelope, and an answer that is not the API's JSON at all (an HTML page from Cloudflare
or a proxy in front of it) is recognised as such.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from html import unescape
from typing import Any
from urllib.parse import urlsplit

from i2v.errors import AtlasError
from i2v.types import Prediction, PredictionStatus, UploadedMedia

__all__ = [
    "STATUS_MAP",
    "ErrorPage",
    "effective_status",
    "error_page",
    "input_schema",
    "is_known_status",
    "listed_price",
    "model_entry",
    "model_names",
    "normalize_status",
    "parse_prediction",
    "parse_time",
    "parse_upload",
    "safe_url",
    "server_message",
]

STATUS_MAP: dict[str, PredictionStatus] = {
    **dict.fromkeys(
        ("processing", "starting", "created", "queued", "in_progress", "pending", "running"),
        PredictionStatus.RUNNING,
    ),
    **dict.fromkeys(("completed", "succeeded", "success"), PredictionStatus.SUCCEEDED),
    **dict.fromkeys(("failed", "fail", "canceled", "cancelled", "error"), PredictionStatus.FAILED),
    **dict.fromkeys(("timed_out", "timeout", "timedout"), PredictionStatus.TIMED_OUT),
}

# Cloudflare's own error codes for "this client is refused" (IP, country, browser
# signature, firewall rule). 1015 (its rate limit) comes as a 429 and is left to that.
CLOUDFLARE_BLOCK_CODES = frozenset({"1006", "1007", "1008", "1009", "1010", "1012", "1020"})
_HTML_START = re.compile(r"\s*<(?:!doctype\s+html|html|head|body|!--|\?xml)", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
# Its plain-text page is just "error code: 1010"; the HTML one shows "Error 1010" and
# marks the number with class "cf-error-code".
_CLOUDFLARE_CODE = re.compile(r"\berror(?:\s+code)?\s*:?\s*(1\d{3})\b", re.IGNORECASE)
_CLOUDFLARE_SPAN = re.compile(r"cf-error-code[^>]*>\s*(1\d{3})\b", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")


def normalize_status(raw: object) -> str:
    """A status as a lookup key: lower case, words joined by underscores."""
    return str(raw).strip().lower().replace("-", "_").replace(" ", "_")


def is_known_status(raw: str) -> bool:
    """Whether `raw` is one of the spellings STATUS_MAP knows."""
    return normalize_status(raw) in STATUS_MAP


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _opt_float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _envelope(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    data = payload.get("data")
    return data if isinstance(data, Mapping) else payload


def _outputs(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str | Mapping) else value
    if not isinstance(items, list | tuple):
        return ()
    urls: list[str] = []
    for item in items:
        # Entries are URLs; tolerate {"url": …} objects some endpoints use.
        url = item.get("url") if isinstance(item, Mapping) else item
        if isinstance(url, str) and url.strip():
            urls.append(url.strip())
    return tuple(urls)


def parse_prediction(
    payload: Mapping[str, Any],
    *,
    request_id: str | None = None,
    fallback_id: str | None = None,
) -> Prediction:
    """A `Prediction` from a generate or prediction answer, tolerant of its variants.

    The id comes from `data.id` or a top-level `id` (or `fallback_id`, the id that was
    asked for); `outputs` may be a list or a single string; statuses are normalised
    (unknown ones count as still running); `error_code` becomes a string.
    Raises `AtlasError` if no id can be found at all.
    """
    if not isinstance(payload, Mapping):
        raise AtlasError(f"prediction answer is not a JSON object: {type(payload).__name__}")
    data = _envelope(payload)
    pred_id = _opt_str(data.get("id")) or _opt_str(payload.get("id")) or fallback_id
    if not pred_id:
        raise AtlasError("prediction answer has no id", request_id=request_id)
    raw_status = _opt_str(data.get("status") or payload.get("status"))
    status = (
        STATUS_MAP.get(normalize_status(raw_status), PredictionStatus.RUNNING)
        if raw_status
        else PredictionStatus.RUNNING
    )
    metrics = data.get("metrics")
    predict_time = _opt_float(metrics.get("predict_time")) if isinstance(metrics, Mapping) else None
    outputs = data.get("outputs")
    if outputs is None:
        outputs = data.get("output")
    return Prediction(
        id=pred_id,
        status=status,
        raw_status=raw_status,
        outputs=_outputs(outputs),
        error=_opt_str(data.get("error")),
        error_code=_opt_str(data.get("error_code")),
        predict_time_s=predict_time,
        created_at=_opt_str(data.get("created_at")),
        completed_at=_opt_str(data.get("completed_at")),
        request_id=request_id,
        raw=dict(payload),
    )


def parse_upload(payload: Mapping[str, Any]) -> UploadedMedia:
    """An `UploadedMedia` from an uploadMedia answer; `AtlasError` if it has no URL."""
    if not isinstance(payload, Mapping):
        raise AtlasError(f"upload answer is not a JSON object: {type(payload).__name__}")
    data = _envelope(payload)
    url = _opt_str(data.get("download_url")) or _opt_str(data.get("url"))
    if not url:
        raise AtlasError("upload answer has no download_url")
    size = data.get("size")
    return UploadedMedia(
        download_url=url,
        file_name=_opt_str(data.get("file_name")),
        content_type=_opt_str(data.get("content_type")),
        size=int(size) if isinstance(size, int | float) and not isinstance(size, bool) else None,
    )


def model_names(payload: object) -> list[str]:
    """Model names from a /models answer: a list of names or of objects naming one."""
    return list(model_catalog(payload))


def model_catalog(payload: object) -> dict[str, float | None]:
    """Model name -> its listed price in USD per run (None when it lists none)."""
    data: object = payload
    if isinstance(payload, Mapping):
        data = payload.get("data", payload.get("models", []))
        if isinstance(data, Mapping):
            data = data.get("models", data.get("items", []))
    catalog: dict[str, float | None] = {}
    if isinstance(data, list):
        for entry in data:
            if isinstance(entry, str):
                catalog[entry] = None
            elif isinstance(entry, Mapping):
                for key in ("model", "id", "name", "model_name"):
                    if isinstance(entry.get(key), str):
                        catalog[entry[key]] = _price(entry.get("price"))
                        break
    return catalog


def model_entry(payload: object, model: str) -> Mapping[str, Any] | None:
    """The models listing's entry for `model` (its `schema` URL, `price`, ...), or None."""
    data: object = payload
    if isinstance(payload, Mapping):
        data = payload.get("data", payload.get("models", []))
        if isinstance(data, Mapping):
            data = data.get("models", data.get("items", []))
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, Mapping) and any(
            entry.get(key) == model for key in ("model", "id", "name", "model_name")
        ):
            return entry
    return None


def listed_price(entry: Mapping[str, Any]) -> float | None:
    """A listing entry's price in USD per run (None when it lists none)."""
    return _price(entry.get("price"))


def input_schema(document: object) -> Mapping[str, Any] | None:
    """A model's published inputs: `components.schemas.Input` of its OpenAPI document,
    with local `$ref`s of the object and its properties resolved; None if absent."""
    if not isinstance(document, Mapping):
        return None
    schemas = document.get("components", {})
    schemas = schemas.get("schemas", {}) if isinstance(schemas, Mapping) else {}
    found = schemas.get("Input") if isinstance(schemas, Mapping) else None
    found = _resolve(document, found)
    if not isinstance(found, Mapping):
        return None
    props = found.get("properties")
    if isinstance(props, Mapping):
        found = {**found, "properties": {k: _resolve(document, v) for k, v in props.items()}}
    return found


def _resolve(document: Mapping[str, Any], node: object, depth: int = 0) -> object:
    """Follow a local `{"$ref": "#/..."}` (a few levels at most)."""
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str) and depth < 8:
        ref = str(node["$ref"])
        if not ref.startswith("#/"):
            return node
        target: object = document
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        node, depth = target, depth + 1
    return node


def _price(value: object) -> float | None:
    """A price as the catalog writes it: a number, or an object holding one."""
    if isinstance(value, Mapping):
        for key in ("actual", "price", "amount", "usd", "value", "base"):
            if key in value:
                return _price(value[key])
        return None
    number = _opt_float(value.strip("$ ") if isinstance(value, str) else value)
    return number if number is not None and number > 0 else None


@dataclass(frozen=True)
class ErrorPage:
    """An answer that is not the API's JSON: what it looks like."""

    html: bool
    title: str  # the HTML title, or the text's first line; may be empty
    cloudflare_code: str | None  # "1010", "1020", ... when Cloudflare says which

    @property
    def blocked_by_cloudflare(self) -> bool:
        return self.cloudflare_code in CLOUDFLARE_BLOCK_CODES


def error_page(text: str, content_type: str | None = None) -> ErrorPage:
    """Describe a non-JSON answer body (call it only when the body did not parse)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    html = kind in ("text/html", "application/xhtml+xml") or bool(_HTML_START.match(text))
    title = ""
    if html:
        found = _TITLE.search(text)
        if found:
            title = " ".join(unescape(found.group(1)).split())
    else:
        title = text.strip().split("\n", 1)[0].strip()
    code = _CLOUDFLARE_SPAN.search(text) or _CLOUDFLARE_CODE.search(
        _TAG.sub(" ", text) if html else text
    )
    return ErrorPage(html=html, title=title[:200], cloudflare_code=code.group(1) if code else None)


def server_message(body: object, text: str, reason: str = "") -> str:
    """The server's own words: the JSON `msg` (or a sibling key), else the page's title or
    first 200 characters, else the HTTP reason phrase."""
    if isinstance(body, Mapping):
        for key in ("msg", "message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    page = error_page(text) if body is None else None
    if page is not None and page.html:
        return page.title or reason
    return text.strip()[:200] or reason


def effective_status(http_status: int, body: object) -> int:
    """The HTTP status, unless a 2xx answer carries an error `code` in its envelope."""
    if 200 <= http_status < 300 and isinstance(body, Mapping):
        code = body.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            return code
    return http_status


def parse_time(value: str | None) -> float | None:
    """Epoch seconds from an ISO-8601 string or epoch seconds/milliseconds; else None."""
    if not value:
        return None
    number = _opt_float(value)
    if number is not None:
        return number / 1000.0 if number > 1e11 else number  # epoch ms or s
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def safe_url(url: str) -> str:
    """The URL without its query: presigned URLs carry signatures in it."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else parts.path
