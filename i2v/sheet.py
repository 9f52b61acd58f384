"""The contact sheet: one frame of each landed video in a grid, DEST/runs/RUN_ID/
contact_sheet.png.

Frames are taken while each video is still the local staged file of its landing
(`SheetFrames`, the first MAX_SHEET_VIDEOS rows in manifest order), so making the sheet
at the end of a run reads nothing back from DEST; videos landed by earlier runs (or a
fan-out's shards) are read from DEST as before. Pure image work: the Prefect artifacts
that show the sheet are in `tasks.artifacts`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from i2v.concurrency import parallel_map
from i2v.dest import is_s3
from i2v.local_storage import LocalStorage
from i2v.storage import Storage

if TYPE_CHECKING:
    from PIL import Image as PILImage

log = logging.getLogger("i2v.sheet")

CONTACT_SHEET_NAME = "contact_sheet.png"
# About one second into the video: past a possible black first frame, and it shows
# the motion the prompt asked for. Shorter videos give their last frame.
FRAME_INDEX = 24
MAX_SHEET_VIDEOS = 100  # beyond this a grid stops being readable (and costs downloads)
THUMB_WIDTH = 240
# The sheet embedded in a folder DEST's summary: a palette PNG shrunk until its data:
# URI is this small (the artifact is stored in Prefect's database and sent to every
# browser that opens the run).
EMBED_MAX_BYTES = 300_000
EMBED_MAX_WIDTH = 960
PALETTE_PNG_BYTES_PER_PX = 0.35


class SheetFrames:
    """Contact-sheet tiles taken during landing, at most `limit`, the earliest rows kept.

    Rows land in about manifest order, so the tiles kept are nearly always the ones
    the sheet shows; a tile missing at the end is read from DEST. Thread-safe (frames
    are taken in worker threads).
    """

    def __init__(self, limit: int = MAX_SHEET_VIDEOS, width: int = THUMB_WIDTH) -> None:
        self.limit, self.width = limit, width
        self._tiles: dict[str, tuple[int, PILImage.Image]] = {}
        self._lock = threading.Lock()

    def wanted(self, order: int) -> bool:
        with self._lock:
            return len(self._tiles) < self.limit or order < max(o for o, _ in self._tiles.values())

    def take(self, keys: Sequence[str], path: Path, order: int) -> None:
        """Keep the frame of the local video `path` for `keys` (a video and its copies)."""
        if not keys or not self.wanted(order):
            return
        from i2v.media import video_frame

        try:
            frame = video_frame(path, index=FRAME_INDEX, width=self.width)
        except Exception as exc:  # the sheet reads it from DEST later, or shows grey
            log.debug("no sheet frame from %s: %s", path, exc)
            return
        with self._lock:
            for key in keys:
                self._tiles[key] = (order, frame)
            while len(self._tiles) > self.limit:
                del self._tiles[max(self._tiles, key=lambda k: self._tiles[k][0])]

    def get(self, key: str) -> PILImage.Image | None:
        with self._lock:
            tile = self._tiles.get(key)
        return tile[1] if tile else None

    def __len__(self) -> int:
        return len(self._tiles)


def sheet_image(
    storage: Storage,
    video_keys: Sequence[str],
    *,
    thumb_width: int = THUMB_WIDTH,
    columns: int = 4,
    max_videos: int = MAX_SHEET_VIDEOS,
    workers: int = 4,
    frames: SheetFrames | None = None,
) -> PILImage.Image | None:
    """Grid one frame of each video: the contact sheet, not yet written.

    Args:
        storage: DEST.
        video_keys: Keys of landed videos ("videos/<id>.mp4"), in table order; each
            tile is labelled with the file's stem (the row id).
        thumb_width: Tile width in px (heights follow each video's aspect).
        columns: Tiles per row.
        max_videos: Only the first this many videos are shown (the sheet says so).
        workers: Videos fetched and decoded in parallel.
        frames: Tiles taken while landing (`SheetFrames`, same width): not read
            from DEST.

    Returns:
        The sheet, or None when there are no videos. A video that cannot be read
        becomes a grey tile, never an error.
    """
    keys = list(dict.fromkeys(video_keys))  # duplicate rows share nothing on the sheet
    if not keys:
        return None
    shown = keys[:max_videos]
    tiles = parallel_map(lambda k: _tile(storage, k, thumb_width, frames), shown, workers)
    labels = [Path(k).stem for k in shown]
    if len(keys) > len(shown):
        labels[-1] += f"  (+{len(keys) - len(shown)} more)"
    return _grid(tiles, labels, thumb_width=thumb_width, columns=columns)


def sheet_key(run_id: str, name: str = CONTACT_SHEET_NAME) -> str:
    return f"runs/{run_id}/{name}"


def save_sheet(
    storage: Storage, sheet: PILImage.Image, run_id: str, *, name: str = CONTACT_SHEET_NAME
) -> str:
    """Write `sheet` to DEST/runs/RUN_ID/<name> (the contact sheet); returns its key."""
    staging = Path(tempfile.mkdtemp(prefix="i2v-sheet-"))
    try:
        png = staging / name
        # A 100-tile sheet is ~6 MP: `optimize` spends seconds of a run's end for 10%.
        sheet.save(png, format="PNG", compress_level=1)
        key = sheet_key(run_id, name)
        storage.put_file(key, png, content_type="image/png")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return key


def embedded_png(image: PILImage.Image, *, max_bytes: int = EMBED_MAX_BYTES) -> str:
    """A `data:image/png;base64,...` URI of `image`, at most `max_bytes` long: at most
    EMBED_MAX_WIDTH px wide, 128 palette colours, shrunk further until it fits."""
    from PIL import Image

    rgb = image.convert("RGB")
    # A palette PNG of video frames takes about 0.35 B/px (measured on contact sheets):
    # start at the width that should fit, so a tall sheet is usually encoded once.
    area = max_bytes * 0.75 / PALETTE_PNG_BYTES_PER_PX
    width = min(EMBED_MAX_WIDTH, rgb.width, max(64, int(math.sqrt(area * rgb.width / rgb.height))))
    while True:
        height = max(1, round(rgb.height * width / rgb.width))
        small = (
            rgb
            if width == rgb.width
            else rgb.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
        )
        buf = io.BytesIO()
        # Octree, not median cut: ~20x faster on a tall sheet, and this is a preview.
        small.quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(buf, format="PNG")
        png = buf.getvalue()
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        if len(uri) <= max_bytes or width <= 64:
            return uri
        # A PNG's size goes about with its area: jump to the width that should fit
        # (base64 adds 4/3), a little under it, rather than shrinking step by step.
        fits = width * math.sqrt(max_bytes * 0.75 / len(png)) * 0.95
        width = max(64, min(int(width * 0.9), int(fits)))


def _tile(
    storage: Storage, key: str, width: int, frames: SheetFrames | None
) -> PILImage.Image | None:
    taken = frames.get(key) if frames is not None and frames.width == width else None
    return taken if taken is not None else _frame_of(storage, key, width)


def _frame_of(storage: Storage, key: str, width: int) -> PILImage.Image | None:
    from i2v.media import video_frame

    try:
        with _local_copy(storage, key) as path:
            return video_frame(path, index=FRAME_INDEX, width=width)
    except Exception as exc:  # one unreadable video must not cost the whole sheet
        log.warning("contact sheet: no frame from %s (%s)", storage.key_uri(key), exc)
        return None


@contextlib.contextmanager
def _local_copy(storage: Storage, key: str) -> Iterator[Path]:
    """A local file holding the object: the file itself for a folder DEST, else a temp
    download (streamed to disk, so a large video never sits in memory)."""
    if isinstance(storage, LocalStorage):
        yield Path(storage.key_uri(key))
        return
    fd, name = tempfile.mkstemp(suffix=Path(key).suffix or ".mp4", prefix="i2v-frame-")
    path = Path(name)
    try:
        if is_s3(storage):
            os.close(fd)
            storage.get_file(key, path)
        else:
            with open(fd, "wb") as sink:
                sink.write(storage.read_bytes(key) or b"")
        yield path
    finally:
        path.unlink(missing_ok=True)


def _grid(
    frames: Sequence[PILImage.Image | None],
    labels: Sequence[str],
    *,
    thumb_width: int,
    columns: int,
) -> PILImage.Image:
    from PIL import Image, ImageDraw

    columns = max(1, min(columns, len(frames)))
    pad, label_h = 6, 16
    default_h = round(thumb_width * 9 / 16)
    tile_h = max((f.height for f in frames if f is not None), default=default_h)
    rows = math.ceil(len(frames) / columns)
    cell_w, cell_h = thumb_width + pad, tile_h + label_h + pad
    sheet = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        x = pad + (i % columns) * cell_w
        y = pad + (i // columns) * cell_h
        if frame is None:
            draw.rectangle((x, y, x + thumb_width - 1, y + tile_h - 1), fill=(90, 90, 90))
            draw.text((x + 6, y + 6), "unreadable", fill=(230, 230, 230))
        else:
            sheet.paste(frame.convert("RGB"), (x, y + (tile_h - frame.height) // 2))
        draw.text((x, y + tile_h + 2), _fit(label, thumb_width), fill=(230, 230, 230))
    return sheet


def _fit(text: str, width_px: int) -> str:
    limit = max(4, width_px // 6)  # Pillow's default bitmap font is ~6 px per character
    return text if len(text) <= limit else text[: limit - 1] + "…"
