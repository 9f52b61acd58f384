"""The last step of a row's life: land the finished video in DEST.

The video is streamed to a staged file, checked (an MP4; the quality check when asked),
moved into DEST and recorded as landed; every other row of the same input gets its own
copy. Like the other steps (`i2v.steps`), `land` returns the new, durable record.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from i2v._constants import MiB
from i2v.errors import OutputError
from i2v.media import check_mp4_file
from i2v.memory import give_back_free_memory
from i2v.qc import QcFacts, probe_video
from i2v.run import Job, RunContext
from i2v.state import InputRecord, Phase
from i2v.steps import put

# A smaller video's landing leaves little free memory behind: not worth a trim per row.
BIG_VIDEO_BYTES = 8 * MiB


async def land(ctx: RunContext, job: Job, record: InputRecord) -> InputRecord:
    """Stream the video into DEST via a staged file, check it, record it as landed."""
    if not record.output_url:
        raise OutputError(f"prediction {record.prediction_id} finished without an output URL")
    key = job.primary.video_key
    async with ctx.land_gate:
        staging = await asyncio.to_thread(ctx.dest.staging_dir)
        # Named after the input, so a landing killed half-way leaves a part file that
        # the next attempt overwrites instead of an orphan.
        tmp = staging / f"{job.identity[:32]}.mp4.part"
        size = 0
        try:
            with open(tmp, "wb") as sink:  # noqa: ASYNC230 - local staging file, no network
                result = await ctx.client.download_output(record.output_url, sink)
            size = result.bytes
            ctx.stats.downloads += 1
            await asyncio.to_thread(check_mp4_file, tmp)
            # On the staged file, before it moves: S3 DESTs never download it again.
            facts = await quality_check(ctx, job, tmp) if ctx.options.qc else None
            if ctx.frames is not None and ctx.frames.wanted(job.primary.row.line):
                keys = [plan.video_key for plan in job.rows]
                await asyncio.to_thread(ctx.frames.take, keys, tmp, job.primary.row.line)
            await ctx.watch.call(ctx.dest.put_file, key, tmp, content_type="video/mp4")
        finally:
            await asyncio.to_thread(_unstage, tmp, size)
    landed = record.moved(
        Phase.LANDED,
        ctx.run_id,
        video_key=key,
        video_sha256=result.sha256,
        video_bytes=result.bytes,
        error=None,
        error_code=None,
        video_duration_s=facts.duration_s if facts else None,
        video_width=facts.width if facts else None,
        video_height=facts.height if facts else None,
        video_fps=facts.fps if facts else None,
        qc=facts.verdict if facts else None,
    )
    return await put(ctx, landed)


def _unstage(tmp: Path, size: int) -> None:
    """Remove the staged file; after a big video, give back the memory its landing's
    buffers left free in malloc's arenas (+18 MiB for 3 x 300 MiB videos otherwise)."""
    tmp.unlink(missing_ok=True)
    if size >= BIG_VIDEO_BYTES:
        give_back_free_memory()


async def quality_check(ctx: RunContext, job: Job, path: Path) -> QcFacts | None:
    """Probe a landed video (`i2v.qc`). A flagged video still lands: it is paid for,
    and deleting or re-paying is a person's call. None when the probe itself failed."""
    # The duration the row asked of its own model (else that model's default).
    default = job.row_model.schema.default_duration() if job.row_model else None
    expected = job.duration or default or (None if job.row_model else ctx.spec.default_duration)
    try:
        facts = await asyncio.to_thread(probe_video, path, expected_duration_s=expected)
    except Exception as exc:  # a report, never a reason to lose the landing
        ctx.log.warning("%s: the quality check could not run (%s)", job.name, exc)
        return None
    if not facts.ok:
        ctx.log.warning(
            "%s: the video is flagged by the quality check: %s; it stays landed and is "
            "not paid again",
            job.name,
            facts.verdict,
        )
    return facts


async def remember_output(ctx: RunContext, record: InputRecord) -> None:
    """Landing failed: keep the output URL so the next run lands without polling."""
    await put(ctx, record)


async def place_copies(ctx: RunContext, job: Job, record: InputRecord) -> None:
    """Give every row of a landed input its own `videos/<id>.mp4` (copies, no payment)."""
    assert record.video_key is not None
    for plan in job.rows:
        if plan.video_key == record.video_key:
            continue
        exists = await ctx.watch.call(ctx.dest.exists, plan.video_key)
        if not exists:
            await ctx.watch.call(ctx.dest.copy, record.video_key, plan.video_key)


async def video_present(ctx: RunContext, record: InputRecord) -> bool:
    return bool(record.video_key) and await ctx.watch.call(ctx.dest.exists, str(record.video_key))
