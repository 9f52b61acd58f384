"""Reading the data team's manifest: a CSV, Parquet or JSON Lines table of pictures and
prompts (`i2v.manifest_formats` reads the formats), or an S3 prefix.

`read_manifest` does every check that needs no picture bytes, before anything is paid.
Problems with the manifest as a whole raise `ManifestError`; a problem with one row
sets that row's `error` (one specific message) and leaves the other rows alone.

Choices the brief left open:
- Local pictures are checked for existence (one stat each): "image file not found: ...".
  Pictures behind https:// and s3:// are not fetched here.
- A model that takes no duration (spec.durations is None) refuses a non-empty duration
  cell: silently ignoring "10" would make someone pay for a video of a length they did
  not ask for. `default_duration` is ignored for it, since the config always carries one.
- Ids must be usable as a file name (`videos/<id>.mp4`) and are unique ignoring case,
  so two rows never land on the same file on a case-insensitive disk.
- The `image` column is required when the model needs an image; for text-to-video
  models it is optional and a prompt is required instead.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from i2v import manifest_formats as formats
from i2v._constants import MAX_ID_CHARS, SCHEME
from i2v.config import BatchOptions
from i2v.errors import ConfigError, ManifestError
from i2v.fields import check_id, check_prompt, choices, parse_duration
from i2v.manifest_rules import Rules
from i2v.models import ModelSpec, get_model
from i2v.private_hosts import Allowance, worker_allowance
from i2v.resolve import LocalResolver, Resolver, S3Resolver, scheme_refused

KNOWN_COLUMNS = ("image", "prompt", "duration", "id")
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class ManifestRow:
    """One data row after the row-level checks."""

    line: int  # spreadsheet row number: header = 1, first data row = 2
    id: str | None  # stripped; None when absent or empty
    image: str  # as written in the manifest
    image_location: str | None  # absolute local path, s3:// or http(s) URL; None if bad
    prompt: str
    duration: int | None  # None when invalid or when the model takes no duration
    extras: dict[str, str] = field(default_factory=dict)  # other columns, manifest order
    error: str | None = None  # None when the row passed; else one specific message
    # A row naming a model other than the config's: its duration is checked against that
    # model's schema (`i2v.row_plans`), so the cell is kept as written.
    duration_text: str = ""
    end_image_location: str | None = None  # the `end_image` cell, resolved like `image`


@dataclass
class Manifest:
    """A manifest's rows, good and bad, in manifest order."""

    source: str  # absolute local path or the s3:// URI as given
    base: str  # folder of the CSV, or the s3:// prefix relative images resolve against
    rows: list[ManifestRow]
    extra_columns: list[str]
    # Typed extra columns (Parquet, JSON Lines) -> their results dtype ("Int64", ...).
    extra_types: dict[str, str] = field(default_factory=dict)

    @property
    def good_rows(self) -> list[ManifestRow]:
        return [r for r in self.rows if r.error is None]

    @property
    def bad_rows(self) -> list[ManifestRow]:
        return [r for r in self.rows if r.error is not None]


def read_manifest(
    source: str | Path,
    *,
    spec: ModelSpec,
    default_prompt: str = "",
    default_duration: int | None = None,
    allow_outside_base: bool = False,
    allowed_schemes: tuple[str, ...] = ("https", "s3", "file"),
    private_hosts: Allowance | None = None,
    s3_client: Any | None = None,
    catalog_model: str = "",
) -> Manifest:
    """Read a CSV, Parquet or JSON Lines manifest (local or s3://) or an s3:// prefix
    (of pictures, or of .parquet parts).

    `allowed_schemes` governs image locations; "file" covers plain local paths too.
    `private_hosts` is the internal hosts picture URLs may name (default: this worker's
    `I2V_PRIVATE_HOSTS`). Raises ManifestError when the manifest cannot be used at all,
    ConfigError when the defaults do not fit the model or the allowance is malformed.
    """
    rules = Rules(
        spec=spec,
        default_prompt=default_prompt.strip(),
        default_duration=default_duration,
        allow_outside_base=allow_outside_base,
        allowed_schemes=tuple(s.lower() for s in allowed_schemes),
        private_hosts=worker_allowance() if private_hosts is None else private_hosts,
        catalog_model=catalog_model.strip(),
    )
    _check_defaults(rules)
    text = str(source).strip()
    if not text:
        raise ManifestError("no manifest given: use a CSV path, s3://bucket/key.csv or a prefix")
    match = SCHEME.match(text)
    scheme = match.group(1).lower() if match else ""
    if scheme == "s3":
        if not text[5:].partition("/")[0]:
            raise ManifestError(f"manifest source {text!r} names no bucket")
        from i2v.s3 import default_s3_client  # boto3 only for an S3 manifest

        client = s3_client if s3_client is not None else default_s3_client()
        if formats.table_format(text):
            bucket, key = text[5:].partition("/")[::2]
            return _read_s3_table(text, client, bucket, [key], posixpath.dirname(key), rules)
        if text.lower().endswith(".csv"):
            return _read_s3_csv(text, client, rules)
        return _read_s3_prefix(text, client, rules)
    if scheme == "file":
        text = unquote(urlsplit(text).path)
    elif scheme:
        raise ManifestError(
            f"unsupported manifest source {text!r}: use a CSV path, s3://bucket/key.csv "
            "or an s3:// prefix of pictures"
        )
    if fmt := formats.table_format(text):
        path = Path(text).expanduser().absolute()
        base = os.path.realpath(path.parent)
        with formats.local_table(str(path), path, fmt) as table:
            return _rows(str(path), base, table, LocalResolver(base, rules), rules)
    return _read_local_csv(Path(text), rules)


def _check_defaults(rules: Rules) -> None:
    spec = rules.spec
    default = rules.default_duration
    if default is not None and spec.durations is not None and default not in spec.durations:
        raise ConfigError(
            f"default_duration {default} is not allowed for {spec.name}; "
            f"use {choices(spec.durations)}"
        )
    if len(rules.default_prompt) > spec.max_prompt_chars:
        raise ConfigError(
            f"default_prompt has {len(rules.default_prompt)} characters; {spec.name} takes "
            f"at most {spec.max_prompt_chars}"
        )


# ------------------------------------------------------------------------------ sources


def _read_local_csv(path: Path, rules: Rules) -> Manifest:
    path = path.expanduser().absolute()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except IsADirectoryError:
        raise ManifestError(
            f"manifest {path} is a folder; give the CSV file inside it "
            "(only an s3:// prefix can be a folder of pictures)"
        ) from None
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    base = os.path.realpath(path.parent)
    resolver = LocalResolver(base, rules)
    return _build(str(path), base, data, resolver, rules)


def _read_s3_csv(uri: str, client: Any, rules: Rules) -> Manifest:
    from i2v.s3 import S3_ERRORS, s3_error_code, s3_error_detail, split_s3_uri

    bucket, key = split_s3_uri(uri)
    try:
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except S3_ERRORS as exc:
        code = s3_error_code(exc)
        if code in ("NoSuchKey", "404"):
            raise ManifestError(f"manifest not found: {uri}") from None
        if code == "NoSuchBucket":
            raise ManifestError(
                f"manifest not found: {uri} (bucket {bucket!r} does not exist)"
            ) from None
        raise ManifestError(f"cannot read manifest {uri}: {s3_error_detail(exc, bucket)}") from exc
    folder = posixpath.dirname(key)
    base = f"s3://{bucket}/{folder}" if folder else f"s3://{bucket}"
    resolver = S3Resolver(bucket, folder, rules)
    return _build(uri, base, bytes(data), resolver, rules)


def _read_s3_prefix(uri: str, client: Any, rules: Rules) -> Manifest:
    from i2v.s3 import S3_ERRORS, s3_error_code, s3_error_detail, split_s3_uri

    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.strip("/")
    listed = f"{prefix}/" if prefix else ""  # a folder: "pics" must not match "pics2/"
    base = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    keys: list[str] = []
    tables: list[str] = []  # .parquet parts: the prefix is one table manifest
    others = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=listed):
            for obj in page.get("Contents", []):
                name = posixpath.basename(obj["Key"])
                # Dot files are not pictures even when named like one: macOS copies
                # leave "._photo.jpg" resource forks beside every photo.
                if name.lower().endswith(PICTURE_SUFFIXES) and not name.startswith("."):
                    keys.append(obj["Key"])
                elif formats.table_format(name) == "parquet" and not name.startswith((".", "_")):
                    tables.append(obj["Key"])
                elif name:
                    others += 1
    except S3_ERRORS as exc:
        if s3_error_code(exc) == "NoSuchBucket":
            raise ManifestError(
                f"manifest source {uri}: bucket {bucket!r} does not exist"
            ) from None
        raise ManifestError(f"cannot list {uri}: {s3_error_detail(exc, bucket)}") from exc
    if tables and keys:
        raise ManifestError(
            f"s3://{bucket}/{listed} holds both pictures and .parquet files; give the "
            "manifest's own prefix or file, or move the pictures to their own prefix"
        )
    if tables:
        return _read_s3_table(uri, client, bucket, sorted(tables), prefix, rules)
    if not keys:
        found = f" ({others} other objects found)" if others else ""
        if prefix.lower().endswith(PICTURE_SUFFIXES):
            found += "; an s3:// source is a .csv manifest or a folder of pictures"
        raise ManifestError(f"no .jpg/.jpeg/.png pictures under s3://{bucket}/{listed}{found}")
    keys.sort()

    duration, duration_error = parse_duration("", rules)
    prompt_error = check_prompt(rules.default_prompt, rules)
    scheme_error = None if "s3" in rules.allowed_schemes else scheme_refused("s3", rules)
    taken: set[str] = set()
    rows: list[ManifestRow] = []
    for n, key in enumerate(keys, start=1):
        location = f"s3://{bucket}/{key}"
        rows.append(
            ManifestRow(
                line=n,  # no CSV: the picture's position in key order
                id=_unique_stem(key, taken),
                image=location,
                image_location=None if scheme_error else location,
                prompt=rules.default_prompt,
                duration=duration,
                extras={},
                error=scheme_error or duration_error or prompt_error,
            )
        )
    return Manifest(source=uri, base=base, rows=rows, extra_columns=[])


def _unique_stem(key: str, taken: set[str]) -> str:
    stem = posixpath.splitext(posixpath.basename(key))[0]
    stem = re.sub(r"[\\\x00-\x1f\x7f]", "_", stem).strip()[: MAX_ID_CHARS - 8] or "image"
    candidate, n = stem, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem}-{n}"
    taken.add(candidate.lower())
    return candidate


# ------------------------------------------------------------------------------ parsing


def _parse(source: str, data: bytes) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line, fields) of the non-blank data rows; everything stays a string.

    The stdlib reader (not pandas) so duplicate column names and rows with too many
    fields are seen, not silently renamed or shifted.
    """
    text = formats.decode_csv(source, data)
    records: list[tuple[int, list[str]]] = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=formats.sniff_delimiter(text))
    try:
        for n, fields in enumerate(reader, start=1):
            records.append((n, fields))
    except csv.Error as exc:
        raise ManifestError(f"manifest {source} is not a valid CSV: {exc}") from None
    # Leading blank lines are skipped; numbering still counts them, as a spreadsheet does.
    while records and not any(f.strip() for f in records[0][1]):
        records.pop(0)
    if not records:
        raise ManifestError(f"manifest {source} is empty")
    header = [h.strip() for h in records[0][1]]
    rows = [(n, f) for n, f in records[1:] if any(v.strip() for v in f)]
    return header, rows


def _check_header(source: str, header: list[str], rows: list[tuple[int, list[str]]]) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if not name:
            # Spreadsheets export trailing empty columns; only refuse one that has values.
            if any(i <= len(f) and f[i - 1].strip() for _, f in rows):
                raise ManifestError(f"manifest {source}: column {i} has values but no name")
            continue
        if name in seen:
            raise ManifestError(
                f"manifest {source} has duplicate column name {name!r} "
                f"(columns {seen[name]} and {i})"
            )
        seen[name] = i


def _read_s3_table(
    uri: str, client: Any, bucket: str, keys: list[str], folder: str, rules: Rules
) -> Manifest:
    """Parquet or JSON Lines objects on S3, through the same row checks as a CSV."""
    base = f"s3://{bucket}/{folder}" if folder else f"s3://{bucket}"
    fmt = formats.table_format(keys[0]) or "parquet"
    with formats.s3_table(client, bucket, keys, fmt) as table:
        return _rows(uri, base, table, S3Resolver(bucket, folder, rules), rules)


def _build(source: str, base: str, data: bytes, resolver: Resolver, rules: Rules) -> Manifest:
    header, records = _parse(source, data)
    _check_header(source, header, records)
    return _rows(source, base, formats.Table(header, records), resolver, rules)


def _rows(
    source: str, base: str, table: formats.Table, resolver: Resolver, rules: Rules
) -> Manifest:
    """Every row checked; Parquet and JSON Lines tables take this path as a CSV does."""
    header, records = table.header, table.records
    _check_header(source, header, [])  # a Parquet file may repeat a column name too
    names = [h for h in header if h]
    if rules.spec.needs_image and "image" not in names:
        found = ", ".join(repr(h) for h in names) or "none"
        hint = ""
        if any(h.lower() == "image" for h in names):
            hint = " (column names are case-sensitive: name it 'image')"
        raise ManifestError(f"manifest {source} has no 'image' column; found: {found}{hint}")

    index = {name: i for i, name in enumerate(header) if name}
    extra_columns = [h for h in header if h and h not in KNOWN_COLUMNS]
    first_line_of: dict[str, int] = {}
    rows: list[ManifestRow] = []
    for line, fields in records:
        width_error = None
        if len(fields) > len(header):
            width_error = (
                f"row has {len(fields)} values but the header has {len(header)} columns; "
                "quote values that contain commas"
            )
        # Short rows are padded: spreadsheets drop trailing empty cells.
        fields = fields + [""] * (len(header) - len(fields))

        def cell(name: str, fields: list[str] = fields) -> str:
            return fields[index[name]] if name in index else ""

        row_id = cell("id").strip() or None
        image = cell("image").strip()
        prompt = cell("prompt").strip() or rules.default_prompt
        own_model = (cell("model").strip() or rules.catalog_model) not in ("", rules.spec.name)
        duration, duration_error = (
            (None, None) if own_model else parse_duration(cell("duration"), rules)
        )
        id_error = check_id(row_id, line, first_line_of)
        location, image_error = resolver.resolve(image) if image else (None, None)
        if not image and rules.spec.needs_image:
            image_error = "image is empty"
        end = cell("end_image").strip()
        end_location, end_error = resolver.resolve(end) if end else (None, None)
        end_error = end_error and f"end_image: {end_error}"
        prompt_error = None if own_model else check_prompt(prompt, rules)
        first = table.unreadable.get(line) or width_error or id_error or image_error
        error = first or end_error or duration_error or prompt_error
        rows.append(
            ManifestRow(
                line=line,
                id=row_id,
                image=cell("image"),
                image_location=None if error else location,
                prompt=prompt,
                duration=duration,
                extras={name: cell(name) for name in extra_columns},
                error=error,
                duration_text=cell("duration"),
                end_image_location=None if error else end_location,
            )
        )
    if not rows:
        raise ManifestError(f"manifest {source} has a header but no data rows")
    kept = {c: t for c, t in table.types.items() if c in extra_columns and t != "string"}
    return Manifest(source, base, rows, extra_columns, extra_types=kept)


def read_manifest_for(source: str, options: BatchOptions, s3_client: Any = None) -> Manifest:
    """`read_manifest` with a run's options (model, default prompt and duration, where
    local pictures may live): what the CLI's pre-check and the flow both read."""
    return read_manifest(
        source,
        spec=get_model(str(options.model)),
        default_prompt=options.prompt,
        default_duration=options.duration,
        allow_outside_base=options.allow_outside_base,
        s3_client=s3_client,
        catalog_model=options.catalog_model,
    )
