"""The simulator's answers: the API's JSON envelopes, and the HTML pages that Cloudflare
(in front of the real API) answers instead of it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import HTMLResponse, JSONResponse


def error_response(status: int, msg: str) -> JSONResponse:
    """The API's error envelope: `{"code": status, "msg": msg}` with that HTTP status."""
    return JSONResponse({"code": status, "msg": msg}, status_code=status)


def ok(data: Any) -> JSONResponse:
    """The API's success envelope around `data`."""
    return JSONResponse({"code": 200, "msg": "success", "data": data})


def iso(ts: float) -> str:
    """Epoch seconds as the API writes times: ISO 8601, milliseconds, `Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cloudflare_block(host: str) -> HTMLResponse:
    """Cloudflare's 403 for a banned browser signature (error 1010), as it looks."""
    return HTMLResponse(
        "<!DOCTYPE html><html><head>"
        f"<title>Access denied | {host} used Cloudflare to restrict access</title></head>"
        '<body><h1>Error <span class="cf-error-code">1010</span></h1>'
        "<p>error code: 1010</p><p>The owner of this website has banned your access "
        "based on your browser's signature.</p></body></html>",
        status_code=403,
    )


def interstitial() -> HTMLResponse:
    """A 200 HTML page where the API's JSON should be (a proxy's or Cloudflare's check)."""
    return HTMLResponse(
        "<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
        "<body><p>Checking your browser before accessing the site.</p></body></html>"
    )
