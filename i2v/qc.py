"""Quality check of a landed video: does it decode, last as long as asked, and move?

Cheap by design, because it runs on every paid video: the container's header gives the
duration, size and frame rate; one pass over the packets (no decoding) gives the
keyframes and how much data the other frames carry; a handful of frames are decoded
(the first six, and one at each of up to three later keyframes), scaled down to 64 px
wide grey and compared. The whole file is never decoded: nine frames at most.

A video is `frozen` only when both signals agree: the sampled frames are the same
picture AND the frames between keyframes carry almost no data (an encoder spends
almost nothing on a frame that repeats the previous one). Either alone misfires: a clip
may start still and move later, or carry noise on a still picture.

`probe_video` never raises for a bad video: what is wrong is in `QcFacts.problems`,
e.g. ("short:4.1s", "frozen"), and `QcFacts.verdict` is "ok" or those reasons joined
by ",". A flagged video stays landed: the check only reports.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK = "ok"
# The requested duration must match within this (the contract: half a second).
DURATION_TOLERANCE_S = 0.5
# Below this a clip plays as a slideshow; Hailuo renders 24-25 fps.
MIN_FPS = 15.0
# The first frames decoded in a row from the start (a quarter second at 24 fps).
FIRST_RUN_FRAMES = 6
# Later keyframes decoded (one frame each), spread over the clip.
LATER_KEYFRAMES = 3
# Mean absolute grey-level difference (0-255, at 64 px wide) under which two sampled
# frames are "the same picture": encoding noise of a still clip stays well below 1.
SAME_PICTURE_DIFF = 1.0
# Inter frames whose median size is under this share of a keyframe's carry no motion:
# measured on the simulator's clips, a still picture's P-frames are 0.3 % of its keyframe
# and the slowest camera move's are 16-24 %.
STILL_PACKET_RATIO = 0.02
SAMPLE_WIDTH = 64
SINGLE_THREAD = True


@dataclass(frozen=True)
class QcFacts:
    """What the probe found; `problems` empty means the video passed."""

    duration_s: float | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames: int | None = None
    problems: tuple[str, ...] = ()
    decoded_frames: int = 0  # how many frames the probe decoded (its cost)
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        """ "ok", or the reasons joined by "," (the results table's `qc` column)."""
        return OK if self.ok else ",".join(self.problems)


def is_flagged(qc: object) -> bool:
    """Whether a `qc` value (a verdict, or None/NA when not checked) flags the video."""
    return isinstance(qc, str) and bool(qc) and qc != OK


def probe_video(path: Path, *, expected_duration_s: float | None) -> QcFacts:
    """Probe one local mp4 (see the module's docstring); never raises for a bad file."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        return QcFacts(problems=("undecodable",), details={"error": str(exc)})
    with container:
        if not container.streams.video:
            return QcFacts(problems=("undecodable",), details={"error": "no video stream"})
        stream = container.streams.video[0]
        if SINGLE_THREAD:
            # A handful of frames: a decoder thread pool costs more than it saves, and
            # the run's event loop needs the other core.
            stream.codec_context.thread_count = 1
        width = int(stream.codec_context.width or 0)
        height = int(stream.codec_context.height or 0)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        packets, demux_error = _packets(container, stream)
        duration = _duration(container, stream, packets, fps)
        problems: list[str] = []
        details: dict[str, Any] = {}
        samples, decoded, decode_error = _samples(container, stream, packets)
        if not samples:
            details["error"] = decode_error or demux_error or "no frame decodes"
            return QcFacts(
                duration_s=duration,
                width=width or None,
                height=height or None,
                fps=fps or None,
                frames=len(packets),
                problems=("undecodable",),
                decoded_frames=decoded,
                details=details,
            )
        if decode_error or demux_error:
            problems.append("damaged")
            details["error"] = decode_error or demux_error
        if expected_duration_s and duration is not None:
            if duration < expected_duration_s - DURATION_TOLERANCE_S:
                problems.append(f"short:{duration:.1f}s")
            elif duration > expected_duration_s + DURATION_TOLERANCE_S:
                problems.append(f"long:{duration:.1f}s")
        if not width or not height:
            problems.append("no_size")
        if fps <= 0:
            problems.append("no_fps")
        elif fps < MIN_FPS:
            problems.append(f"low_fps:{fps:g}")
        still_pixels = _same_picture(samples)
        still_packets = _still_packets(packets)
        details.update(still_pixels=still_pixels, still_packets=still_packets)
        if len(samples) > 1 and still_pixels and still_packets is not False:
            problems.append("frozen")
    return QcFacts(
        duration_s=None if duration is None else round(duration, 3),
        width=width or None,
        height=height or None,
        fps=round(fps, 3) if fps else None,
        frames=len(packets),
        problems=tuple(problems),
        decoded_frames=decoded,
        details=details,
    )


def _packets(container: Any, stream: Any) -> tuple[list[tuple[int | None, int, bool]], str]:
    """(pts, size, keyframe) of every video packet, read without decoding; and the
    demuxer's error if the file ends badly."""
    import av

    found: list[tuple[int | None, int, bool]] = []
    try:
        for packet in container.demux(stream):
            if packet.size:
                found.append((packet.pts, packet.size, bool(packet.is_keyframe)))
    except (av.FFmpegError, OSError) as exc:
        return found, f"the file breaks off after {len(found)} frames ({exc})"
    return found, ""


def _duration(
    container: Any, stream: Any, packets: list[tuple[int | None, int, bool]], fps: float
) -> float | None:
    import av

    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return len(packets) / fps if fps and packets else None


def _samples(
    container: Any, stream: Any, packets: list[tuple[int | None, int, bool]]
) -> tuple[list[Any], int, str]:
    """Small grey pictures of the sampled frames, how many frames were decoded, and
    the decoder's error if one stopped it."""
    import av

    samples: list[Any] = []
    decoded = 0
    try:
        container.seek(0, stream=stream)
        last = None
        for frame in container.decode(stream):
            decoded += 1
            if decoded == 1:
                samples.append(_small(frame))
            last = frame
            if decoded >= FIRST_RUN_FRAMES:
                break
        if last is not None and decoded > 1:
            samples.append(_small(last))
        keys = [pts for pts, _, key in packets if key and pts is not None]
        for pts in _spread(keys[1:], LATER_KEYFRAMES):
            container.seek(pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                decoded += 1
                samples.append(_small(frame))
                break
    except (av.FFmpegError, OSError, ValueError) as exc:
        return samples, decoded, f"decoding stopped after {decoded} frames ({exc})"
    return samples, decoded, ""


def _small(frame: Any) -> Any:
    height = max(1, round(SAMPLE_WIDTH * frame.height / max(1, frame.width)))
    return frame.reformat(width=SAMPLE_WIDTH, height=height, format="gray").to_ndarray()


def _spread(items: list[int], n: int) -> list[int]:
    """Up to `n` items spread evenly over `items`, the last one included."""
    if len(items) <= n:
        return items
    return [items[round((i + 1) * (len(items) - 1) / n)] for i in range(n)]


def _same_picture(samples: list[Any]) -> bool:
    import numpy as np

    first = samples[0].astype(np.int16)
    for other in samples[1:]:
        if other.shape != first.shape:
            return False
        if float(np.abs(other.astype(np.int16) - first).mean()) >= SAME_PICTURE_DIFF:
            return False
    return True


def _still_packets(packets: list[tuple[int | None, int, bool]]) -> bool | None:
    """Whether the inter frames carry (almost) no data; None for an all-keyframe clip."""
    inter = [size for _, size, key in packets if not key]
    keys = [size for _, size, key in packets if key]
    if not inter or not keys:
        return None
    return statistics.median(inter) < STILL_PACKET_RATIO * statistics.median(keys)
