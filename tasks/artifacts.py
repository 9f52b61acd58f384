"""What a person watches in the Prefect UI: a live progress bar and a contact sheet.

`ProgressReporter` turns the pipeline's "outcome" events into a progress artifact that
moves as rows land; updates are coalesced (at most one per `min_interval_s`) and run in
the background, so a slow Prefect API never slows the pipeline. `publish_contact_sheet`
shows the sheet `i2v.sheet` grids from one frame of each landed video
(DEST/runs/RUN_ID/contact_sheet.png).

What the Prefect UI shows (checked in a browser): a markdown image renders only as a
plain `![alt](url)` with an http(s) or `data:` URL, never nested in a link and never
from `file://`. So the summary embeds the sheet as a presigned URL for an S3 DEST and as
a small `data:` PNG for a folder DEST; links to files in a folder DEST are shown as
their paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from i2v.local_storage import LocalStorage
from i2v.sheet import (
    CONTACT_SHEET_NAME,
    SheetFrames,
    embedded_png,
    save_sheet,
    sheet_image,
    sheet_key,
)
from i2v.storage import Storage

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from i2v.run import Job, JobOutcome, RunContext

log = logging.getLogger("i2v.artifacts")

PROGRESS_KEY = "i2v-progress"
CONTACT_SHEET_KEY = "i2v-contact-sheet"
MAX_PRESIGN_HOURS = 7 * 24  # SigV4's maximum


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


async def publish_sheet(
    storage: Storage,
    make: Callable[[], PILImage.Image | None],
    run_id: str,
    *,
    name: str,
    title: str,
    key: str,
    description: str,
    link_hours: float = 24.0,
) -> str:
    """Make a sheet (`make`, in a thread), save it to DEST/runs/<run-id>/<name>, add a
    link artifact `key` to it, and return the run summary's markdown section `title`;
    "" when `make` gives nothing or the sheet fails (the videos landed: a missing sheet
    is only a lesser view).

    The summary shows the sheet as a plain markdown image: its presigned URL on S3, or
    a small embedded PNG (`embedded_png`) for a folder DEST; the full-size file follows
    as a link (S3) or its path (folder).
    """
    from prefect.artifacts import acreate_link_artifact

    where_key = sheet_key(run_id, name)
    try:
        sheet = await asyncio.to_thread(make)
        if sheet is None:
            return ""
        url = await asyncio.to_thread(web_link, storage, where_key, link_hours)
        saving = asyncio.to_thread(save_sheet, storage, sheet, run_id, name=name)
        if url is None:  # the file and the summary's small copy at once, in two threads
            _, image = await asyncio.gather(saving, asyncio.to_thread(embedded_png, sheet))
        else:
            await saving
            image = url
    except Exception as exc:
        log.warning("%s not written: %s", title.lower(), exc)
        return ""
    where = storage.key_uri(where_key)
    full = f"[{name}]({url}) (`{where}`)" if url else f"`{where}`"
    label = f"{title.lower()} of run {run_id}"
    with contextlib.suppress(Exception):
        await acreate_link_artifact(
            link=url or link_or_path(storage, where_key),
            link_text=label + ("" if url else f": {where}"),
            key=key,
            description=f"{description}: {where}",
        )
    return f"## {title}\n\n![{label}]({image})\n\nFull size: {full}\n"


async def publish_contact_sheet(
    storage: Storage,
    video_keys: Sequence[str],
    run_id: str,
    *,
    link_hours: float = 24.0,
    frames: SheetFrames | None = None,
    **options: Any,
) -> str:
    """The contact sheet (`i2v.sheet`; `frames` taken while landing), published
    (`publish_sheet`)."""
    return await publish_sheet(
        storage,
        lambda: sheet_image(storage, video_keys, frames=frames, **options),
        run_id,
        name=CONTACT_SHEET_NAME,
        title="Contact sheet",
        key=CONTACT_SHEET_KEY,
        description="One frame of each landed video",
        link_hours=link_hours,
    )


KEPT_KEY = "i2v-kept"


def kept_message(ctx: RunContext) -> str:
    """The one line a run that stops with records DEST did not take ends with."""
    kept = ctx.kept
    why = str(kept.refused) if kept.refused is not None else ctx.watch.message()
    return (
        f"{why}; {len(kept.pending)} paid rows kept in {kept.journal.path}: rerun the same "
        "command on this machine once DEST answers (they are recorded first, then polled "
        "and landed, never paid again), or from another machine attach that file with "
        "`i2v status DEST --attach FILE`"
    )


async def publish_kept(ctx: RunContext) -> None:
    """The records DEST did not take, with their prediction ids, as an artifact (and
    logged): with the journal file, what the next run needs to pay nothing again."""
    from prefect.artifacts import acreate_markdown_artifact

    rows = sorted(ctx.kept.pending.values(), key=lambda r: r.identity)
    for record in rows:
        ctx.log.warning(
            "kept, not in DEST: input %s prediction %s (%s)",
            record.identity,
            record.prediction_id or "-",
            record.phase,
        )
    lines = [
        "# Paid, not yet recorded in DEST",
        "",
        kept_message(ctx).replace("`i2v status DEST", f"`i2v status {ctx.dest.uri}"),
        "",
        "| input identity | prediction id | phase |",
        "|---|---|---|",
        *[f"| {r.identity} | {r.prediction_id or '-'} | {r.phase} |" for r in rows],
    ]
    with contextlib.suppress(Exception):  # the log lines above hold the same ids
        await acreate_markdown_artifact(
            key=KEPT_KEY, markdown="\n".join(lines), description="i2v: paid rows kept"
        )
