"""Manifests as teams keep them: Parquet and JSON Lines tables, and the CSV dialects
found in the wild (a `;` or tab delimiter, a non-UTF-8 encoding).

Every format is turned into what `i2v.manifest` checks a CSV as: a header and
(row number, cells as text) records, so the same columns, rules and messages apply.
A typed column's type is kept beside it (`Table.types`) so the results table gives it
back typed (an integer stays an integer, a boolean a boolean).

- Parquet is read one row group batch at a time (`BATCH_ROWS`), locally or from S3
  (downloaded in chunks to a temp file first): memory stays bounded at any size.
  An `s3://` prefix of `.parquet` files is one manifest, files in key order.
- JSON Lines (`.jsonl`, `.ndjson`) is read line by line, twice: once for the columns
  (every key any line has, in first-seen order) and their types, once for the rows.
- The row number (the results' `line`) is the data row's number: 1 for the first
  row of a Parquet manifest (counting on across the files of a prefix), the file's
  line number for JSON Lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from i2v.errors import ManifestError

log = logging.getLogger("i2v.manifest")

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
BATCH_ROWS = 4096
DOWNLOAD_CHUNK = 8 << 20
# Results dtypes of typed manifest columns (pandas nullable types: an empty cell is NA).
INT, BOOL, FLOAT = "Int64", "boolean", "Float64"


def table_format(name: str) -> str | None:
    """ "parquet", "jsonl", or None (a CSV) for a manifest file name."""
    low = name.lower()
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return None


@dataclass
class Table:
    """A manifest's header and records, whatever its format."""

    header: list[str]
    records: Iterable[tuple[int, list[str]]]
    types: dict[str, str] = field(default_factory=dict)  # column -> results dtype
    # Row number -> why that row could not be read (filled as the records are read):
    # the row is rejected with it and the others go on, as a CSV row's errors do.
    unreadable: dict[int, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------ cells


def cell_text(value: Any) -> str:
    """A typed value as the text a CSV would hold, so one set of rules reads both.

    Booleans are "true"/"false", whole floats lose their ".0" (a duration of 5.0 is 5),
    lists are "|"-joined (how an array model input is written in a CSV), mappings JSON.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "|".join(cell_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    return "string"


def _merge_kind(old: str | None, new: str) -> str:
    if old is None or old == new:
        return new
    if {old, new} == {INT, FLOAT}:
        return FLOAT
    return "string"


def typed_column(values: Any, dtype: str) -> Any:
    """The results column of a typed manifest column, from its cell texts (pandas)."""
    import pandas as pd

    series = pd.Series(values, dtype="string").str.strip()
    series = series.mask(series == "")
    if dtype == BOOL:  # "True" too: a typed table's column once cast to text
        return (
            series.str.lower()
            .map({"true": True, "false": False}, na_action="ignore")
            .astype("boolean")
        )
    if dtype == INT:
        return pd.to_numeric(series, errors="coerce").astype("Int64")
    if dtype == FLOAT:
        return pd.to_numeric(series, errors="coerce").astype("Float64")
    return series


# ------------------------------------------------------------------------------ CSV


def decode_csv(source: str, data: bytes) -> str:
    """A CSV's text: UTF-8 (with or without Excel's BOM), UTF-16 with a BOM, else
    Windows-1252 / Latin-1 with a warning; a binary file is refused by name."""
    head = data[:8192]
    if head.startswith(b"PK\x03\x04"):
        raise ManifestError(
            f"manifest {source} is not a CSV (it looks like an Excel workbook or a zip); "
            "export it as 'CSV UTF-8'"
        )
    if head.startswith(b"PAR1"):
        raise ManifestError(
            f"manifest {source} is a Parquet file without a .parquet name; rename it *.parquet"
        )
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel's "Unicode text" export
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise ManifestError(f"manifest {source} is not valid UTF-16 text") from None
    if b"\x00" in head:
        raise ManifestError(f"manifest {source} is not a CSV: it contains binary data")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
    for encoding in ("cp1252", "latin-1"):
        with contextlib.suppress(UnicodeDecodeError):
            text = data.decode(encoding)
            log.warning(
                "manifest %s is not UTF-8 (%s): read it as %s; if a prompt looks wrong, "
                "save the file as 'CSV UTF-8'",
                source,
                where,
                encoding,
            )
            return text
    raise ManifestError(f"manifest {source} is not UTF-8 text ({where}); save it as 'CSV UTF-8'")


def sniff_delimiter(text: str) -> str:
    """ "," unless the header line has no comma but a ';' or a tab (European Excel
    exports ';', "Unicode text" exports tabs)."""
    for line in text.splitlines():
        if line.strip():
            if "," in line:
                return ","
            counts = {d: line.count(d) for d in (";", "\t")}
            best = max(counts, key=lambda d: counts[d])
            return best if counts[best] else ","
    return ","


# ------------------------------------------------------------------------------ Parquet


def _arrow_kind(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return BOOL
    if pa.types.is_integer(arrow_type):
        return INT
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return FLOAT
    return "string"


def _open_parquet(source: str, path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {source}") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a bad file
        raise ManifestError(f"manifest {source} is not a readable Parquet file: {exc}") from None


def parquet_table(files: list[tuple[str, Path]]) -> Table:
    """One table of the Parquet files (name shown in messages, local path), in order.

    Every file must have the same columns (in any order); rows are numbered on across
    files. Rows are read a batch at a time, when the records are iterated.
    """
    opened = [(name, _open_parquet(name, path)) for name, path in files]
    first_name, first = opened[0]
    schema = first.schema_arrow
    header = [str(n) for n in schema.names]
    for name, pf in opened[1:]:
        if sorted(pf.schema_arrow.names) != sorted(header):
            raise ManifestError(
                f"manifest part {name} has columns {pf.schema_arrow.names}, but "
                f"{first_name} has {header}; every .parquet file of a prefix needs the same"
            )
    types = {n: _arrow_kind(schema.field(i).type) for i, n in enumerate(header)}

    def records() -> Iterator[tuple[int, list[str]]]:
        n = 0
        for name, pf in opened:
            try:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=header):
                    columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
                    for values in zip(*columns, strict=True):
                        n += 1
                        yield n, [cell_text(v) for v in values]
            except Exception as exc:
                raise ManifestError(f"cannot read manifest {name}: {exc}") from None

    return Table(header=header, records=records(), types=types)


# ------------------------------------------------------------------------------ JSON Lines


def jsonl_table(source: str, open_lines: Callable[[], Iterable[bytes]]) -> Table:
    """A JSON Lines manifest; `open_lines` gives the file's lines each time it is called.
    A line that is not a JSON object becomes a rejected row (`Table.unreadable`); a file
    with no object at all is refused."""
    header: list[str] = []
    seen: set[str] = set()
    kinds: dict[str, str | None] = {}
    rows = 0
    first_problem = None
    for _n, obj, problem in _objects(open_lines()):
        if obj is None:
            first_problem = first_problem or problem
            continue
        rows += 1
        for key, value in obj.items():
            if key not in seen:
                seen.add(key)
                header.append(key)
                kinds[key] = None
            if value is not None:
                kinds[key] = _merge_kind(kinds[key], _kind(value))
    if not rows:
        raise ManifestError(f"manifest {source} {first_problem or 'is empty'}")
    unreadable: dict[int, str] = {}

    def records() -> Iterator[tuple[int, list[str]]]:
        for n, obj, problem in _objects(open_lines()):
            if obj is None:
                unreadable[n] = f"manifest {problem}"
                yield n, []
            else:
                yield n, [cell_text(obj.get(key)) for key in header]

    types = {k: v or "string" for k, v in kinds.items()}
    return Table(header=header, records=records(), types=types, unreadable=unreadable)


def _objects(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, the line's object or None, why it is None) for each non-blank line."""
    for n, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8-sig" if n == 1 else "utf-8", errors="strict").strip()
        except UnicodeDecodeError as exc:
            yield n, None, f"line {n} is not UTF-8: {exc}"
            continue
        if not text:
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            yield n, None, f"line {n} is not valid JSON: {exc}"
            continue
        if not isinstance(obj, dict):
            yield (
                n,
                None,
                (
                    f"line {n} is a JSON {type(obj).__name__}, not an object with columns "
                    '(one {"image": ..., "prompt": ...} per line)'
                ),
            )
            continue
        yield n, {str(k).strip(): v for k, v in obj.items()}, None


def local_lines(path: Path) -> Callable[[], Iterable[bytes]]:
    def lines() -> Iterator[bytes]:
        with path.open("rb") as f:
            yield from f

    return lines


# ------------------------------------------------------------------------------ sources


@contextlib.contextmanager
def local_table(source: str, path: Path, fmt: str) -> Iterator[Table]:
    """The table of a local Parquet or JSON Lines manifest."""
    if path.is_dir():
        raise ManifestError(f"manifest {path} is a folder; give the file inside it")
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        yield (
            parquet_table([(source, path)])
            if fmt == "parquet"
            else jsonl_table(source, local_lines(path))
        )
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {source} is not UTF-8 text: {exc}") from None


@contextlib.contextmanager
def s3_table(client: Any, bucket: str, keys: list[str], fmt: str) -> Iterator[Table]:
    """The table of Parquet or JSON Lines objects on S3: each downloaded in chunks to a
    temp file (deleted after), then read as a local one."""
    folder = tempfile.mkdtemp(prefix="i2v-manifest-")
    try:
        files = []
        for i, key in enumerate(keys):
            local = Path(folder) / f"{i}{Path(key).suffix}"
            _download(client, bucket, key, local)
            files.append((f"s3://{bucket}/{key}", local))
        try:
            if fmt == "parquet":
                yield parquet_table(files)
            else:
                yield jsonl_table(files[0][0], local_lines(files[0][1]))
        except UnicodeDecodeError as exc:
            raise ManifestError(f"manifest {files[0][0]} is not UTF-8 text: {exc}") from None
    finally:
        for p in Path(folder).iterdir():
            p.unlink(missing_ok=True)
        os.rmdir(folder)


def _download(client: Any, bucket: str, key: str, local: Path) -> None:
    from i2v.s3 import S3_ERRORS, S3_MISSING_CODES, s3_error_code, s3_error_detail

    uri = f"s3://{bucket}/{key}"
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        with local.open("wb") as sink:
            for chunk in body.iter_chunks(DOWNLOAD_CHUNK):
                sink.write(chunk)
    except S3_ERRORS as exc:
        code = s3_error_code(exc)
        if code in S3_MISSING_CODES or code == "NoSuchBucket":
            raise ManifestError(f"manifest not found: {uri}") from None
        raise ManifestError(f"cannot read manifest {uri}: {s3_error_detail(exc, bucket)}") from exc
