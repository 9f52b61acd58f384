"""Output videos as streamed by the simulator: padded on the fly, cut on purpose."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

OUTPUT_CHUNK = 256 * 1024
_ZEROS = bytes(OUTPUT_CHUNK)


class DownloadCut(Exception):
    """Raised mid-stream on purpose (`download_failures`): the server drops the connection."""


def corrupt_mp4(video: bytes) -> bytes:
    """The same length, its first box (`ftyp`) kept, everything after it garbage: it
    passes a header check but no decoder reads it."""
    head = int.from_bytes(video[:4], "big") if len(video) >= 8 else 0
    head = head if 8 <= head <= len(video) else min(len(video), 32)
    pattern = b"\xde\xad\xbe\xef-not-a-video-"
    rest = len(video) - head
    return video[:head] + (pattern * (rest // len(pattern) + 1))[:rest]


def _free_box_header(size: int) -> bytes:
    """Header of a top-level ISO-BMFF 'free' box of `size` bytes in total."""
    if size < 2**32:
        return size.to_bytes(4, "big") + b"free"
    return (1).to_bytes(4, "big") + b"free" + size.to_bytes(8, "big")  # 64-bit largesize


async def stream_video(video: bytes, total: int, cut_at: int | None) -> AsyncIterator[bytes]:
    """The mp4 in OUTPUT_CHUNK pieces, padded to `total` with a trailing 'free' box made on
    the fly (300 MiB never sits in memory), cut off after `cut_at` bytes when set."""
    limit = total if cut_at is None else cut_at
    sent = 0

    def pieces() -> Any:
        for i in range(0, len(video), OUTPUT_CHUNK):
            yield video[i : i + OUTPUT_CHUNK]
        pad = total - len(video)
        if pad > 0:
            header = _free_box_header(pad)
            yield header
            remaining = pad - len(header)
            while remaining > 0:
                n = min(remaining, OUTPUT_CHUNK)
                yield _ZEROS if n == OUTPUT_CHUNK else _ZEROS[:n]
                remaining -= n

    for piece in pieces():
        if sent + len(piece) >= limit:
            yield piece[: limit - sent]
            sent = limit
            break
        sent += len(piece)
        yield piece
    if cut_at is not None:
        raise DownloadCut(f"download cut after {cut_at} of {total} bytes (download_failures)")
