"""The Python entry point for a data team's own flows: a DataFrame of rows in, the
results table back as a DataFrame.

`run_table` is a plain async function, not a flow: the rows are never a flow
parameter (Prefect records parameters, and 100,000 rows do not belong there). It writes
them to DEST/runs/table-<time>-<id>/manifest.parquet and runs the batch flow on that
path: a subflow of the caller's flow (or a flow run of its own outside one).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from flows.batch import i2v_batch
from flows.clients import s3_client_for
from i2v._constants import SCHEME
from i2v.config import BatchOptions, load_options
from i2v.dest import open_storage
from i2v.errors import ConfigError, ManifestError
from i2v.storage import Storage

if TYPE_CHECKING:
    import pandas as pd

PICTURE_COLUMNS = ("image", "end_image")


async def run_table(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    dest: str,
    options: BatchOptions | None = None,
    *,
    pictures: str | Path | None = None,
) -> pd.DataFrame:
    """Run the batch on `rows` into `dest`; return this run's results table.

    Args:
        rows: One row per video, the manifest's columns (`image`, `prompt`, and
            optionally `id`, `duration`, `model`, `end_image`, model inputs, your own
            columns, which come back in the results, typed).
        dest: A folder or `s3://bucket/prefix`.
        options: As `i2v run --config` takes them (default: `load_options()`).
        pictures: Where relative `image` / `end_image` paths are: a folder or an
            `s3://` prefix (default: the current directory). With an s3:// DEST,
            pictures must be on S3 or https://.

    Returns:
        The results table of these rows (DEST/runs/RUN_ID/results.parquet), in their
        order, with `image` as you gave it. The run's failures are rows with their
        status and error; a run stopped before its table raises as `i2v_batch` does.
    """
    import pandas as pd

    opts = options or load_options()
    if opts.dry_run:
        raise ConfigError("run_table runs the batch; for an estimate use `i2v run --dry-run`")
    if isinstance(rows, pd.DataFrame):
        frame = rows.reset_index(drop=True).copy()
    else:
        frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise ManifestError("run_table got no rows")
    given = frame["image"].astype("string") if "image" in frame.columns else None
    s3_dest = dest.strip().lower().startswith("s3://")
    local = False
    for column in PICTURE_COLUMNS:
        if column in frame.columns:
            placed = [_place(v, pictures) for v in frame[column]]
            local |= any(v and not SCHEME.match(v) for v in placed)
            frame[column] = placed
    if local and s3_dest:
        raise ConfigError(
            "run_table with an s3:// DEST takes pictures on S3 or https://: pass "
            "pictures='s3://bucket/prefix' or s3:// / https:// image locations"
        )
    if local:
        # The manifest sits in DEST/runs/..., so local pictures are outside its folder
        # by design; a deployment's worker still decides (I2V_ALLOW_OUTSIDE_BASE).
        opts = opts.model_copy(update={"allow_outside_base": True})
    storage = open_storage(dest, s3_client=s3_client_for(opts) if s3_dest else None)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    key = f"runs/table-{stamp}-{uuid4().hex[:8]}/manifest.parquet"
    await asyncio.to_thread(_write_manifest, storage, key, frame)
    summary = await i2v_batch(storage.key_uri(key), dest, opts)
    data = await asyncio.to_thread(storage.read_bytes, f"runs/{summary.run_id}/results.parquet")
    if data is None:
        raise ManifestError(f"run {summary.run_id} wrote no results table in {dest}")
    import io

    results = pd.read_parquet(io.BytesIO(data))
    if given is not None and len(results) == len(given):
        results["image"] = given.to_numpy()
    return results


def _place(value: Any, pictures: str | Path | None) -> str:
    """A picture cell as a location the manifest in DEST/runs/ reaches."""
    if value is None or (isinstance(value, float) and value != value):  # NaN
        return ""
    text = str(value).strip()
    if not text or SCHEME.match(text) or os.path.isabs(text):
        return text
    base = str(pictures) if pictures is not None else os.getcwd()
    if base.lower().startswith(("s3://", "https://", "http://")):
        return f"{base.rstrip('/')}/{text}"
    return os.path.abspath(os.path.join(os.path.expanduser(base), text))


def _write_manifest(storage: Storage, key: str, frame: pd.DataFrame) -> None:
    staged = Path(tempfile.mkdtemp(prefix="i2v-table-", dir=storage.staging_dir()))
    try:
        path = staged / "manifest.parquet"
        frame.to_parquet(path, index=False)
        storage.put_file(key, path, content_type="application/vnd.apache.parquet")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
