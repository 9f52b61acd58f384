"""Where a manifest's `image` cells point. A `Resolver` turns one cell into a checked
location (an absolute local path, an s3:// URI or an http(s) URL) or into one specific
message saying why it cannot be used: a scheme the config does not allow, a literal
address or plain http the worker's `I2V_PRIVATE_HOSTS` does not allow, a local path
outside the manifest's folder (symlinks included) or missing, a relative path in a CSV
on S3 that climbs above its bucket. `LocalResolver` serves CSVs on this machine and
`S3Resolver` CSVs on S3; each resolves a cell once, and none fetches picture bytes.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import unquote, urlsplit

from i2v._constants import SCHEME, show
from i2v.manifest_rules import Rules
from i2v.netguard import screen


def scheme_refused(scheme: str, rules: Rules) -> str:
    allowed = [f"{s}://" for s in rules.allowed_schemes if s != "file"]
    if "file" in rules.allowed_schemes:
        allowed.append("a path relative to the manifest")
    return f"image location scheme {scheme!r} is not allowed here; use {' or '.join(allowed)}"


class Resolver:
    """Turns an image cell into a location, or a message saying why it cannot."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        # Rows often share a picture; resolving (realpath + stat) once each keeps a
        # 100k-row manifest fast.
        self._seen: dict[str, tuple[str | None, str | None]] = {}

    def resolve(self, image: str) -> tuple[str | None, str | None]:
        if image not in self._seen:
            self._seen[image] = self._resolve(image)
        return self._seen[image]

    def _resolve(self, image: str) -> tuple[str | None, str | None]:
        match = SCHEME.match(image)
        if match is None and image.lower().startswith("data:"):
            return None, "image is a data: URI; give a path, https:// or s3:// location"
        scheme = match.group(1).lower() if match else ""
        if scheme == "":
            return self.relative(image)
        if scheme == "file":
            if "file" not in self.rules.allowed_schemes:
                return None, scheme_refused("file", self.rules)
            parts = urlsplit(image)
            if parts.netloc not in ("", "localhost"):
                return None, f"image URI {show(image)} names another host; use a local path"
            return self.local(Path(unquote(parts.path)), image)
        if scheme == "s3":
            if "s3" not in self.rules.allowed_schemes:
                return None, scheme_refused("s3", self.rules)
            bucket, _, key = image[5:].partition("/")
            if not bucket or not key or key.endswith("/"):
                return None, f"image URI {show(image)} does not name an object (s3://bucket/key)"
            return image, None
        if scheme in ("http", "https"):
            return self.web(image, scheme)
        return None, scheme_refused(scheme, self.rules)

    def web(self, image: str, scheme: str) -> tuple[str | None, str | None]:
        try:
            parts = urlsplit(image)
            host, _ = parts.hostname, parts.port  # .port refuses a bad port
        except ValueError:
            return None, f"image URL {show(image)} is not a valid URL"
        if not host:
            return None, f"image URL {show(image)} has no host"
        if "https" not in self.rules.allowed_schemes:
            return None, scheme_refused(scheme, self.rules)
        # Names are resolved and judged when the picture is fetched (`i2v.locations`).
        refused = screen(image, self.rules.private_hosts)
        return (None, refused) if refused else (image, None)

    def relative(self, image: str) -> tuple[str | None, str | None]:
        raise NotImplementedError

    def local(self, path: Path, image: str) -> tuple[str | None, str | None]:
        raise NotImplementedError


class LocalResolver(Resolver):
    """Paths resolve against the CSV's folder and must stay inside it (symlinks too)."""

    def __init__(self, base: str, rules: Rules) -> None:
        super().__init__(rules)
        self.base = base

    def relative(self, image: str) -> tuple[str | None, str | None]:
        if "file" not in self.rules.allowed_schemes:
            return None, "local image paths are not allowed here; use https:// or s3:// locations"
        return self.local(Path(image), image)

    def local(self, path: Path, image: str) -> tuple[str | None, str | None]:
        joined = os.path.normpath(os.path.join(self.base, path))
        real = os.path.realpath(joined)
        if not self.rules.allow_outside_base and not _inside(real, self.base):
            via = f" (it links to {real})" if _inside(joined, self.base) else ""
            return None, (
                f"image path {image} is outside the manifest's folder{via}; "
                "set allow_outside_base in the config to allow it"
            )
        if not os.path.exists(real):
            return None, f"image file not found: {real}"
        if not os.path.isfile(real):
            return None, f"image path is not a file: {real}"
        return real, None


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


class S3Resolver(Resolver):
    """Relative paths in a CSV on S3 are keys next to the CSV."""

    def __init__(self, bucket: str, folder: str, rules: Rules) -> None:
        super().__init__(rules)
        self.bucket = bucket
        self.folder = folder

    def relative(self, image: str) -> tuple[str | None, str | None]:
        if "s3" not in self.rules.allowed_schemes:
            return None, scheme_refused("s3", self.rules)
        if image.startswith("/"):
            return None, (
                f"image path {image} is absolute; in a manifest on S3 use a path relative "
                "to the manifest or an s3:// URI"
            )
        key = posixpath.normpath(posixpath.join(self.folder, image))
        if key == ".." or key.startswith("../"):
            return None, f"image path {image} goes above the top of bucket {self.bucket!r}"
        inside = not self.folder or key.startswith(self.folder + "/")
        if not inside and not self.rules.allow_outside_base:
            return None, (
                f"image path {image} is outside the manifest's folder; "
                "set allow_outside_base in the config to allow it"
            )
        if image.endswith("/"):
            return None, f"image path {image} is a folder, not a picture"
        return f"s3://{self.bucket}/{key}", None

    def local(self, path: Path, image: str) -> tuple[str | None, str | None]:
        return None, (
            f"image {show(image)} is a local file but the manifest is on S3; "
            "use a path relative to the manifest or an s3:// URI"
        )
