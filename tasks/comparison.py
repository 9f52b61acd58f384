"""The bake-off's comparison sheet (`i2v.bakeoff`): rows x models, one frame of each
video with its price and QC verdict, saved to DEST/runs/<run-id>/ and linked as an
artifact of the run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from i2v.bakeoff import COMPARISON_SHEET_NAME, Cell, comparison_sheet
from i2v.row_models import bake_off_id
from i2v.storage import Storage
from tasks.artifacts import publish_sheet

COMPARISON_KEY = "comparison-sheet"


def cells_of(frame: Any, models: Sequence[str]) -> tuple[list[str], dict[tuple[str, str], Cell]]:
    """The bake-off's row ids (manifest order) and each (row, model) cell of the table."""
    by_id = {str(r["id"]): r for r in frame.to_dict("records")}
    bases: list[str] = []
    cells: dict[tuple[str, str], Cell] = {}
    for row_id in by_id:
        base = row_id.rpartition("--")[0]
        for model in models:
            row = by_id.get(bake_off_id(base, model)) if base else None
            if row is None:
                continue
            if base not in bases:
                bases.append(base)
            landed = row["status"] == "landed"
            cost = row.get("cost_usd")
            cells[(base, model)] = Cell(
                video_key=f"videos/{row['id']}.mp4" if landed else None,
                price_usd=float(cost) if landed and cost == cost and cost is not None else None,
                verdict=str(row.get("qc") or "ok") if landed else str(row["status"]),
            )
    return bases, cells


async def publish_comparison(
    storage: Storage, frame: Any, models: Sequence[str], run_id: str, *, link_hours: float
) -> str:
    """Save the sheet and link it; markdown for the run's summary ("" when none)."""
    if not models:
        return ""

    def make() -> Any:
        bases, cells = cells_of(frame, models)
        return comparison_sheet(storage, bases, models, cells)

    return await publish_sheet(
        storage,
        make,
        run_id,
        name=COMPARISON_SHEET_NAME,
        title="Comparison sheet",
        key=COMPARISON_KEY,
        description="Rows x models, with price and QC verdict",
        link_hours=link_hours,
    )
