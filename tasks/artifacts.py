"""What a person watches in the Prefect UI: a live progress bar and a contact sheet.

`ProgressReporter` turns the pipeline's "outcome" events into a progress artifact that
moves as rows land; updates are coalesced (at most one per `min_interval_s`) and run in
the background, so a slow Prefect API never slows the pipeline. `make_contact_sheet`
grids one frame of each landed video into DEST/runs/RUN_ID/contact_sheet.png.

What the Prefect UI shows (checked in a browser): a markdown image renders only as a
plain `![alt](url)` with an http(s) or `data:` URL, never nested in a link and never
from `file://`. So the summary embeds the sheet as a presigned URL for an S3 DEST and as
a small `data:` PNG for a folder DEST; links to files in a folder DEST are shown as
their paths.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from i2v.s3 import S3Storage
from i2v.storage import LocalStorage, Storage

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from i2v.run import Job, JobOutcome

log = logging.getLogger("i2v.artifacts")

PROGRESS_KEY = "i2v-progress"
CONTACT_SHEET_KEY = "i2v-contact-sheet"
CONTACT_SHEET_NAME = "contact_sheet.png"
# About one second into the video: past a possible black first frame, and it shows
# the motion the prompt asked for. Shorter videos give their last frame.
FRAME_INDEX = 24
MAX_SHEET_VIDEOS = 100  # beyond this a grid stops being readable (and costs downloads)
MAX_PRESIGN_HOURS = 7 * 24  # SigV4's maximum
RESULTS_LINK_KEY = "i2v-results-table"
# The sheet embedded in a folder DEST's summary: a palette PNG shrunk until its data:
# URI is this small (the artifact is stored in Prefect's database and sent to every
# browser that opens the run).
EMBED_MAX_BYTES = 300_000
EMBED_MAX_WIDTH = 960


class ProgressReporter:
    """A Prefect progress artifact that follows a run row by row.

    Usage inside a flow run::

        reporter = ProgressReporter()
        await reporter.start(len(plans), done=rejected_rows)
        ctx.listeners.append(reporter.listener)
        try:
            ...  # process the jobs
        finally:
            await reporter.finish()

    Every method swallows Prefect API errors (logged at DEBUG): progress is a view,
    never a reason for a row or a run to fail.
    """

    def __init__(
        self,
        key: str = PROGRESS_KEY,
        *,
        min_interval_s: float = 1.0,
        label: str = "rows",
    ) -> None:
        self.key = key
        self.min_interval_s = min_interval_s
        self.label = label
        self.total = 0
        self.done = 0
        self.by_status: Counter[str] = Counter()
        self.artifact_id: UUID | None = None
        self.updates = 0  # API updates sent, for tests and debugging
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.Task[None] | None = None
        self._last_sent = 0.0
        self._sent_value: tuple[int, str] | None = None
        self._lock = threading.Lock()

    @property
    def percent(self) -> float:
        if self.total <= 0:
            return 100.0
        return round(min(100.0, 100.0 * self.done / self.total), 2)

    def description(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.by_status.items()) if n)
        head = f"{self.done}/{self.total} {self.label} done"
        return f"{head} ({parts})" if parts else head

    async def start(self, total_rows: int, *, done: int = 0, done_status: str = "rejected") -> None:
        """Create the artifact at `done`/`total_rows`; `done` rows are counted under
        `done_status` (typically rows rejected before any call)."""
        from prefect.artifacts import acreate_progress_artifact

        self._loop = asyncio.get_running_loop()
        self.total = max(0, total_rows)
        self.done = min(done, self.total)
        if self.done:
            self.by_status[done_status] += self.done
        try:
            self.artifact_id = await acreate_progress_artifact(
                progress=self.percent, key=self.key, description=self.description()
            )
            self._last_sent = time.monotonic()
            self._sent_value = (self.done, self.description())
        except Exception as exc:  # no API (e.g. outside a run): report nothing
            log.debug("progress artifact not created: %s", exc)

    def listener(self, event: str, job: Job, outcome: JobOutcome | None) -> None:
        """An `i2v.run.Listener`: counts a job's rows when its outcome is known."""
        if event != "outcome":
            return
        status = str(outcome.status) if outcome is not None else "unknown"
        self.advance(len(job.rows), status=status)

    def advance(self, rows: int, *, status: str | None = None) -> None:
        """Count `rows` more as done and schedule a (coalesced) update. Thread-safe."""
        with self._lock:
            self.done = min(self.total, self.done + rows) if self.total else self.done + rows
            if status:
                self.by_status[status] += rows
        loop = self._loop
        if loop is None or self.artifact_id is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._schedule()
        else:  # called from a worker thread: hop onto the run's loop
            loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._flush_later())

    async def _flush_later(self) -> None:
        wait = self._last_sent + self.min_interval_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await self._send()

    async def _send(self) -> None:
        from prefect.artifacts import aupdate_progress_artifact

        if self.artifact_id is None:
            return
        value = (self.done, self.description())
        if value == self._sent_value:
            return
        self._last_sent = time.monotonic()
        try:
            await aupdate_progress_artifact(
                self.artifact_id, progress=self.percent, description=value[1]
            )
            self._sent_value = value
            self.updates += 1
        except Exception as exc:
            log.debug("progress artifact not updated: %s", exc)

    async def finish(self) -> None:
        """Send the final count now (cancelling any pending delayed update)."""
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pending
        self._pending = None
        await self._send()


# ----------------------------------------------------------------------- contact sheet


def make_contact_sheet(
    storage: Storage,
    video_keys: Sequence[str],
    run_id: str,
    *,
    thumb_width: int = 240,
    columns: int = 4,
    max_videos: int = MAX_SHEET_VIDEOS,
    workers: int = 4,
) -> str | None:
    """Grid one frame of each video into DEST/runs/<run_id>/contact_sheet.png.

    Args:
        storage: DEST.
        video_keys: Keys of landed videos ("videos/<id>.mp4"), in table order; each
            tile is labelled with the file's stem (the row id).
        run_id: The run whose folder receives the sheet.
        thumb_width: Tile width in px (heights follow each video's aspect).
        columns: Tiles per row.
        max_videos: Only the first this many videos are shown (the sheet says so).
        workers: Videos fetched and decoded in parallel.

    Returns:
        The sheet's `key_uri` (local path or s3:// URI), or None when there are no
        videos. A video that cannot be read becomes a grey tile, never an error.
    """
    made = _render_sheet(
        storage,
        video_keys,
        run_id,
        thumb_width=thumb_width,
        columns=columns,
        max_videos=max_videos,
        workers=workers,
    )
    return None if made is None else storage.key_uri(made[1])


def _render_sheet(
    storage: Storage,
    video_keys: Sequence[str],
    run_id: str,
    *,
    thumb_width: int = 240,
    columns: int = 4,
    max_videos: int = MAX_SHEET_VIDEOS,
    workers: int = 4,
) -> tuple[PILImage.Image, str] | None:
    """`make_contact_sheet`, returning the sheet itself and its key."""
    keys = list(dict.fromkeys(video_keys))  # duplicate rows share nothing on the sheet
    if not keys:
        return None
    shown = keys[:max_videos]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        frames = list(pool.map(lambda k: _frame_of(storage, k, thumb_width), shown))
    labels = [Path(k).stem for k in shown]
    if len(keys) > len(shown):
        labels[-1] += f"  (+{len(keys) - len(shown)} more)"
    sheet = _grid(frames, labels, thumb_width=thumb_width, columns=columns)
    staging = Path(tempfile.mkdtemp(prefix="i2v-sheet-"))
    try:
        png = staging / CONTACT_SHEET_NAME
        sheet.save(png, format="PNG", optimize=True)
        key = f"runs/{run_id}/{CONTACT_SHEET_NAME}"
        storage.put_file(key, png, content_type="image/png")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sheet, key


def embedded_png(image: PILImage.Image, *, max_bytes: int = EMBED_MAX_BYTES) -> str:
    """A `data:image/png;base64,...` URI of `image`, at most `max_bytes` long: at most
    EMBED_MAX_WIDTH px wide, 128 palette colours, shrunk further until it fits."""
    from PIL import Image

    rgb = image.convert("RGB")
    width = min(EMBED_MAX_WIDTH, rgb.width)
    while True:
        height = max(1, round(rgb.height * width / rgb.width))
        small = rgb if width == rgb.width else rgb.resize((width, height), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.quantize(colors=128).save(buf, format="PNG", optimize=True)
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        if len(uri) <= max_bytes or width <= 64:
            return uri
        width = max(64, int(width * 0.7))


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
        if isinstance(storage, S3Storage):
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


def web_link(storage: Storage, key: str, hours: float = 24.0) -> str | None:
    """An http(s) URL a browser opens for `key`: a presigned GET valid `hours` (at most
    SigV4's 7 days) on S3; None for a folder DEST (no URL reaches a local file from the
    Prefect UI) or when presigning fails."""
    if isinstance(storage, LocalStorage):
        return None
    seconds = int(min(max(hours, 1 / 60), MAX_PRESIGN_HOURS) * 3600)
    try:
        return storage.presign_get(key, expires_s=seconds)
    except Exception as exc:
        log.debug("cannot presign %s: %s", storage.key_uri(key), exc)
        return None


def link_or_path(storage: Storage, key: str, hours: float = 24.0) -> str:
    """What a link artifact points at: the presigned URL on S3, else a file:// URL (not
    clickable from the UI; its text is the path)."""
    url = web_link(storage, key, hours)
    if url:
        return url
    where = storage.key_uri(key)
    return Path(where).as_uri() if isinstance(storage, LocalStorage) else where


async def publish_contact_sheet(
    storage: Storage,
    video_keys: Sequence[str],
    run_id: str,
    *,
    link_hours: float = 24.0,
    **options: Any,
) -> str:
    """Make the contact sheet, add a link artifact to it, and return markdown to embed
    in the run summary ("" when there is nothing to show or the sheet failed).

    The summary shows the sheet as a plain markdown image: its presigned URL on S3, or
    a small embedded PNG (`embedded_png`) for a folder DEST; the full-size file follows
    as a link (S3) or its path (folder).
    """
    from prefect.artifacts import acreate_link_artifact

    try:
        made = await asyncio.to_thread(_render_sheet, storage, video_keys, run_id, **options)
    except Exception as exc:  # the videos landed; a missing sheet is only a lesser view
        log.warning("contact sheet not written: %s", exc)
        return ""
    if made is None:
        return ""
    sheet, key = made
    where = storage.key_uri(key)
    url = await asyncio.to_thread(web_link, storage, key, link_hours)
    image = url or await asyncio.to_thread(embedded_png, sheet)
    full = f"[{CONTACT_SHEET_NAME}]({url}) (`{where}`)" if url else f"`{where}`"
    with contextlib.suppress(Exception):
        await acreate_link_artifact(
            link=url or link_or_path(storage, key),
            link_text=f"contact sheet of run {run_id}" + ("" if url else f": {where}"),
            key=CONTACT_SHEET_KEY,
            description=f"One frame of each landed video: {where}",
        )
    return f"## Contact sheet\n\n![contact sheet of run {run_id}]({image})\n\nFull size: {full}\n"


async def publish_results_link(storage: Storage, run_id: str, *, link_hours: float = 24.0) -> None:
    """A link artifact (key RESULTS_LINK_KEY) to this run's results table,
    DEST/runs/RUN_ID/results.csv: presigned on S3, the file's path for a folder DEST."""
    from prefect.artifacts import acreate_link_artifact

    key = f"runs/{run_id}/results.csv"
    link = await asyncio.to_thread(link_or_path, storage, key, link_hours)
    where = storage.key_uri(key)
    try:
        await acreate_link_artifact(
            link=link,
            link_text=f"results table of run {run_id} (CSV)"
            + ("" if link.startswith("http") else f": {where}"),
            key=RESULTS_LINK_KEY,
            description=f"This run's table, one row per manifest row: {where}",
        )
    except Exception as exc:  # a view, never a reason for the run to fail
        log.debug("results link artifact not created: %s", exc)


def video_links(storage: Storage, video_uris: Sequence[str | None], hours: float) -> list[str]:
    """For the table artifact: each landed video as a link a browser opens (presigned,
    S3), or its path (folder DEST); "" where there is no video."""
    base = storage.key_uri("")
    out = []
    for uri in video_uris:
        if not uri:
            out.append("")
            continue
        key = uri[len(base) :].lstrip("/") if uri.startswith(base) else None
        out.append((web_link(storage, key, hours) if key else None) or uri)
    return out


def summary_tail(
    top_errors: Sequence[tuple[str, int]], results_uri: str | None, sheet_md: str
) -> list[str]:
    """The closing markdown lines of a run summary: common errors, table, contact sheet."""
    lines: list[str] = []
    if top_errors:
        lines += ["", "## Most common errors", "", "| error | rows |", "|---|---|"]
        lines += [f"| {e.replace('|', '/')} | {n} |" for e, n in top_errors]
    if results_uri:
        lines += ["", f"Results table: `{results_uri}`"]
    if sheet_md:
        lines += ["", sheet_md]
    return lines
