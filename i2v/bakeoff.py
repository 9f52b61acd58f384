"""Bake-off: every row through each of several models, side by side.

Ids are `<id>--<model short name>` in one table (`i2v.row_models.bake_off_id`); the
comparison sheet is rows x models, one frame of each video with its price and QC
verdict, written to DEST/runs/<run-id>/comparison_sheet.png. Pure planning and image
work: each (row, model) pair is its own paid input, so never-pay-twice holds per model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from i2v.concurrency import parallel_map
from i2v.row_models import bake_off_id, short_name
from i2v.sheet import THUMB_WIDTH, _grid, _tile, sheet_key
from i2v.storage import Storage

if TYPE_CHECKING:
    from PIL import Image as PILImage

COMPARISON_SHEET_NAME = "comparison_sheet.png"


def parse_models(text: str) -> list[str]:
    """`--models a,b,c` (or the form field) as a list without blanks or repeats."""
    return list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))


def expand(row_ids: Sequence[str], models: Sequence[str]) -> list[tuple[str, str, str]]:
    """(bake-off id, row id, model) for every row x model, row by row."""
    return [(bake_off_id(r, m), r, m) for r in row_ids for m in models]


@dataclass(frozen=True)
class Cell:
    """One (row, model) result on the sheet."""

    video_key: str | None  # None: the row did not land for this model
    price_usd: float | None
    verdict: str  # the QC verdict, or the row's status when it did not land


def per_model_totals(
    planned: Sequence[tuple[str, bool, float | None]],
) -> dict[str, tuple[int, int, float]]:
    """For the dry run: model -> (rows, new inputs, dollars of the new ones), from
    (model, is a new input, price) per row."""
    totals: dict[str, tuple[int, int, float]] = {}
    for model, new, price in planned:
        rows, fresh, usd = totals.get(model, (0, 0, 0.0))
        totals[model] = (rows + 1, fresh + int(new), usd + ((price or 0.0) if new else 0.0))
    return totals


def comparison_sheet(
    storage: Storage,
    row_ids: Sequence[str],
    models: Sequence[str],
    cells: Mapping[tuple[str, str], Cell],
    *,
    thumb_width: int = THUMB_WIDTH,
    workers: int = 4,
) -> PILImage.Image | None:
    """Rows x models: a frame of each landed video labelled with price and verdict."""
    if not row_ids or not models:
        return None
    order = [(r, m) for r in row_ids for m in models]
    found = [cells.get(k) for k in order]

    def tile(cell: Cell | None) -> PILImage.Image | None:
        if cell is None or cell.video_key is None:
            return None
        return _tile(storage, cell.video_key, thumb_width, None)

    tiles = parallel_map(tile, found, workers)
    labels = []
    for (row_id, model), cell in zip(order, found, strict=True):
        price = f"${cell.price_usd:.2f}" if cell and cell.price_usd is not None else "-"
        verdict = cell.verdict if cell else "not run"
        labels.append(f"{row_id} {short_name(model)} {price} {verdict}")
    return _grid(tiles, labels, thumb_width=thumb_width, columns=len(models))


def comparison_key(run_id: str) -> str:
    return sheet_key(run_id, COMPARISON_SHEET_NAME)
