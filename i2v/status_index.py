"""The index `i2v status` reads an S3 DEST with: record key -> (ETag, record JSON).

Listing `_state/` gives every record's ETag. `_status/state-index.jsonl.gz` keeps, for
the keys it knows, an ETag and the record JSON that ETag stands for; a record is taken
from it only when the listing shows that same ETag. So the index is only a cache: a
stale, lost, broken or raced index costs GETs, never a wrong answer. Batch runs refresh
it with the records they read or wrote (`refresh_index`, after their results table), so
the first status after a run reads almost nothing; `i2v status` rewrites it with the
records it had to read.

Format: gzip of lines, first `{"format":2}`, then one JSON array per record,
`["<key>","<etag>",<record>]`, the record compact (one line). A line-per-record format
lets a run merge its records into the index one line at a time, never holding the whole
index as parsed JSON (a parsed record is ~5.7 KB of Python objects, its JSON ~1.3 KB).
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeGuard

from i2v.dest import is_s3
from i2v.errors import StorageError
from i2v.storage import Storage

if TYPE_CHECKING:
    from i2v.s3_storage import S3Storage

INDEX_KEY = "_status/state-index.jsonl.gz"
_HEADER = b'{"format":2}\n'
_CAS_ATTEMPTS = 4
_DECODER = json.JSONDecoder()

Entry = tuple[str, str, bytes]  # (record key under DEST, its ETag, the record's JSON)


def indexed(storage: Storage) -> TypeGuard[S3Storage]:
    """Whether `i2v status` keeps an index for `storage`: S3 only. A listing there carries
    every record's ETag; a folder reads its small files faster than an index would, and
    its versions are content hashes the listing does not give."""
    return is_s3(storage)


def etag(version: str) -> str:
    """An ETag as the index compares it: S3-compatible stores differ in whether a
    listing or a PUT's answer quotes it (and some mark it weak)."""
    return version.strip().removeprefix("W/").strip('"')


def load_index(storage: Storage) -> tuple[dict[str, tuple[str, bytes]], str | None]:
    """The index (key -> (ETag, record JSON)) and the index object's own version, for
    `save_index`; empty when there is none or it does not read."""
    raw, version = _read(storage)
    return {key: (tag, record) for key, tag, record in _entries(raw)}, version


def save_index(storage: Storage, entries: Iterable[Entry], version: str | None) -> bool:
    """Write the index, only over the index at `version` (None: only if there is none);
    False when another writer got there first. StorageError when DEST refuses it."""
    data = _encode(entries)
    new = storage.replace_if(INDEX_KEY, data, version, content_type="application/gzip")
    return new is not None


def refresh_index(storage: Storage, entries: Mapping[str, tuple[str, bytes]]) -> int:
    """Merge a run's records (key -> (ETag, record JSON)) into the index: the run's
    entries win over older ones for the same key, the others are kept. Returns how
    many entries the run gave (0 where no index is kept).

    A compare-and-swap on the index object, retried a few times, keeps two runs
    refreshing at once (a fan-out's shards) from dropping each other's entries; should
    it still lose, the index stays as the other writer left it, which costs the next
    status GETs, never a wrong answer (every entry is checked against the listing).
    StorageError when DEST cannot be read or written.
    """
    if not indexed(storage) or not entries:
        return 0
    for _ in range(_CAS_ATTEMPTS):
        raw, version = _read(storage)
        older = (e for e in _entries(raw) if e[0] not in entries)
        ours = ((key, tag, record) for key, (tag, record) in entries.items())
        if save_index(storage, itertools.chain(older, ours), version):
            break
    return len(entries)


def _read(storage: Storage) -> tuple[bytes | None, str | None]:
    try:
        return storage.read_versioned(INDEX_KEY)
    except StorageError:
        return None, None  # a cache: unreadable means read the records themselves


def _entries(raw: bytes | None) -> Iterator[Entry]:
    """The entries of an index, up to the first thing that does not parse (a cache: a
    broken tail only means those records are read from DEST)."""
    if not raw:
        return
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as lines:
            if lines.readline() != _HEADER:
                return
            for line in lines:
                # Key and ETag are ASCII (json.dumps escapes the rest): latin-1 decodes
                # them byte for byte, so their end is the record's offset in `line`.
                text = line.decode("latin-1")
                key, end = _DECODER.raw_decode(text, 1)
                tag, end = _DECODER.raw_decode(text, end + 1)
                if not (isinstance(key, str) and isinstance(tag, str)):
                    return
                if text[0] != "[" or text[end] != "," or not line.endswith(b"]\n"):
                    return
                yield key, tag, line[end + 1 : -2]
    except (OSError, EOFError, ValueError, IndexError):
        return


def _encode(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as out:
        out.write(_HEADER)
        for key, tag, record in entries:
            if b"\n" in record:  # not one line: left out, read from DEST instead
                continue
            out.write(b"[%s,%s,%s]\n" % (_ascii(key), _ascii(etag(tag)), record))
    return buf.getvalue()


def _ascii(text: str) -> bytes:
    return json.dumps(text).encode("ascii")
