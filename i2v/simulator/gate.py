"""What the simulated service checks before a request reaches the API: Cloudflare's
refusal of a banned User-Agent, and the bearer key (never echoed)."""

from __future__ import annotations

from starlette.types import Scope


def header(scope: Scope, wanted: bytes) -> str:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return str(value.decode("latin-1"))
    return ""


def blocked_agent(scope: Scope, blocked: tuple[str, ...]) -> bool:
    agent = header(scope, b"user-agent").lower()
    return any(b.lower() in agent for b in blocked if b)


def bearer_problem(scope: Scope, api_key: str | None) -> str | None:
    """Why the request's Authorization header is refused, or None. Never echoes the key."""
    scheme, _, token = header(scope, b"authorization").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return "missing API key: send the header 'Authorization: Bearer <key>'"
    if api_key is not None and token != api_key:
        return "invalid API key"
    return None
