"""What a run tells the rest of the platform: one Prefect event when it ends, and the
lineage of what it made (Prefect assets).

The event (`announced` wraps the batch flow's and the fan-out's run; a fan-out's shards
emit none, so a fan-out is one event):

- `i2v.run.completed`: every row landed;
- `i2v.run.incomplete`: the run ended with a table, but some rows did not land;
- `i2v.run.failed`: the run raised before (or instead of) its result.

Its resource is `i2v.dest.<DEST URI>` (automations match on it), its payload the DEST,
the manifest, the run id, the row counts by status, the spend, the QC flags and the
results URI; the flow run is its related resource. A dry run emits nothing.

Lineage: a run that landed videos materializes two assets, the results table and the
videos prefix, with the manifest as their upstream (`prefect.assets.materialize`).
The open-source server records them as `prefect.asset.*` events (its Events page shows
them); its UI has no asset or lineage page (that is Prefect Cloud's).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from prefect.assets import Asset, materialize
from prefect.events import emit_event
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from i2v.results import RunSummary
from i2v.run import RowStatus

S = TypeVar("S", bound=RunSummary)
EVENT_PREFIX = "i2v.run."
MAX_QC_LISTED = 50  # an event is small; the results table lists every flag


def dest_resource(dest: str) -> str:
    """The event resource id of a DEST URI (what an automation's `match` names)."""
    return f"i2v.dest.{dest}"


def dest_uri(dest: str) -> str:
    """DEST as a run names it (`Storage.uri`), without opening it: an absolute folder
    or s3://bucket/prefix with no trailing slash."""
    text = dest.strip()
    if text[:5].lower() == "s3://":
        return "s3://" + text[5:].strip("/")
    return str(Path(text).expanduser().absolute())


async def announced(run: Awaitable[S], source: str, dest: str) -> S:
    """Await the run; emit its one event (and its assets), then return or raise as it did."""
    try:
        summary = await run
    except BaseException as exc:
        uri = dest_uri(dest)
        _emit("failed", uri, {"dest": uri, "source": source, "error": _error_text(exc)})
        raise
    if summary.dry_run:
        return summary
    landed = summary.counts.get(str(RowStatus.LANDED), 0)
    _emit("completed" if summary.all_landed else "incomplete", summary.dest, payload(summary))
    if landed and summary.results_uri:
        try:
            await _lineage(summary)
        except Exception as exc:  # lineage is a view on the run, never its outcome
            get_run_logger().warning("could not record the run's assets: %s", exc)
    return summary


def payload(summary: RunSummary) -> dict[str, Any]:
    """The event's payload: what a downstream flow or an alert needs, no row data."""
    return {
        "dest": summary.dest,
        "source": summary.source,
        "run_id": summary.run_id,
        "rows": summary.rows,
        "counts": {k: v for k, v in summary.counts.items() if v},
        "landed": summary.counts.get(str(RowStatus.LANDED), 0),
        "not_landed": summary.rows - summary.counts.get(str(RowStatus.LANDED), 0),
        "spent_usd": summary.spent_usd,
        "charged_usd": summary.charged_usd,
        "simulated": summary.simulated,
        "qc_flagged_count": len(summary.qc_flagged),
        "qc_flagged": [{"id": i, "qc": q} for i, q in summary.qc_flagged[:MAX_QC_LISTED]],
        "results_uri": summary.results_uri,
        "stop_reason": summary.stop_reason,
        "top_errors": [{"error": e, "rows": n} for e, n in summary.top_errors],
    }


def _emit(outcome: str, dest: str, data: dict[str, Any]) -> None:
    related = []
    run_id = flow_run.get_id()
    if run_id:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{run_id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": str(flow_run.get_name() or run_id),
            }
        )
    emit_event(
        event=f"{EVENT_PREFIX}{outcome}",
        resource={"prefect.resource.id": dest_resource(dest), "prefect.resource.name": dest},
        related=related,
        payload=data,
    )


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def asset_key(uri: str) -> str:
    """An asset key (a URI) for a DEST or manifest location: a local path as file://."""
    if "://" in uri:
        return uri
    return "file://" + quote(os.path.abspath(uri).replace(os.sep, "/"), safe="/:")


async def _lineage(summary: RunSummary) -> None:
    assert summary.results_uri is not None
    results = Asset(key=asset_key(summary.results_uri))
    dest = summary.dest.rstrip("/")
    videos = Asset(key=asset_key(f"{dest}/videos/" if "://" in dest else str(Path(dest, "videos"))))
    upstream = asset_key(summary.source)
    landed = summary.counts.get(str(RowStatus.LANDED), 0)

    @materialize(results, videos, asset_deps=[upstream], by="i2v", name="i2v-assets")
    def record() -> None:
        meta = {"run_id": summary.run_id, "rows": summary.rows, "landed": landed}
        results.add_metadata(meta)
        videos.add_metadata(meta)

    record()
