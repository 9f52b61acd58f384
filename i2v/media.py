"""Checks on pictures before any byte leaves the machine, and on videos that came back.

Atlas Cloud takes JPEG or PNG pictures of at most 20 MB whose short side is over 300 px
and whose aspect ratio lies strictly between 2:5 and 5:2. A picture that breaks a rule costs a
round trip (or a paid failed job) if sent, so each rule is checked here with one
message that says what is wrong and what would be accepted.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from i2v.errors import InputError, OutputError

if TYPE_CHECKING:
    from PIL import Image as PILImage

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MIN_SHORT_SIDE_PX = 300  # the short side must be strictly over this
# Aspect ratio width:height, as exact fractions; the published schema's bounds are
# strict ("greater than 2:5 and less than 5:2"), so exactly 2:5 or 5:2 is refused.
MIN_ASPECT = Fraction(2, 5)
MAX_ASPECT = Fraction(5, 2)

# Pillow reports phone JPEGs with extra pictures (depth maps, previews) as MPO: it is a
# JPEG file any JPEG reader takes.
_ACCEPTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG"}
_CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}


@dataclass(frozen=True)
class ImageInfo:
    """What a picture that passed `check_image` is."""

    format: str  # "JPEG" or "PNG", from the bytes (never from the file name)
    width: int
    height: int
    size_bytes: int
    content_type: str
    sha256: str


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def check_image(data: bytes, *, name: str = "picture") -> ImageInfo:
    """Check one picture against Atlas Cloud's input rules; `InputError` if it fails.

    The bytes are decoded with Pillow (verified, then fully loaded, so a truncated file
    is caught); the file name is only used in messages.
    """
    from PIL import Image, UnidentifiedImageError

    size = len(data)
    if size == 0:
        raise InputError(f"{name}: the file is empty (0 bytes)")
    if size > MAX_IMAGE_BYTES:
        raise InputError(
            f"{name}: {_megabytes(size)} is over the 20 MB limit; resize it or save it as a JPEG"
        )
    detected = "picture"
    try:
        with Image.open(io.BytesIO(data)) as probe:
            detected = probe.format or "unknown"
            if detected not in _ACCEPTED_FORMATS:
                raise InputError(f"{name}: {detected} is not accepted; use JPEG or PNG")
            probe.verify()  # checksums and structure, without decoding pixels
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: catches truncated data verify() misses
            width, height = image.size
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not a picture (JPEG or PNG expected)") from None
    except Image.DecompressionBombError:
        raise InputError(f"{name}: too many pixels to be a reasonable picture") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow signals damaged files with all of these, depending on the codec.
        raise InputError(f"{name}: the {detected} file is damaged or truncated ({exc})") from None

    fmt = _ACCEPTED_FORMATS[detected]
    short = min(width, height)
    if short <= MIN_SHORT_SIDE_PX:
        raise InputError(
            f"{name}: {width}x{height} is too small; the short side must be over "
            f"{MIN_SHORT_SIDE_PX} px (it is {short} px)"
        )
    ratio = Fraction(width, height)
    if not MIN_ASPECT < ratio < MAX_ASPECT:
        shape = "wide" if ratio >= MAX_ASPECT else "tall"
        raise InputError(
            f"{name}: {width}x{height} is too {shape}: aspect ratio "
            f"{float(ratio):.2f} (width/height) must be strictly between 2:5 (0.40) and 5:2 (2.50)"
        )
    return ImageInfo(
        format=fmt,
        width=width,
        height=height,
        size_bytes=size,
        content_type=_CONTENT_TYPES[fmt],
        sha256=hashlib.sha256(data).hexdigest(),
    )


def is_mp4_header(head: bytes) -> bool:
    """Whether these first bytes start an MP4 (ISO BMFF): an `ftyp` box at bytes 4..8."""
    return len(head) >= 8 and head[4:8] == b"ftyp"


def check_mp4_file(path: Path) -> int:
    """The size of an MP4 file; `OutputError` if it is missing, empty or not an MP4."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(12)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise OutputError(f"{path}: the video file is empty")
    if not is_mp4_header(head):
        raise OutputError(f"{path}: not an MP4 file (no 'ftyp' box at its start)")
    return size


@dataclass(frozen=True)
class VideoFacts:
    """Basic facts about a video's first video stream."""

    duration_s: float
    frames: int
    width: int
    height: int
    fps: float


def video_facts(path: Path) -> VideoFacts:
    """Duration, frame count, size and frame rate of a video (PyAV); `OutputError` if
    it cannot be read or has no video stream."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise OutputError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            frames = stream.frames
            if not frames:
                # Some muxers leave the count out of the header: count the packets.
                frames = sum(1 for p in container.demux(stream) if p.size)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = frames / fps if fps else 0.0
            width = stream.codec_context.width
            height = stream.codec_context.height
    except OutputError:
        raise
    except (av.FFmpegError, OSError) as exc:
        raise OutputError(f"{path}: not a readable video ({exc})") from None
    return VideoFacts(duration_s=duration, frames=frames, width=width, height=height, fps=fps)


def video_frame(path: Path, *, index: int = 0, width: int = 320) -> PILImage.Image:
    """One decoded frame, scaled to `width` px wide (aspect kept), e.g. for contact
    sheets. An `index` past the end gives the last frame; `OutputError` if the file
    has no decodable frame."""
    import av

    if index < 0:
        raise ValueError("index must be >= 0")
    if width < 1:
        raise ValueError("width must be >= 1")
    picked = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise OutputError(f"{path}: has no video stream")
            for i, frame in enumerate(container.decode(video=0)):
                picked = frame
                if i >= index:
                    break
            image = picked.to_image() if picked is not None else None
    except OutputError:
        raise
    except (av.FFmpegError, OSError) as exc:
        raise OutputError(f"{path}: not a readable video ({exc})") from None
    if image is None:
        raise OutputError(f"{path}: has no decodable frame")
    height = max(1, round(image.height * width / image.width))
    return image.resize((width, height))
