"""Turn a picture and a prompt into a real H.264 mp4: a camera move over the picture.

The move is read from the prompt's verbs (pan, tilt, zoom/push in, pull out, orbit); a
gentle push-in otherwise. Each frame is a crop window of the source scaled to the output
size (Pillow), encoded with libx264 `ultrafast` in yuv420p. Renders are cached by
(picture, motion, duration, width, fps) so hundreds of jobs over a few pictures cost a
few renders.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from fractions import Fraction

import av
from PIL import Image

MOTIONS = (
    "slow_push",
    "pan_left",
    "pan_right",
    "tilt_up",
    "tilt_down",
    "zoom_in",
    "zoom_out",
    "orbit",
)
DEFAULT_MOTION = "slow_push"
# Not a camera move a prompt can ask for: every frame the same picture (a frozen clip,
# the `frozen_trigger` knob).
STILL = "still"

# Verb phrases per motion; the earliest one in the prompt wins.
_MOTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (motion, re.compile(pattern))
    for motion, pattern in (
        ("pan_left", r"\bpan(?:s|ning|ned)?\s+(?:to\s+(?:the\s+)?)?left\b"),
        ("pan_right", r"\bpan(?:s|ning|ned)?\s+(?:to\s+(?:the\s+)?)?right\b"),
        ("tilt_up", r"\btilt(?:s|ing|ed)?\s+up(?:ward)?s?\b"),
        ("tilt_down", r"\btilt(?:s|ing|ed)?\s+down(?:ward)?s?\b"),
        (
            "zoom_out",
            r"\b(?:zoom(?:s|ing|ed)?\s+out|pull(?:s|ing|ed)?\s+(?:out|back)"
            r"|dolly(?:ing)?\s+out)\b",
        ),
        (
            "zoom_in",
            r"\b(?:zoom(?:s|ing|ed)?(?:\s+in)?|push(?:es|ing|ed)?\s+in|dolly(?:ing)?\s+in)\b",
        ),
        (
            "orbit",
            r"\b(?:orbit(?:s|ing|ed)?|rotat(?:e|es|ing|ed|ion)|circl(?:e|es|ing)\s+around)\b",
        ),
        ("pan_right", r"\b(?:pan(?:s|ning|ned)?|follow(?:s|ing|ed)?|track(?:s|ing)?)\b"),
        ("tilt_up", r"\btilt(?:s|ing|ed)?\b"),
    )
)


def parse_motion(prompt: str | None) -> str:
    """The camera move a prompt asks for, one of MOTIONS ("slow_push" when none)."""
    text = (prompt or "").lower()
    best: tuple[int, int, str] | None = None
    for rank, (motion, pattern) in enumerate(_MOTION_PATTERNS):
        m = pattern.search(text)
        # Earliest position wins; on a tie the more specific (earlier listed) pattern.
        if m and (best is None or (m.start(), rank) < best[:2]):
            best = (m.start(), rank, motion)
    return best[2] if best else DEFAULT_MOTION


def output_size(src_w: int, src_h: int, width: int) -> tuple[int, int]:
    """Output (w, h): even numbers, `width` wide, the picture's aspect ratio."""
    w = max(2, width - width % 2)
    h = max(2, 2 * round(w * src_h / src_w / 2))
    return w, h


def _ease(t: float) -> float:
    # Mostly linear with a touch of smoothstep: the move eases in and out, yet its slowest
    # step still changes the picture enough that no encoded frame repeats the previous one.
    return 0.75 * t + 0.25 * t * t * (3.0 - 2.0 * t)


def _camera(motion: str, t: float) -> tuple[float, float, float, float]:
    """(window fraction of the picture, center x, center y, angle in degrees) at t in [0, 1].

    Centers are fractions of the picture; y grows downwards. "Pan right" moves the
    window right, so the content slides left in the frame.
    """
    p = _ease(t)
    if motion == STILL:
        return 0.9, 0.5, 0.5, 0.0
    if motion == "pan_left":
        return 0.8, 0.59 - 0.18 * p, 0.5, 0.0
    if motion == "pan_right":
        return 0.8, 0.41 + 0.18 * p, 0.5, 0.0
    if motion == "tilt_up":
        return 0.8, 0.5, 0.59 - 0.18 * p, 0.0
    if motion == "tilt_down":
        return 0.8, 0.5, 0.41 + 0.18 * p, 0.0
    if motion == "zoom_in":
        return 0.95 - 0.35 * p, 0.5, 0.5, 0.0
    if motion == "zoom_out":
        return 0.6 + 0.35 * p, 0.5, 0.5, 0.0
    if motion == "orbit":
        return 0.74, 0.47 + 0.06 * p, 0.5, -5.0 + 10.0 * p
    return 0.94 - 0.16 * p, 0.48 + 0.04 * p, 0.5, 0.0  # slow_push, drifting a little


def _frame(src: Image.Image, motion: str, t: float, size: tuple[int, int]) -> Image.Image:
    frac, cx, cy, angle = _camera(motion, t)
    sw, sh = src.size
    win_w, win_h = frac * sw, frac * sh
    x0, y0 = cx * sw - win_w / 2, cy * sh - win_h / 2
    if angle == 0.0:
        # resize(box=...) crops and scales in one pass: about twice as fast as transform().
        return src.resize(size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + win_w, y0 + win_h))
    # Affine map from output pixels to source pixels: scale, rotate about the center.
    ow, oh = size
    k = win_w / ow
    a = math.radians(angle)
    cos_a, sin_a = math.cos(a) * k, math.sin(a) * k
    ccx, ccy = cx * sw, cy * sh
    coeffs = (
        cos_a,
        -sin_a,
        ccx - cos_a * ow / 2 + sin_a * oh / 2,
        sin_a,
        cos_a,
        ccy - sin_a * ow / 2 - cos_a * oh / 2,
    )
    return src.transform(size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)


def _encoder_name() -> str:
    return "libx264" if "libx264" in av.codecs_available else "h264"


def render_video(
    image_bytes: bytes,
    *,
    motion: str = DEFAULT_MOTION,
    duration_s: float = 6,
    width: int = 320,
    fps: int = 24,
) -> bytes:
    """An H.264 mp4 of `duration_s * fps` frames moving the camera over the picture
    (`STILL`: not moving at all)."""
    if motion not in MOTIONS and motion != STILL:
        raise ValueError(f"unknown motion {motion!r}; known: {', '.join(MOTIONS)}")
    with Image.open(io.BytesIO(image_bytes)) as im:
        src = im.convert("RGB")
    size = output_size(src.width, src.height, width)
    # Work from a copy 1.5x the output size: sharp enough for the 1.6x zoom, and
    # per-frame resampling cost stays independent of the picture's resolution.
    work_w = 3 * size[0] // 2
    if src.width > work_w:
        src = src.resize(
            (work_w, max(2, round(work_w * src.height / src.width))),
            Image.Resampling.BILINEAR,
        )
    n = max(1, round(duration_s * fps))
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream(
            _encoder_name(),
            rate=fps,
            # ipratio=1 and no-fast-pskip: without them x264 may code the first P-frames
            # of a slow move as plain copies of the keyframe, and the video stalls.
            options={
                "preset": "ultrafast",
                "tune": "zerolatency",
                "crf": "26",
                "x264-params": "ipratio=1.0:no-fast-pskip=1",
            },
        )
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        time_base = Fraction(1, fps)
        for i in range(n):
            img = _frame(src, motion, i / (n - 1) if n > 1 else 1.0, size)
            frame = av.VideoFrame.from_image(img)
            frame.pts = i
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


class RenderCache:
    """Thread-safe LRU of rendered videos, one render per key even under concurrency.

    Callers for the same key wait on that key's lock while the first one renders;
    other keys render in parallel.
    """

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.renders = 0  # how many times a video was actually rendered
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[object, ...], threading.Lock] = {}
        self._videos: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._size = 0

    def get_or_render(self, key: tuple[object, ...], render: Callable[[], bytes]) -> bytes:
        with self._lock:
            hit = self._lookup(key)
            if hit is not None:
                return hit
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._lookup(key)
                if hit is not None:
                    return hit
            video = render()
            with self._lock:
                self.renders += 1
                self._videos[key] = video
                self._size += len(video)
                while self._size > self.max_bytes and len(self._videos) > 1:
                    _, old = self._videos.popitem(last=False)
                    self._size -= len(old)
                self._key_locks.pop(key, None)
            return video

    def _lookup(self, key: tuple[object, ...]) -> bytes | None:
        video = self._videos.get(key)
        if video is not None:
            self._videos.move_to_end(key)
        return video

    def clear(self) -> None:
        with self._lock:
            self._videos.clear()
            self._size = 0


# Shared by every simulator in the process: tests start many, over the same pictures.
RENDER_CACHE = RenderCache()


def cached_render(
    image_bytes: bytes,
    *,
    motion: str,
    duration_s: float,
    width: int,
    fps: int,
    image_sha: str | None = None,
) -> bytes:
    """`render_video` through RENDER_CACHE, keyed by (image sha, motion, duration, width, fps)."""
    sha = image_sha or hashlib.sha256(image_bytes).hexdigest()
    key = (sha, motion, duration_s, width, fps)
    return RENDER_CACHE.get_or_render(
        key,
        lambda: render_video(
            image_bytes, motion=motion, duration_s=duration_s, width=width, fps=fps
        ),
    )
