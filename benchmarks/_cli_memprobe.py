"""`_cli_probe.py` plus memory sampling, for `s3_memory_profile.py --cli`.

The same report (peak RSS, CPU) with the RSS, threads and malloc state at the peak,
the arenas at exit and the RSS over time (max per 0.5 s) added. Trials of that script's
--env, --set and --trim arrive as MEMPROBE_ENV, MEMPROBE_SET and MEMPROBE_TRIM.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from pathlib import Path

from _cli_probe import _report
from s3_memory_profile import MIB, arenas, mallinfo, proc_status, trim_after_transfers, tweak_s3

from cli.main import main

_peak: dict[str, float] = {}
_timeline: list[tuple[float, float]] = []
_stop = threading.Event()
_t0 = time.monotonic()


def _sample() -> None:
    while not _stop.wait(0.01):
        now = {**proc_status(), **mallinfo()}
        if now["VmRSS"] > _peak.get("VmRSS", 0):
            _peak.update(now, at_s=time.monotonic() - _t0)
        t = round((time.monotonic() - _t0) * 2) / 2
        if _timeline and _timeline[-1][0] == t:
            _timeline[-1] = (t, max(_timeline[-1][1], now["VmRSS"]))
        else:
            _timeline.append((t, now["VmRSS"]))


def _extra() -> None:
    _stop.set()
    path = os.environ.get("I2V_BENCH_PROBE")
    if not path:
        return
    report = json.loads(Path(path).read_text())
    report.update(peak=_peak, arenas=arenas(), timeline=_timeline, mib=MIB)
    Path(path).write_text(json.dumps(report))


def _trials() -> None:
    """What `s3_memory_profile.py --cli` asks to try: --env, --set, --trim."""
    for item in os.environ.get("MEMPROBE_ENV", "").split():
        name, _, value = item.partition("=")
        os.environ[name] = value
    tweak_s3(os.environ.get("MEMPROBE_SET", "").split())
    if os.environ.get("MEMPROBE_TRIM"):
        trim_after_transfers()


if __name__ == "__main__":
    _trials()
    threading.Thread(target=_sample, daemon=True).start()
    atexit.register(_extra)  # atexit runs last-in first-out: after _report
    atexit.register(_report)
    sys.argv[0] = "i2v"
    main()
