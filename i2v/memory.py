"""Giving memory back to the system: glibc's malloc keeps freed memory in per-thread
arenas, where big transfers and a run's many threads leave it resident."""

from __future__ import annotations

import ctypes
from typing import Any


def _libc_malloc_trim() -> Any:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's; musl, macOS and Windows lack it
    except (AttributeError, OSError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _libc_malloc_trim()


def give_back_free_memory() -> None:
    """Return the memory malloc holds free to the system (glibc; elsewhere nothing).

    For after a big video's landing or transfer: its buffers (256 KiB download chunks,
    botocore's 1 MiB reads of each S3 part, decoded frames) raise glibc's mmap
    threshold, after which buffers that size come from the threads' arenas and stay
    there, free but resident, until the process ends (2-5 MiB in each of a run's 14-16
    arenas). Takes well under a millisecond.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


_M_ARENA_MAX = -8  # glibc's mallopt parameter number
RUN_MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = RUN_MALLOC_ARENAS) -> bool:
    """Let the threads started from now on share `arenas` malloc arenas (glibc; False
    and nothing elsewhere).

    glibc gives threads up to 8 arenas per core, and a run's dozens of threads
    (landings, state writes, Prefect's own) each keep free memory resident in theirs:
    at a 2,000-row run's peak, 65 MiB free in the arenas against 16 MiB with 2, peak
    RSS 427 MiB against 379, the batch no slower (measured; Python's own allocations
    hold the GIL anyway). Arenas that exist already stay.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, max(1, arenas)))
