"""Where a landing's memory goes: local DEST against s3:// DEST, 3 x 300 MiB videos.

    .venv/bin/python benchmarks/s3_memory_profile.py                 # the land path, both DESTs
    .venv/bin/python benchmarks/s3_memory_profile.py --dest s3 --trace
    .venv/bin/python benchmarks/s3_memory_profile.py --dest s3 --env MALLOC_ARENA_MAX=1
    .venv/bin/python benchmarks/s3_memory_profile.py --dest s3 --set upload.use_threads=1
    .venv/bin/python benchmarks/s3_memory_profile.py --cli --dest s3 --repeats 3

The simulator (`python -m i2v.simulator.server`) and a moto server run as children on
loopback. N predictions are made once with the real client; then, for each DEST and
for tiny (unpadded) and padded outputs, a fresh child process lands the N outputs
together as `i2v.landing.land` does (streamed download to a staged file, MP4 check, QC
probe, `Storage.put_file`, `_unstage`), then fetches one frame of each landed video as
the contact sheet does for videos it has no frame of (`get_file` for S3). Peak RSS is
per process, hence one child per case; the figure is padded minus tiny, like the
benchmark's. Each child samples its RSS, threads and glibc's `mallinfo2` every 10 ms,
reports them at the RSS peak of each phase, and lists its malloc arenas at the end.

`--trace` adds tracemalloc (Python allocations only, by traceback) and prints the top
allocators at the traced peak; it slows the run several times, so those RSS figures
are not comparable. `--set`, `--env`, `--mallopt` and `--trim` are trials.

`--cli` runs the benchmark's own memory runs instead (`bench.py --only memory`: the real
`i2v run` through Prefect), the CLI sampled by `_cli_memprobe.py`; `--set`, `--env` and
`--trim` apply there too.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import PYTHON, Processes, Simulator, start_moto

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
MIB = 1 << 20
BUCKET = "i2v-memprofile"


# ------------------------------------------------------------------- child: sampling


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes sbrk'd/mapped for the arenas' heaps
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmapped chunks (big allocations)
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use in the arenas
            "fordblks",  # bytes free in the arenas: kept by malloc, still RSS if touched
            "keepcost",
        )
    ]


_libc = ctypes.CDLL(None)
_mallinfo2 = getattr(_libc, "mallinfo2", None)
if _mallinfo2 is not None:
    _mallinfo2.restype = _MallInfo2


def mallinfo() -> dict[str, float]:
    if _mallinfo2 is None:
        return {}
    info = _mallinfo2()
    return {k: getattr(info, k) / MIB for k in ("arena", "hblkhd", "uordblks", "fordblks")}


def proc_status() -> dict[str, float]:
    """VmRSS/VmHWM (MiB) and thread count of this process."""
    found: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            found[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            found[key] = int(value)
    return found


def arenas() -> list[dict[str, float]]:
    """Per arena (glibc `malloc_info`): MiB it spans and MiB free in it."""
    import re

    with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
        _libc.fopen.restype = ctypes.c_void_p
        fp = _libc.fopen(tmp.name.encode(), b"w")
        _libc.malloc_info(0, ctypes.c_void_p(fp))
        _libc.fclose(ctypes.c_void_p(fp))
        xml = Path(tmp.name).read_text()
    found = []
    for heap in re.findall(r'<heap nr="\d+">(.*?)</heap>', xml, re.S):
        free = re.search(r'<total type="rest" count="\d+" size="(\d+)"', heap)
        fast = re.search(r'<total type="fast" count="\d+" size="(\d+)"', heap)
        span = re.search(r'<system type="current" size="(\d+)"', heap)
        found.append(
            {
                "span": int(span.group(1)) / MIB if span else 0.0,
                "free": (int(free.group(1)) + int(fast.group(1) if fast else 0)) / MIB
                if free
                else 0.0,
            }
        )
    return found


class Sampler:
    """RSS, threads, malloc state every `every_s`, peak per phase; tracemalloc snapshot
    at the traced peak when tracing."""

    def __init__(self, every_s: float = 0.01, trace: bool = False) -> None:
        self.every_s, self.trace = every_s, trace
        self.phase = "idle"
        self.put_s: list[float] = []  # each put_file's seconds
        self.peaks: dict[str, dict[str, float]] = {}
        self.traced_peak = 0
        self.snapshot: tracemalloc.Snapshot | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        now = {**proc_status(), **mallinfo()}
        best = self.peaks.setdefault(self.phase, {})
        if now["VmRSS"] > best.get("VmRSS", 0):
            best.update(now)  # the whole picture at this phase's RSS peak
        best["Threads_max"] = max(best.get("Threads_max", 0), now["Threads"])
        if self.trace:
            current, _ = tracemalloc.get_traced_memory()
            # A snapshot costs a lot: only on a clearly new peak.
            if current > self.traced_peak * 1.03 + MIB:
                self.traced_peak = current
                self.snapshot = tracemalloc.take_snapshot()
                self.snapshot_phase = self.phase

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()


# ----------------------------------------------------------------------- child: land


def tweak_s3(settings: list[str]) -> None:
    """Apply NAME=VALUE to i2v.s3_storage's UPLOAD_CONFIG/DOWNLOAD_CONFIG (sizes in MiB)."""
    from i2v import s3_storage as s3

    for item in settings:
        name, _, value = item.partition("=")
        if name.isupper():  # a module constant, e.g. BIG_TRANSFERS_AT_ONCE=4
            setattr(s3, name, int(value))
            continue
        target, _, attr = name.rpartition(".")
        configs = {"upload": s3.UPLOAD_CONFIG, "download": s3.DOWNLOAD_CONFIG}
        for config in [configs[target]] if target else configs.values():
            number = float(value)
            setattr(
                config,
                attr,
                int(number * MIB) if attr.endswith(("chunksize", "threshold")) else int(number),
            )


MALLOPT = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3, "M_ARENA_MAX": -8}


def trim_after_transfers() -> None:
    """Trial: give malloc's free pages back after every landing and S3 transfer."""
    from i2v.local_storage import LocalStorage
    from i2v.s3_storage import S3Storage

    for cls, name in ((S3Storage, "put_file"), (S3Storage, "get_file"), (LocalStorage, "put_file")):
        original = getattr(cls, name)

        def trimmed(self: Any, *a: Any, _original: Any = original, **kw: Any) -> Any:
            try:
                return _original(self, *a, **kw)
            finally:
                _libc.malloc_trim(0)

        setattr(cls, name, trimmed)


async def land_all(dest_uri: str, urls: list[str], sampler: Sampler) -> None:
    from i2v.client import AtlasClient
    from i2v.dest import open_storage
    from i2v.landing import _unstage
    from i2v.media import check_mp4_file
    from i2v.qc import probe_video

    dest = open_storage(dest_uri)
    put_s = sampler.put_s
    staging = await asyncio.to_thread(dest.staging_dir)

    async def land(i: int, url: str) -> None:
        tmp = staging / f"v{i}.mp4.part"
        size = 0
        try:
            with open(tmp, "wb") as sink:  # noqa: ASYNC230 - local staging file
                size = (await client.download_output(url, sink)).bytes
            sampler.phase = "qc"
            await asyncio.to_thread(check_mp4_file, tmp)
            await asyncio.to_thread(probe_video, tmp, expected_duration_s=6)
            sampler.phase = "put_file"
            t0 = time.monotonic()
            await asyncio.to_thread(dest.put_file, f"videos/v{i}.mp4", tmp)
            put_s.append(time.monotonic() - t0)
        finally:
            await asyncio.to_thread(_unstage, tmp, size)

    async with AtlasClient(api_key="profile") as client:
        sampler.phase = "download"
        await asyncio.gather(*(land(i, url) for i, url in enumerate(urls)))
    sampler.phase = "sheet"
    await asyncio.to_thread(sheet_frames, dest, len(urls))


def sheet_frames(dest: Any, n: int) -> None:
    """One frame of each video, from a local copy, 4 at a time (`tasks.artifacts`)."""
    from i2v.local_storage import LocalStorage
    from i2v.media import video_frame

    def frame(i: int) -> None:
        key = f"videos/v{i}.mp4"
        if isinstance(dest, LocalStorage):
            video_frame(Path(dest.key_uri(key)), index=24, width=240)
            return
        fd, name = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
        try:
            dest.get_file(key, Path(name))
            video_frame(Path(name), index=24, width=240)
        finally:
            os.unlink(name)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(frame, range(n)))


def child(args: argparse.Namespace) -> None:
    # What the CLI holds before landing: these imports are not the landing's cost.
    import av  # noqa: F401
    import boto3  # noqa: F401
    import httpx  # noqa: F401

    import i2v.s3_storage  # noqa: F401

    tweak_s3(args.set)
    for item in args.mallopt:
        name, _, value = item.partition("=")
        _libc.mallopt(MALLOPT[name], int(value))
    if args.trim:
        trim_after_transfers()
    urls = json.loads(Path(args.urls).read_text())
    if args.trace:
        tracemalloc.start(25)
    with Sampler(trace=args.trace) as sampler:
        sampler.sample()
        base = dict(sampler.peaks["idle"])
        t0 = time.monotonic()
        asyncio.run(land_all(args.dest_uri, urls, sampler))
        wall = time.monotonic() - t0
        sampler.phase = "done"
        sampler.sample()
    report: dict[str, Any] = {
        "base_rss": base["VmRSS"],
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
        "put_s": sampler.put_s,
        "phases": sampler.peaks,
        "arenas": arenas(),
    }
    if args.trace and sampler.snapshot is not None:
        report["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / MIB
        report["snapshot_phase"] = sampler.snapshot_phase
        stats = sampler.snapshot.filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        ).statistics("traceback")
        report["top"] = [
            {"mib": s.size / MIB, "count": s.count, "where": s.traceback.format(limit=6)}
            for s in stats[:12]
        ]
    Path(args.report).write_text(json.dumps(report))


# --------------------------------------------------------------------- parent: cases


async def make_outputs(sim_url: str, n: int) -> list[str]:
    """N finished predictions' output URLs, made with the real client."""
    from i2v.client import AtlasClient
    from i2v.models import DEFAULT_MODEL, build_inputs, get_model
    from i2v.polling import DurationEstimator, PollSchedule

    spec = get_model(DEFAULT_MODEL)
    async with AtlasClient(api_key="profile", base_url=sim_url) as client:
        picture = (EXAMPLES / "astronaut.png").read_bytes()
        media = await client.upload_media(picture, filename="a.png", content_type="image/png")
        schedule = PollSchedule(estimator=DurationEstimator(initial_s=0.5), min_interval_s=0.1)

        async def one(i: int) -> str:
            inputs = build_inputs(
                spec, image=media.download_url, prompt=f"pan right {i}", duration=6
            )
            made = await client.generate_video(DEFAULT_MODEL, inputs)
            done = await client.wait_for_prediction(made.id, deadline_s=60, schedule=schedule)
            assert done.output_url
            return done.output_url

        return list(await asyncio.gather(*(one(i) for i in range(n))))


@contextmanager
def services(work: Path) -> Iterator[tuple[Processes, Simulator, dict[str, str]]]:
    with Processes(work / "logs") as procs:
        sim = Simulator.start(procs, latency_s=0.2, max_concurrent=64)
        endpoint = start_moto(procs)
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "profile",
            "AWS_SECRET_ACCESS_KEY": "profile",
        }
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="profile",
            aws_secret_access_key="profile",
        ).create_bucket(Bucket=BUCKET)
        yield procs, sim, env


def run_case(
    work: Path, env: dict[str, str], dest: str, urls: Path, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    report = work / f"{tag}.json"
    dest_uri = f"s3://{BUCKET}/{tag}" if dest == "s3" else str(work / "dest" / tag)
    cmd = [PYTHON, __file__, "--child", "--dest-uri", dest_uri, "--urls", str(urls)]
    cmd += ["--report", str(report), *(["--trace"] if args.trace else [])]
    for item in args.set:
        cmd += ["--set", item]
    for item in args.mallopt:
        cmd += ["--mallopt", item]
    cmd += ["--trim"] if args.trim else []
    extra = dict(e.partition("=")[::2] for e in args.env)
    subprocess.run(cmd, env={**os.environ, **env, **extra}, check=True, cwd=HERE.parent)
    shutil.rmtree(work / "dest" / tag, ignore_errors=True)
    return dict(json.loads(report.read_text()))


def show(tag: str, r: dict[str, Any]) -> None:
    puts = ", ".join(f"{t:.1f}" for t in r["put_s"])
    print(
        f"  {tag}: peak RSS {r['peak_rss']:.0f} MiB (start {r['base_rss']:.0f}), "
        f"{r['wall_s']:.1f} s; put_file {puts} s"
    )
    for phase, p in r["phases"].items():
        malloc = (
            f"; malloc arenas {p['arena']:.0f} MiB ({p['uordblks']:.0f} in use, "
            f"{p['fordblks']:.0f} free), mmapped {p['hblkhd']:.0f}"
            if "arena" in p
            else ""
        )
        print(
            f"    {phase:9} RSS {p['VmRSS']:.0f} (anon {p.get('RssAnon', 0):.0f}, file "
            f"{p.get('RssFile', 0):.0f}), threads <= {p['Threads_max']:.0f}{malloc}"
        )
    spans = r.get("arenas", [])
    if spans:
        print(
            f"    at the end: {len(spans)} malloc arenas, "
            + ", ".join(f"{a['span']:.0f}/{a['free']:.0f}" for a in spans)
            + " MiB (spanned/free)"
        )
    if "top" in r:
        print(
            f"    tracemalloc peak {r['traced_peak_mib']:.1f} MiB; at it ({r['snapshot_phase']}):"
        )
        for t in r["top"][:8]:
            print(f"      {t['mib']:7.2f} MiB in {t['count']} blocks")
            for line in t["where"][-6:]:
                print(f"          {line}")


def parent(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="i2v-memprofile-"))
    try:
        with services(work) as (_, sim, env):
            urls = work / "urls.json"
            urls.write_text(json.dumps(asyncio.run(make_outputs(sim.url, args.videos))))
            deltas: dict[str, list[float]] = {}
            for round_ in range(args.repeats):
                for dest in args.dest.split(","):
                    runs: dict[str, dict[str, Any]] = {}
                    for size, pad in (("tiny", 0), ("big", args.mib * MIB)):
                        sim.configure(pad_output_to_bytes=pad)
                        tag = f"{dest}-{size}-{round_}"
                        runs[size] = run_case(work, env, dest, urls, args, tag)
                        show(tag, runs[size])
                    delta = runs["big"]["peak_rss"] - runs["tiny"]["peak_rss"]
                    deltas.setdefault(dest, []).append(delta)
                    print(
                        f"{dest}: {delta:+.1f} MiB for {args.videos} x {args.mib} MiB", flush=True
                    )
            sim.configure(pad_output_to_bytes=0)
        for dest, values in deltas.items():
            print(
                f"{dest} DEST: {statistics.median(values):+.1f} MiB median "
                f"({', '.join(f'{v:+.1f}' for v in values)})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cli_runs(args: argparse.Namespace) -> None:
    """The benchmark's memory runs (`bench.py --only memory`: the real `i2v run`), with
    the CLI sampled by `_cli_memprobe.py`; `--repeats` rounds, medians at the end."""
    import bench
    import harness

    harness.PROBE = HERE / "_cli_memprobe.py"
    os.environ["MEMPROBE_ENV"] = " ".join(args.env)  # read by Bench: before it starts
    os.environ["MEMPROBE_SET"] = " ".join(args.set)
    os.environ["MEMPROBE_TRIM"] = "1" if args.trim else ""
    plan = bench.Plan(pad_bytes=args.mib * MIB, mem_rows=args.videos, scenarios=("memory",))
    work = Path(tempfile.mkdtemp(prefix="i2v-memprofile-"))
    deltas: dict[str, list[float]] = {}
    try:
        with Processes(work / "logs") as procs:
            runner = bench.Bench(plan, work, procs)
            for _ in range(args.repeats):
                for where in args.dest.split(","):
                    peaks = {}
                    for size, pad in (("tiny", 0), ("big", plan.pad_bytes)):
                        key = f"{where}-{size}"
                        got = runner._memory_run(where, key, pad)
                        probe = json.loads((procs.logs / f"mem-{key}.probe.json").read_text())
                        peaks[size] = got["peak_rss_mib"]
                        p = probe["peak"]
                        spans = probe["arenas"]
                        print(
                            f"  {key}: peak RSS {got['peak_rss_mib']:.0f} MiB at "
                            f"{p['at_s']:.1f} s of {got['wall_s']:.1f} s, threads "
                            f"{p['Threads']:.0f}; malloc arenas {p['arena']:.0f} MiB "
                            f"({p['uordblks']:.0f} in use, {p['fordblks']:.0f} free); at exit "
                            f"{len(spans)} arenas, {sum(a['free'] for a in spans):.0f} MiB free",
                            flush=True,
                        )
                    deltas.setdefault(where, []).append(peaks["big"] - peaks["tiny"])
                    print(f"{where}: {deltas[where][-1]:+.1f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for where, values in deltas.items():
        print(
            f"{where} DEST (i2v run): {statistics.median(values):+.1f} MiB median "
            f"({', '.join(f'{v:+.1f}' for v in values)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--mib", type=int, default=300, help="size of the padded videos")
    parser.add_argument("--dest", default="local,s3", help="local, s3 or both")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the children")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the children")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="[upload.|download.]ATTR=VALUE on i2v.s3_storage's TransferConfigs (sizes in MiB)",
    )
    parser.add_argument(
        "--mallopt", action="append", default=[], help=f"NAME=VALUE, NAME in {', '.join(MALLOPT)}"
    )
    parser.add_argument("--trim", action="store_true", help="malloc_trim after S3 transfers")
    parser.add_argument(
        "--cli", action="store_true", help="the benchmark's `i2v run` memory runs instead"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dest-uri", help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    elif args.cli:
        cli_runs(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
