"""`i2v` exactly as its console script runs it, plus one report at exit.

At exit this process (the one that runs the flow; Prefect's temporary API server is a
child process and is not counted in the RSS) writes its peak RSS, its CPU time and its
reaped children's CPU time as JSON to the file named by I2V_BENCH_PROBE.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import sys

from cli.main import main


def _report() -> None:
    path = os.environ.get("I2V_BENCH_PROBE")
    if not path:
        return
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the reaped Prefect server
    report = {
        "peak_rss_kib": me.ru_maxrss,  # Linux reports KiB
        "cpu_s": me.ru_utime + me.ru_stime,
        "children_cpu_s": children.ru_utime + children.ru_stime,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f)


if __name__ == "__main__":
    atexit.register(_report)
    sys.argv[0] = "i2v"
    main()
