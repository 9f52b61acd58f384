"""Benchmark the i2v pipeline against the Atlas simulator, the way a user runs it.

    make bench                                       # the full targets (several minutes)
    .venv/bin/python benchmarks/bench.py --quick     # small sizes, while developing
    .venv/bin/python benchmarks/bench.py --sizes 200 --only startup,efficiency

Every scenario runs the real `i2v run` CLI in a subprocess against the simulator
(`python -m i2v.simulator.server`) in another subprocess, over loopback HTTP; s3://
destinations go to a moto server subprocess. Nothing leaves the machine. Prefect runs
as it does for a user by default (the CLI starts a temporary local API server), with
PREFECT_HOME in a scratch folder so ~/.prefect is never touched. Every child process is
stopped at the end, also on failure, Ctrl-C or SIGTERM.

Output: one markdown table on stdout, also in benchmarks/results/latest.md; the raw
figures in latest.json and the children's logs in results/logs/.

The figures (L = simulator latency per video, C = provider cap = `--concurrency`):
  1 efficiency   ideal / actual for N videos: ideal = L * max(N / C, 1); actual = first
                 submission -> last video landed, from the DEST/_state records (min
                 submit_started_at -> max updated_at of landed records), i.e. after
                 start-up. Target >= 0.8. Also the CLI's total wall time, split into
                 start-up (CLI start -> first submission), batch and end (results table,
                 Prefect shutdown), and the CPU seconds of the CLI and the simulator.
  2 polls/video  simulator polls / jobs created in that run. Target <= 3.
  3 peak RSS     of the process that runs the flow (Prefect's server is a separate
                 process), a few rows of tiny videos vs 300 MiB videos, local DEST and
                 s3:// DEST. Target: 300 MiB minus tiny <= 64 MiB.
  4 rerun        the largest batch run again, finished (same manifest, same DEST): wall
                 time and API calls the simulator answered. Target: 0 calls.
  5 speed-up     Atlas's sample (examples/atlas_sample.py, its published 3 s poll) looped
                 over a few rows; its per-row time EXTRAPOLATED to N rows, against the
                 pipeline's measured wall time for N rows (start-up included).
  6 start-up     a warm 1-row run's wall time (the median of 3) split by its log
                 timestamps (python + imports + checks, the wait for Prefect's temporary
                 server that started beside them, flow run start, flow set-up, the video,
                 results + flow end, server stop + exit; the server's own start,
                 overlapped, beside); `python -c "import flows.batch"` on its own; and
                 the very first run (empty PREFECT_HOME: Prefect creates its database).
  7 provider cap the first size against a long-lived `prefect server`, without and with
                 a global concurrency limit of C slots.
  8 scale        benchmarks/scale.py: peak RSS at 2,000 and 20,000 rows (`scale_rows`) of
                 50 generated pictures, cap 200, and its slope per extra row (target <= 8
                 KiB/row); the rerun of the largest, finished, less the warm 1-row run's
                 wall time from `startup`, per row (target <= 2 ms/row); each size's
                 efficiency.
  9 fan-out      benchmarks/fanout.py: one i2v-fanout flow run of 600 rows in 4 shards over
                 two process workers on a long-lived `prefect server`, under a global
                 concurrency limit of C; efficiency ideal N*L/C over first submission ->
                 last landing (target >= 0.5), the parent flow run's wall time, max in
                 flight (<= C), Crashed task runs and flow runs not Completed (0).
 10 quality check benchmarks/qc_cost.py in-process: CPU of `i2v.qc.probe_video` per
                 video over 100 simulator renders, against decoding a whole clip.
  The efficiency rows also give wall to wall, as a user sees it: ideal / (the run's wall
  time - the warm 1-row run's from `startup`) (target >= 0.9).

Run options come from a YAML config: poll_interval_s at its default, expected_duration_s
= L (the provider's known typical time, as configs/atlascloud.yaml says 45 s for the
real one; the run still learns it), timeout_s 600, no Prefect global concurrency limit.
Before the efficiency runs the simulator's render cache is warmed (every picture x camera
move rendered once), so its video encoding is not charged to the pipeline.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import report
from harness import (
    PYTHON,
    CliRun,
    Processes,
    Simulator,
    free_port,
    http_json,
    run_child,
    run_cli,
    start_moto,
    wait_until_serving,
)

from i2v.config import BatchOptions

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EXAMPLES = HERE.parent / "examples"
PICTURES = ("astronaut.png", "coffee.png", "rocket.jpg")
VERBS = ("pan right", "pan left", "tilt up", "push in", "pull out", "orbit")
SCENARIOS = (
    "startup",
    "efficiency",
    "rerun",
    "memory",
    "sample",
    "cap",
    "scale",
    "fanout",
    "qc",
)
MIB = 1 << 20
BUCKET = "i2v-bench"


@dataclass(frozen=True)
class Plan:
    """What to run; the defaults are the full targets."""

    sizes: tuple[int, ...] = (200, 1000)
    latency_s: float = 2.0
    cap: int = 40
    concurrency: int = 40
    pad_bytes: int = 300 * MIB
    mem_rows: int = 3
    sample_rows: int = 10
    repeats: int = 3
    scenarios: tuple[str, ...] = SCENARIOS
    keep: bool = False
    scale_rows: tuple[int, ...] = (2000, 20000)
    scale_cap: int = 200
    scale_pictures: int = 50
    fanout_rows: int = 600
    fanout_shard_size: int | None = None  # the fan-out's own choice: a shard per worker

    def ideal_s(self, n: int) -> float:
        return self.latency_s * max(n / self.cap, 1.0)

    def timeout_s(self, n: int) -> float:
        return 300 + 10 * self.ideal_s(n)

    def settings(self) -> dict[str, Any]:
        defaults = BatchOptions()
        return {
            **asdict(self),
            "poll_interval_s": defaults.poll_interval_s,
            "expected_duration_s": self.latency_s,
        }


def _fast_schedule() -> Any:
    from i2v.polling import DurationEstimator, PollSchedule

    return PollSchedule(estimator=DurationEstimator(initial_s=1.0), min_interval_s=0.2)


QUICK = Plan(
    sizes=(40, 80),
    pad_bytes=20 * MIB,
    sample_rows=3,
    repeats=1,
    scale_rows=(200, 400),
    scale_pictures=5,
    fanout_rows=40,
    fanout_shard_size=10,
)


def parse_args(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument(
        "--sizes",
        help="batch sizes, comma-separated (default 200,1000); the sample loop is "
        "compared with the first, the rerun uses the largest",
    )
    parser.add_argument("--pad-mib", type=int, help="size of the big videos (default 300)")
    parser.add_argument("--mem-rows", type=int, help="rows per memory run (default 3)")
    parser.add_argument("--sample-rows", type=int, help="rows for the sample loop (default 10)")
    parser.add_argument(
        "--only", help=f"scenarios, comma-separated, from {','.join(SCENARIOS)} (default all)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Plan()
    changes: dict[str, Any] = {"keep": args.keep}
    if args.sizes:
        changes["sizes"] = tuple(int(s) for s in args.sizes.split(","))
    if args.pad_mib is not None:
        changes["pad_bytes"] = args.pad_mib * MIB
    if args.mem_rows is not None:
        changes["mem_rows"] = args.mem_rows
    if args.sample_rows is not None:
        changes["sample_rows"] = args.sample_rows
    if args.only:
        only = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = set(only) - set(SCENARIOS)
        if unknown:
            parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
        changes["scenarios"] = only
    return Plan(**{**asdict(base), **changes})


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def attempt(step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A scenario's figures, or {"error": ...} so the other scenarios still run."""
    try:
        return step()
    except Exception as exc:
        say(f"  failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


# ------------------------------------------------------------------------- records


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass
class Span:
    """First submission to last landing of a run, from its DEST/_state records."""

    first_submit: float
    last_land: float
    landed: int

    @property
    def actual_s(self) -> float:
        return self.last_land - self.first_submit

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> Span:
        starts = [epoch(r["submit_started_at"]) for r in records if r.get("submit_started_at")]
        landed = [r for r in records if r.get("phase") == "landed"]
        if not starts or not landed:
            raise RuntimeError("DEST/_state holds no submitted and landed records")
        return cls(min(starts), max(epoch(r["updated_at"]) for r in landed), len(landed))


def phase_medians(records: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds between recorded phases, over the records that reached both."""
    steps = {
        "post_s": ("submit_started_at", "submitted"),  # write-ahead + the generate POST
        "wait_s": ("submitted", "succeeded"),  # until a poll saw it done
        "land_s": ("succeeded", "landed"),  # download + check + store + record
    }
    spans: dict[str, list[float]] = {k: [] for k in steps}
    for r in records:
        at = {h["phase"]: epoch(h["at"]) for h in r.get("history", [])}
        at["submit_started_at"] = epoch(r["submit_started_at"]) if r.get("submit_started_at") else 0
        for key, (a, b) in steps.items():
            if at.get(a) and at.get(b):
                spans[key].append(at[b] - at[a])
    times = [r["predict_time_s"] for r in records if r.get("predict_time_s")]
    medians = {k: statistics.median(v) for k, v in spans.items() if v}
    if times:
        medians["provider_s"] = statistics.median(times)
    return medians


def tables_written_at(dest: Path) -> float:
    """When DEST/results.{parquet,csv} were last written (epoch)."""
    return max(p.stat().st_mtime for p in dest.glob("results.*"))


def local_records(dest: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_bytes()) for p in sorted((dest / "_state").glob("*.json"))]


# ----------------------------------------------------------------------- log marks

LOG_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \| \w+\s*\| (.*)$")
MARKS = {
    # cli/prefect_api.py's lines; Prefect's own "Starting temporary server" if it fell back.
    "server_start": re.compile(r"Starting (Prefect's )?temporary server"),
    "loaded": re.compile(r"i2v\.cli - Loaded and checked"),
    "server_ready": re.compile(r"temporary server is ready"),
    "flow_begin": re.compile(r"Flow run '[^']*' - Beginning flow run"),
    "flow_end": re.compile(r"Flow run '[^']*' - Finished in state"),
}


def log_marks(log: Path, started_at: float) -> dict[str, float]:
    """Epoch times of the first log line matching each of MARKS (Prefect logs local time)."""
    day = datetime.fromtimestamp(started_at)
    marks: dict[str, float] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        found = LOG_LINE.match(line)
        if not found:
            continue
        h, m, s, ms = (int(x) for x in found.groups()[:4])
        at = day.replace(hour=h, minute=m, second=s, microsecond=ms * 1000)
        if at < day - timedelta(minutes=1):
            at += timedelta(days=1)  # the run crossed midnight
        for name, pattern in MARKS.items():
            if name not in marks and pattern.search(found.group(5)):
                marks[name] = at.timestamp()
    return marks


def startup_parts(run: CliRun, span: Span, marks: dict[str, float]) -> dict[str, Any]:
    """A 1-row run's wall time, cut at its log marks and its state records.

    The CLI starts Prefect's temporary server first and loads and checks meanwhile, so
    the server's start is not a part: the parts are the CLI's loading, what it then
    waited for the server, and the flow run's creation; `server_start_s` (its start to
    its answer, overlapped) is reported beside them.
    """
    end = run.started_at + run.wall_s
    loaded, ready = marks.get("loaded"), marks.get("server_ready")
    go = max(loaded, ready) if loaded is not None and ready is not None else None
    cuts = [
        ("python + imports + checks", run.started_at, loaded),
        ("waiting for Prefect's temporary server", loaded, go),
        ("flow run start", go, marks.get("flow_begin")),
        ("flow set-up (rows, pictures, preflight)", marks.get("flow_begin"), span.first_submit),
        ("the video (submit -> landed)", span.first_submit, span.last_land),
        ("results table + flow end", span.last_land, marks.get("flow_end")),
        ("Prefect server stop + exit", marks.get("flow_end"), end),
    ]
    parts = {k: (b - a if a is not None and b is not None else None) for k, a, b in cuts}
    dominant = max((k for k in parts if parts[k] is not None), key=lambda k: parts[k] or 0.0)
    start = marks.get("server_start")
    return {
        "wall_s": run.wall_s,
        "parts": parts,
        "dominant": dominant,
        "server_start_s": ready - start if ready is not None and start is not None else None,
    }


# -------------------------------------------------------------------------- the bench


@dataclass
class S3:
    env: dict[str, str]
    client: Any

    def records(self, prefix: str) -> list[dict[str, Any]]:
        return [
            json.loads(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            for key in self.keys(f"{prefix}/_state/")
        ]

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def delete(self, prefix: str) -> None:
        keys = self.keys(prefix)
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": chunk})


class Bench:
    """One simulator, one scratch folder, the scenarios in order."""

    def __init__(self, plan: Plan, work: Path, procs: Processes) -> None:
        self.plan, self.work, self.procs = plan, work, procs
        self.inputs = work / "inputs"
        self.inputs.mkdir()
        for name in PICTURES:
            shutil.copy(EXAMPLES / name, self.inputs / name)
        self.sim = Simulator.start(procs, latency_s=plan.latency_s, max_concurrent=plan.cap)
        self.config = self._write_config()
        self.env = self._cli_env()
        self.finished: dict[int, tuple[Path, Path]] = {}  # n -> manifest, DEST
        self.results: dict[str, Any] = {}
        self._s3: S3 | None = None

    def _write_config(self) -> Path:
        path = self.work / "bench.yaml"
        path.write_text(
            "# expected_duration_s: the provider's typical job time, as configs/atlascloud.yaml\n"
            "# gives 45 s for the real one; the run still learns it from finished jobs.\n"
            f"expected_duration_s: {self.plan.latency_s}\n"
            "timeout_s: 600\n"
            "global_concurrency_limit: null\n"
            f"api:\n  simulator: false\n  base_url: {self.sim.url}\n",
            encoding="utf-8",
        )
        return path

    def _cli_env(self) -> dict[str, str]:
        mine = ("PREFECT_", "AWS_", "ATLASCLOUD_", "I2V_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(mine)}
        return {
            **env,
            "PREFECT_HOME": str(self.work / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "ATLASCLOUD_API_KEY": "bench-key",
            "ATLASCLOUD_BASE_URL": self.sim.url,
            "COLUMNS": "250",  # keep Prefect's log lines on one line each
        }

    def manifest(self, name: str, n: int) -> Path:
        """N distinct inputs: distinct prompts, the 3 pictures in turn."""
        path = self.inputs / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["id", "image", "prompt", "duration"])
            for i in range(n):
                prompt = f"{VERBS[i % len(VERBS)]}, take {i} ({name})"
                out.writerow([f"{name}-{i:05d}", PICTURES[i % len(PICTURES)], prompt, 6])
        return path

    def cli(
        self,
        name: str,
        manifest: Path,
        dest: str,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        n: int = 1,
    ) -> CliRun:
        say(f"  i2v run {name} ...")
        args = [str(manifest), "--dest", dest, "--config", str(self.config)]
        args += ["--concurrency", str(self.plan.concurrency), *extra]
        run = run_cli(self.procs, name, args, {**self.env, **(env or {})}, self.plan.timeout_s(n))
        say(f"  ... exit {run.exit_code} after {run.wall_s:.1f} s")
        return run

    def qc(self) -> dict[str, Any]:
        """The quality check's CPU per video, on the simulator's own renders."""
        import qc_cost

        return qc_cost.measure(videos=100, width=320)

    def run_all(self) -> None:
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "startup": self.startup,
            "efficiency": self.efficiency_all,
            "rerun": self.rerun,
            "memory": self.memory,
            "sample": self.sample,
            "cap": self.cap,
            "scale": self.scale,
            "fanout": self.fanout,
            "qc": self.qc,
        }
        for name in SCENARIOS:
            if name in self.plan.scenarios:
                say(f"{name}")
                self.results[name] = attempt(steps[name])
        self._cpu_per_video()
        self._wall_to_wall()

    def _warm_wall_s(self) -> float | None:
        """The startup scenario's warm 1-row run's wall time, if it ran."""
        wall = self.results.get("startup", {}).get("warm", {}).get("wall_s")
        return float(wall) if wall is not None else None

    def _wall_to_wall(self) -> None:
        """Efficiency as a user sees it: ideal / (wall time - a warm 1-row run's)."""
        base = self._warm_wall_s()
        for r in self.results.get("efficiency", {}).values():
            paired = r.get("plain_loop", {}).get("ours_walls_s")
            if paired:  # the rounds run beside the loop: medians of each
                r["walls_s"] = paired
                r["wall_1row_s"] = statistics.median(paired["one"])
                r["wall_n_s"] = statistics.median(paired["n"])
                r["wall_to_wall"] = r["plain_loop"]["ours_wall_to_wall"]
            elif "wall_s" in r:
                r["wall_1row_s"] = base
                fits = base is not None and r["wall_s"] > base
                r["wall_to_wall"] = r["ideal_s"] / (r["wall_s"] - base) if fits else None

    def _cpu_per_video(self) -> None:
        """CPU seconds (CLI + its Prefect server) each video adds to a 1-row run's."""
        base = self.results.get("startup", {}).get("warm", {})
        if "cli_cpu_s" not in base:
            return
        for r in self.results.get("efficiency", {}).values():
            if "cli_cpu_s" in r and r["n"] > 1:
                extra = r["cli_cpu_s"] + r["prefect_server_cpu_s"]
                extra -= base["cli_cpu_s"] + base["prefect_server_cpu_s"]
                r["cpu_per_video_s"] = extra / (r["n"] - 1)

    # 6 ------------------------------------------------------------------ start-up

    def startup(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # The first CLI run of the benchmark meets an empty PREFECT_HOME.
        out["cold"] = attempt(lambda: self._one_row("startup-cold"))
        out["warm"] = attempt(self._warm_runs)
        out["import_s"] = self._median_wall("import", "import flows.batch")
        out["python_s"] = self._median_wall("python", "pass")
        return out

    def _warm_runs(self) -> dict[str, Any]:
        """`repeats` warm 1-row runs: the one of median wall time, with every wall time
        (one sample right after the cold run read up to 1 s high)."""
        runs = [self._one_row(f"startup-warm-{i}") for i in range(self.plan.repeats)]
        runs.sort(key=lambda r: r["wall_s"])
        return {**runs[len(runs) // 2], "walls_s": [r["wall_s"] for r in runs]}

    def _one_row(self, name: str) -> dict[str, Any]:
        dest = self.work / "dest" / name
        run = self.cli(name, self.manifest(name, 1), str(dest), ("--verbose",))
        run.check()
        span = Span.of(local_records(dest))
        out = startup_parts(run, span, log_marks(run.log, run.started_at))
        return {**out, "cli_cpu_s": run.cpu_s, "prefect_server_cpu_s": run.children_cpu_s}

    def _median_wall(self, name: str, code: str) -> float:
        walls = [
            run_child(self.procs, f"{name}-{i}", [PYTHON, "-c", code])
            for i in range(self.plan.repeats)
        ]
        return statistics.median(walls)

    # 1, 2 ------------------------------------------------------------ efficiency

    def efficiency_all(self) -> dict[str, Any]:
        self.warm_renders()
        return {str(n): attempt(partial(self.efficiency, n)) for n in self.plan.sizes}

    def warm_renders(self) -> None:
        """Render every picture x camera move once before measuring.

        The simulator renders a real H.264 video on the first download of each picture
        and move and caches it; left cold, those renders (about 0.4 s of CPU each, on
        the same 2 cores) would be charged to the pipeline. A real provider's GPUs are
        not on our CPU.
        """
        import asyncio

        from i2v.client import AtlasClient

        async def one(client: AtlasClient, picture: str, verb: str) -> None:
            data = (self.inputs / picture).read_bytes()
            kind = "image/png" if picture.endswith(".png") else "image/jpeg"
            up = await client.upload_media(data, filename=picture, content_type=kind)
            pred = await client.generate_video(
                "minimax/hailuo-2.3/i2v-standard",
                {"image": up.download_url, "prompt": f"{verb}, warm-up", "duration": 6},
            )
            done = await client.wait_for_prediction(
                pred.id, deadline_s=120, schedule=_fast_schedule()
            )
            with tempfile.TemporaryFile() as sink:
                await client.download_output(str(done.output_url), sink)

        async def main() -> None:
            async with AtlasClient(api_key="bench-key", base_url=self.sim.url) as client:
                await asyncio.gather(*(one(client, p, v) for p in PICTURES for v in VERBS))

        say("  warming the simulator's render cache ...")
        asyncio.run(main())
        self.sim.reset()

    def efficiency(self, n: int) -> dict[str, Any]:
        name = f"n{n}"
        manifest, dest = self.manifest(name, n), self.work / "dest" / name
        self.sim.reset()
        sim_cpu = self.sim.cpu_s() or 0.0
        run = self.cli(name, manifest, str(dest), n=n)
        stats = self.sim.stats()
        sim_cpu = (self.sim.cpu_s() or 0.0) - sim_cpu
        run.check()
        records = local_records(dest)
        span = Span.of(records)
        if span.landed != n:
            raise RuntimeError(f"{span.landed} of {n} inputs landed")
        self.finished[n] = (manifest, dest)
        jobs = stats["jobs_created"]
        loop = self.plain_loop(n) if n == self.plan.sizes[0] else None
        return {
            **({"plain_loop": loop} if loop else {}),
            "n": n,
            "ideal_s": self.plan.ideal_s(n),
            "actual_s": span.actual_s,
            "efficiency": self.plan.ideal_s(n) / span.actual_s,
            "wall_s": run.wall_s,
            "startup_s": span.first_submit - run.started_at,
            "end_s": run.started_at + run.wall_s - span.last_land,
            "table_s": tables_written_at(dest) - span.last_land,
            "landed": span.landed,
            "jobs_created": jobs,
            "polls": stats["polls"],
            "polls_per_video": stats["polls"] / jobs if jobs else float("nan"),
            "uploads": stats["uploads"],
            "http_429": stats["responses_by_status"].get("429", 0),
            "max_in_flight": stats["max_in_flight"],
            "responses_by_status": stats["responses_by_status"],
            "phases": phase_medians(records),
            "peak_rss_mib": run.peak_rss_mib,
            "cli_cpu_s": run.cpu_s,
            "prefect_server_cpu_s": run.children_cpu_s,
            "sim_cpu_s": sim_cpu,
        }

    def plain_loop(self, n: int) -> dict[str, Any]:
        """The pipeline beside benchmarks/plain_loop.py on the same simulator, right after
        the pipeline's run: a warm-up row of the loop, then `repeats` rounds of a 1-row
        and an N-row run of each. Wall to wall, for each side = ideal / (the median N-row
        wall - the median 1-row wall). One pair decides nothing: the pipeline's 1-row
        runs vary by a second or more (its temporary Prefect server's start), as much as
        the gap measured."""
        walls: dict[str, dict[str, list[float]]] = {"ours": {}, "loop": {}}
        out: dict[str, Any] = {}
        self._loop_run(n, "warm-up", 1)
        for i in range(self.plan.repeats):
            for key, rows in (("one", 1), ("n", n)):
                name = f"pair{i}-{key}-{n}"
                self.sim.reset()
                run = self.cli(name, self.manifest(name, rows), str(self.work / "dest" / name))
                run.check()
                walls["ours"].setdefault(key, []).append(run.wall_s)
                wall, figures = self._loop_run(n, f"{key}-{i}", rows)
                walls["loop"].setdefault(key, []).append(wall)
                if key == "n":
                    out = figures
        ideal = self.plan.ideal_s(n)
        for side, got in walls.items():
            one, many = statistics.median(got["one"]), statistics.median(got["n"])
            out[f"{side}_walls_s"] = got
            out[f"{side}_wall_to_wall"] = ideal / (many - one) if many > one else None
        out.update(wall_s=statistics.median(walls["loop"]["n"]))
        out.update(wall_1row_s=statistics.median(walls["loop"]["one"]))
        out["wall_to_wall"] = out["loop_wall_to_wall"]
        out["efficiency"] = ideal / (out["last_land"] - out["first_submit"])
        return out

    def _loop_run(self, n: int, key: str, rows: int) -> tuple[float, dict[str, Any]]:
        """One run of the plain loop: its wall time, and its own JSON line of figures."""
        manifest = self.manifest(f"loop-{key}-{n}", rows)
        self.sim.reset()
        say(f"  plain asyncio loop, {rows} rows ...")
        args = [PYTHON, str(HERE / "plain_loop.py"), str(manifest)]
        args += [str(self.work / "loop" / key), "--concurrency", str(self.plan.concurrency)]
        args += ["--expected", f"{self.plan.latency_s:g}"]
        args += ["--poll-interval", f"{BatchOptions().poll_interval_s:g}"]
        wall = run_child(self.procs, f"loop-{key}-{n}", args, self.env, 600)
        text = (self.procs.logs / f"loop-{key}-{n}.log").read_text()
        out = json.loads([line for line in text.splitlines() if line[:1] == "{"][-1])
        out["max_in_flight"] = self.sim.stats()["max_in_flight"]
        return wall, out

    # 7 ------------------------------------------------------------ provider cap

    def cap(self) -> dict[str, Any]:
        """N = the first size against a long-lived `prefect server`, without and with a
        global concurrency limit of C slots (what teams sharing a cap run)."""
        n = self.plan.sizes[0]
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        server_env = {**self.env, "PREFECT_HOME": str(self.work / "prefect-server-home")}
        server = self.procs.start(
            "prefect-server",
            [
                str(Path(PYTHON).parent / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            server_env,
        )
        wait_until_serving(f"{api}/health", server, timeout_s=120)
        name = "atlascloud-bench"
        http_json(f"{api}/v2/concurrency_limits/", {"name": name, "limit": self.plan.cap})
        env = {"PREFECT_API_URL": api}
        self.warm_renders()
        out: dict[str, Any] = {"n": n, "limit": self.plan.cap}
        for label, limit in (("without", "null"), ("with", name)):
            config = self.work / f"cap-{label}.yaml"
            config.write_text(
                self.config.read_text(encoding="utf-8").replace(
                    "global_concurrency_limit: null", f"global_concurrency_limit: {limit}"
                ),
                encoding="utf-8",
            )
            key = f"cap-{label}-n{n}"
            manifest, dest = self.manifest(key, n), self.work / "dest" / key
            self.sim.reset()
            say(f"  i2v run {key} ...")
            args = [str(manifest), "--dest", str(dest), "--config", str(config)]
            args += ["--concurrency", str(self.plan.concurrency)]
            run = run_cli(self.procs, key, args, {**self.env, **env}, self.plan.timeout_s(n))
            say(f"  ... exit {run.exit_code} after {run.wall_s:.1f} s")
            run.check()
            span = Span.of(local_records(dest))
            out[label] = {
                "efficiency": self.plan.ideal_s(n) / span.actual_s,
                "actual_s": span.actual_s,
                "wall_s": run.wall_s,
                "max_in_flight": self.sim.stats()["max_in_flight"],
            }
        self.procs.stop(server)
        return out

    # 8 --------------------------------------------------------------------- scale

    def scale(self) -> dict[str, Any]:
        """benchmarks/scale.py's sizes, with the startup scenario's warm 1-row run."""
        import scale

        plan = scale.ScalePlan(
            rows=self.plan.scale_rows,
            latency_s=self.plan.latency_s,
            cap=self.plan.scale_cap,
            pictures=self.plan.scale_pictures,
        )
        return scale.run(
            plan,
            procs=self.procs,
            work=self.work,
            env=self.env,
            say=say,
            base_wall_s=self._warm_wall_s(),
        )

    # 9 ------------------------------------------------------------------- fan-out

    def fanout(self) -> dict[str, Any]:
        """benchmarks/fanout.py: one i2v-fanout run over two process workers."""
        import fanout

        n = self.plan.fanout_rows
        plan = fanout.FanoutPlan(
            rows=n,
            shard_size=self.plan.fanout_shard_size,
            latency_s=self.plan.latency_s,
            cap=self.plan.cap,
            concurrency=self.plan.concurrency,
            poll_interval_s=BatchOptions().poll_interval_s,
            timeout_s=self.plan.timeout_s(n),
        )
        self.warm_renders()
        return fanout.run(
            plan,
            procs=self.procs,
            work=self.work,
            sim=self.sim,
            base_env=self.env,
            manifest=self.manifest("fanout", n),
            say=say,
            span_of=lambda dest: Span.of(local_records(dest)),
        )

    # 4 --------------------------------------------------------------------- rerun

    def rerun(self) -> dict[str, Any]:
        if not self.finished:
            raise RuntimeError("needs a finished batch from the efficiency scenario")
        n = max(self.finished)
        manifest, dest = self.finished[n]
        self.sim.reset()
        run = self.cli(f"rerun-n{n}", manifest, str(dest), n=n)
        stats = self.sim.stats()
        run.check()
        return {
            "n": n,
            "wall_s": run.wall_s,
            "api_calls": sum(stats["responses_by_status"].values()),
            "responses_by_status": stats["responses_by_status"],
            "peak_rss_mib": run.peak_rss_mib,
        }

    # 3 -------------------------------------------------------------------- memory

    def memory(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for where in ("local", "s3"):
            for size, pad in (("tiny", 0), ("big", self.plan.pad_bytes)):
                key = f"{where}-{size}"
                out[key] = attempt(partial(self._memory_run, where, key, pad))
        return out

    def _memory_run(self, where: str, key: str, pad: int) -> dict[str, Any]:
        name = f"mem-{key}"
        manifest = self.manifest(name, self.plan.mem_rows)
        s3 = self.s3() if where == "s3" else None
        dest = f"s3://{BUCKET}/{name}" if s3 else str(self.work / "dest" / name)
        self.sim.configure(pad_output_to_bytes=pad)
        try:
            self.sim.reset()
            run = self.cli(name, manifest, dest, env=s3.env if s3 else None)
            run.check()
            records = s3.records(name) if s3 else local_records(Path(dest))
        finally:
            self.sim.configure(pad_output_to_bytes=0)
            if s3:
                s3.delete(f"{name}/")
            else:
                shutil.rmtree(dest, ignore_errors=True)
        sizes = [r.get("video_bytes") or 0 for r in records if r.get("phase") == "landed"]
        if len(sizes) != self.plan.mem_rows:
            raise RuntimeError(f"{len(sizes)} of {self.plan.mem_rows} videos landed")
        return {
            "rows": len(sizes),
            "video_mib": max(sizes) / MIB,
            "peak_rss_mib": run.peak_rss_mib,
            "wall_s": run.wall_s,
        }

    def s3(self) -> S3:
        """The moto server and its bucket, started on first use."""
        if self._s3 is None:
            import boto3

            endpoint = start_moto(self.procs)
            creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            )
            client.create_bucket(Bucket=BUCKET)
            env = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1", **creds}
            self._s3 = S3(env=env, client=client)
        return self._s3

    # 5 -------------------------------------------------------------- sample loop

    def sample(self) -> dict[str, Any]:
        k, n = self.plan.sample_rows, self.plan.sizes[0]
        result = self.work / "sample.json"
        args = [PYTHON, str(HERE / "_sample_loop.py"), str(self.manifest("sample", k))]
        args += [str(self.work / "dest" / "sample"), str(result)]
        self.sim.reset()
        say(f"  the sample loop over {k} rows ...")
        run_child(self.procs, "sample-loop", args, self.env, timeout_s=120 + 60 * k)
        data = json.loads(result.read_text())
        per_row = statistics.mean(data["row_s"])
        pipeline = self.results.get("efficiency", {}).get(str(n), {}).get("wall_s")
        return {
            "rows": k,
            "poll_s": data["poll_s"],
            "row_s": data["row_s"],
            "per_row_s": per_row,
            "n": n,
            "extrapolated_s": per_row * n,
            "pipeline_wall_s": pipeline,
            "speedup": per_row * n / pipeline if pipeline else None,
            "api_calls": sum(self.sim.stats()["responses_by_status"].values()),
        }


# --------------------------------------------------------------------------- main


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def has_error(value: Any) -> bool:
    if isinstance(value, dict):
        # "failures": runs that failed after measuring (the scale scenario keeps those).
        return "error" in value or "failures" in value or any(has_error(v) for v in value.values())
    return False


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    # Every `finally` runs and every child is stopped on Ctrl-C, SIGTERM or SIGHUP.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    host = report.machine()
    work = Path(tempfile.mkdtemp(prefix="i2v-bench-"))
    say(f"scratch folder {work}; plan {plan}")
    results: dict[str, Any] = {}
    try:
        with Processes(work / "logs") as procs:
            bench = Bench(plan, work, procs)
            try:
                bench.run_all()
            finally:
                results = bench.results
    except KeyboardInterrupt:
        say("interrupted; every process the benchmark started was stopped")
        return 130
    finally:
        shutil.rmtree(RESULTS / "logs", ignore_errors=True)
        if (work / "logs").is_dir():
            shutil.copytree(work / "logs", RESULTS / "logs")
        if not plan.keep:
            shutil.rmtree(work, ignore_errors=True)
    host["load_after"] = [round(x, 2) for x in os.getloadavg()]
    table = report.render(plan.settings(), host, results)
    report.write(RESULTS, table, {"plan": plan.settings(), "machine": host, "results": results})
    print(table)
    return 1 if has_error(results) else 0


if __name__ == "__main__":
    sys.exit(main())
