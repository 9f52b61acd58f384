"""Constants and tiny predicates shared across the package: one definition of each."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from i2v import __version__

MiB = 1024 * 1024

DEFAULT_BASE_URL = "https://api.atlascloud.ai"
API_KEY_ENV = "ATLASCLOUD_API_KEY"
BASE_URL_ENV = "ATLASCLOUD_BASE_URL"
USER_AGENT_ENV = "ATLASCLOUD_USER_AGENT"
DEFAULT_USER_AGENT = f"i2v-pipeline/{__version__}"

# Right after creation a prediction GET may answer 400/404 for a few seconds.
NOT_VISIBLE_GRACE_S = 30.0

MAX_ID_CHARS = 200
# An id names `videos/<id>.mp4`: no path separators, no control characters.
# \A..\Z, not ^..$: `$` would also match before a trailing newline.
SAFE_ID_PATTERN = re.compile(rf"\A[^/\\\x00-\x1f\x7f]{{1,{MAX_ID_CHARS}}}\Z")


def is_safe_id(text: str) -> bool:
    """Whether `text` can name a file on its own: SAFE_ID_PATTERN, and not "." or ".."."""
    return bool(SAFE_ID_PATTERN.match(text)) and text not in (".", "..")


def show(value: str, limit: int = 120) -> str:
    """A value quoted for a message, cut short so a pasted data: URI cannot flood it."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def url_origin(url: str) -> str | None:
    """`scheme://host[:port]` of an http(s) URL: where a request to it goes (lower case,
    the scheme's default port left out). None for anything else: another scheme, no
    host, a bad port, or user info (`https://user@host`)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


# A URI's scheme ("s3", "https", "file"): one pattern for DEST, sources and pictures.
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
