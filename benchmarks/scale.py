"""How memory and fixed costs grow with the rows: the bench's `scale` scenario.

    .venv/bin/python benchmarks/scale.py                      # 2,000 and 20,000 rows
    .venv/bin/python benchmarks/scale.py --rows 100000        # one size (~40 GB of DEST)
    .venv/bin/python benchmarks/bench.py --only startup,scale # inside the bench's table

Each size is a fresh `i2v run` of N distinct inputs (50 generated pictures in turn,
distinct prompts) into a local DEST, against a simulator of its own in its own process
with a provider cap of C (`--concurrency C`, default 200) and latency L (default 2 s).
First one run over every picture x camera move warms the simulator's render cache (a
real provider's GPUs are not on our CPU) and PREFECT_HOME.

Reported per size: peak RSS of the process that runs the flow, wall time, efficiency
(ideal N*L/C over first submission -> last landing, from DEST/_state) and wall to wall
(ideal over the wall time less a warm 1-row run's); then the rerun of the same
finished batch: its wall time less the warm 1-row run's, per row (what each finished
row costs a rerun), and its API calls (0). The slope is (peak RSS at the largest size
- at the smallest) / the rows between them: what one more row costs at peak; with a
single size, against the warm 1-row run's peak RSS.

The warm 1-row run: the bench passes its `startup` scenario's; standalone (or when the
bench did not run `startup`) one is run here, after the warm-up. Each size's DEST is
deleted after its rerun; a size is refused up front when the disk has no room for its
videos (about 0.4 MiB each).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import Processes, Simulator, run_cli

KIB = 1024
GIB = 1 << 30
VERBS = ("pan right", "pan left", "tilt up", "push in", "pull out", "orbit")


@dataclass(frozen=True)
class ScalePlan:
    rows: tuple[int, ...] = (2000, 20000)
    latency_s: float = 2.0
    cap: int = 200
    pictures: int = 50

    def ideal_s(self, n: int) -> float:
        return self.latency_s * max(n / self.cap, 1.0)

    def timeout_s(self, n: int) -> float:
        return 600 + 20 * self.ideal_s(n)


def make_pictures(folder: Path, count: int) -> list[str]:
    """COUNT distinct 640x480 PNG pictures (random ellipses on different colours)."""
    import random

    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        rng = random.Random(i)
        img = Image.new("RGB", (640, 480), (rng.randrange(256), 40, 90))
        draw = ImageDraw.Draw(img)
        for _ in range(40):  # texture, so a camera move shows (and QC sees motion)
            x, y = rng.randrange(640), rng.randrange(480)
            w, h = rng.randrange(20, 160), rng.randrange(20, 160)
            fill = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            draw.ellipse((x, y, x + w, y + h), fill=fill)
        name = f"pic-{i:02d}.png"
        img.save(folder / name)
        names.append(name)
    return names


def write_manifest(path: Path, name: str, n: int, pictures: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["id", "image", "prompt", "duration"])
        for i in range(n):
            prompt = f"{VERBS[i % len(VERBS)]}, take {i} ({name})"
            out.writerow([f"{name}-{i:06d}", pictures[i % len(pictures)], prompt, 6])
    return path


def span(dest: Path) -> tuple[float, float, int]:
    """First submission, last landing (epoch) and landed count, from DEST/_state."""

    def epoch(s: str) -> float:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

    starts, ends = [], []
    for p in (dest / "_state").glob("*.json"):
        r = json.loads(p.read_bytes())
        if r.get("submit_started_at"):
            starts.append(epoch(r["submit_started_at"]))
        if r.get("phase") == "landed":
            ends.append(epoch(r["updated_at"]))
    if not starts or not ends:
        raise RuntimeError(f"{dest}/_state holds no submitted and landed records")
    return min(starts), max(ends), len(ends)


class Scale:
    """One simulator (cap C), one scratch folder; runs sizes in order."""

    def __init__(
        self,
        procs: Processes,
        work: Path,
        env: dict[str, str],
        plan: ScalePlan,
        say: Callable[[str], None],
    ) -> None:
        self.procs, self.work, self.plan, self.say = procs, work, plan, say
        self.inputs = work / "scale-inputs"
        self.pictures = make_pictures(self.inputs, plan.pictures)
        self.sim = Simulator.start(procs, latency_s=plan.latency_s, max_concurrent=plan.cap)
        self.config = work / "scale.yaml"
        self.config.write_text(
            f"expected_duration_s: {plan.latency_s}\ntimeout_s: 900\n"
            "global_concurrency_limit: null\n"
            f"api:\n  simulator: false\n  base_url: {self.sim.url}\n",
            encoding="utf-8",
        )
        self.env = {**env, "ATLASCLOUD_BASE_URL": self.sim.url}
        self.video_bytes = 0.0  # mean size of a video, from the warm-up

    def _run(self, name: str, manifest: Path, dest: Path, n: int, check: bool = True) -> Any:
        args = [str(manifest), "--dest", str(dest), "--config", str(self.config)]
        args += ["--concurrency", str(self.plan.cap)]
        self.say(f"  i2v run {name} ...")
        run = run_cli(self.procs, name, args, self.env, self.plan.timeout_s(n))
        self.say(f"  ... exit {run.exit_code} after {run.wall_s:.1f} s")
        if check:
            run.check()
        return run

    def warm(self) -> None:
        """One run over every picture x camera move: the simulator renders each once
        (0.4 s of CPU apiece on the same cores) and PREFECT_HOME is created."""
        manifest = self.inputs / "warm.csv"
        with manifest.open("w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["image", "prompt"])
            for p in self.pictures:
                for v in VERBS:
                    out.writerow([p, f"{v}, warm-up"])
        dest = self.work / "dest" / "scale-warm"
        self._run("scale-warm", manifest, dest, len(self.pictures) * len(VERBS))
        sizes = [p.stat().st_size for p in (dest / "videos").glob("*.mp4")]
        self.video_bytes = sum(sizes) / len(sizes) if sizes else 0.0
        shutil.rmtree(dest, ignore_errors=True)

    def one_row(self) -> dict[str, Any]:
        """A warm 1-row run: the fixed cost every run pays, whatever its rows."""
        name = "scale-1row"
        manifest = write_manifest(self.inputs / f"{name}.csv", name, 1, self.pictures)
        dest = self.work / "dest" / name
        self.sim.reset()
        run = self._run(name, manifest, dest, 1)
        shutil.rmtree(dest, ignore_errors=True)
        return {"wall_s": run.wall_s, "peak_rss_mib": run.peak_rss_mib, "source": "own"}

    def _check_room(self, n: int) -> None:
        need = n * self.video_bytes * 1.2 + 2 * GIB  # videos, records, tables, margin
        free = shutil.disk_usage(self.work).free
        if free < need:
            raise RuntimeError(
                f"{n} rows need about {need / GIB:.0f} GiB in {self.work}, "
                f"{free / GIB:.0f} GiB free"
            )

    def one(self, n: int, base_wall_s: float | None) -> dict[str, Any]:
        """N rows fresh, then the same batch again (finished: nothing to do)."""
        self._check_room(n)
        name = f"scale-n{n}"
        manifest = write_manifest(self.inputs / f"{name}.csv", name, n, self.pictures)
        dest = self.work / "dest" / name
        try:
            # A run that fails after every row landed (say, while publishing its
            # artifacts) still measured what this scenario is about: keep its figures,
            # with the failure beside them.
            self.sim.reset()
            run = self._run(name, manifest, dest, n, check=False)
            jobs = self.sim.stats()["jobs_created"]
            first, last, landed = span(dest)
            if landed != n:
                run.check()
                raise RuntimeError(f"{landed} of {n} landed")
            self.sim.reset()
            rerun = self._run(f"{name}-rerun", manifest, dest, n, check=False)
            calls = sum(self.sim.stats()["responses_by_status"].values())
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        failures = [_failure(r) for r in (run, rerun) if r.exit_code != 0]
        ideal = self.plan.ideal_s(n)
        fixed = base_wall_s or 0.0
        return {
            **({"failures": failures} if failures else {}),
            "n": n,
            "ideal_s": ideal,
            "actual_s": last - first,
            "efficiency": ideal / (last - first),
            "wall_s": run.wall_s,
            "wall_to_wall": ideal / (run.wall_s - fixed) if base_wall_s else None,
            "peak_rss_mib": run.peak_rss_mib,
            "jobs_created": jobs,
            "rerun_wall_s": rerun.wall_s,
            "rerun_per_row_ms": (rerun.wall_s - fixed) / n * 1000 if base_wall_s else None,
            "rerun_peak_rss_mib": rerun.peak_rss_mib,
            "rerun_api_calls": calls,
        }


def _failure(run: Any) -> str:
    """`NAME exited CODE: its last ERROR log line`."""
    text = run.log.read_text(encoding="utf-8", errors="replace") if run.log.exists() else ""
    errors = [ln for ln in text.splitlines() if "| ERROR" in ln]
    last = errors[-1].split("| ERROR", 1)[1].strip(" |") if errors else "(no ERROR line)"
    return f"{run.name} exited {run.exit_code} after {run.wall_s:.0f} s: {last[:300]}"


def slope_kib(sizes: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any] | None:
    """Peak RSS per extra row (KiB), largest size against the smallest; with one size,
    against the 1-row run (which also leaves out the live window's buffers, so that
    slope overstates the per-row cost)."""
    ok = [r for r in sizes if r.get("peak_rss_mib")]
    if len(ok) < 2 and base.get("peak_rss_mib") and ok:
        ok = [{"n": 1, "peak_rss_mib": base["peak_rss_mib"]}, *ok]
    if len(ok) < 2:
        return None
    lo, hi = min(ok, key=lambda r: r["n"]), max(ok, key=lambda r: r["n"])
    per_row = (hi["peak_rss_mib"] - lo["peak_rss_mib"]) * KIB / (hi["n"] - lo["n"])
    return {"kib_per_row": float(per_row), "between": [lo["n"], hi["n"]]}


def run(
    plan: ScalePlan,
    *,
    procs: Processes,
    work: Path,
    env: dict[str, str],
    say: Callable[[str], None],
    base_wall_s: float | None = None,
) -> dict[str, Any]:
    """The scenario: warm-up, the warm 1-row run unless given, each size and its rerun."""
    scale = Scale(procs, work, env, plan, say)
    try:
        scale.warm()
        if base_wall_s is not None:
            base: dict[str, Any] = {"wall_s": base_wall_s, "source": "startup"}
        else:
            base = scale.one_row()
        sizes: list[dict[str, Any]] = []
        for n in plan.rows:
            try:
                sizes.append(scale.one(n, base["wall_s"]))
            except Exception as exc:
                say(f"  failed: {type(exc).__name__}: {exc}")
                sizes.append({"n": n, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        procs.stop(scale.sim.proc)
    return {
        "rows": list(plan.rows),
        "cap": plan.cap,
        "latency_s": plan.latency_s,
        "pictures": plan.pictures,
        "video_kib": scale.video_bytes / KIB,
        "base": base,
        "sizes": {str(r["n"]): r for r in sizes},
        "slope": slope_kib([r for r in sizes if "error" not in r], base),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="2000,20000", help="sizes, comma-separated")
    ap.add_argument("--latency-s", type=float, default=2.0)
    ap.add_argument("--cap", type=int, default=200, help="provider cap = --concurrency")
    ap.add_argument("--pictures", type=int, default=50)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)
    plan = ScalePlan(
        rows=tuple(int(x) for x in args.rows.split(",")),
        latency_s=args.latency_s,
        cap=args.cap,
        pictures=args.pictures,
    )
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="i2v-scale-"))
    mine = ("PREFECT_", "AWS_", "ATLASCLOUD_", "I2V_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(mine)}
    env.update(
        PREFECT_HOME=str(work / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        ATLASCLOUD_API_KEY="bench-key",
        COLUMNS="250",
    )

    def say(message: str) -> None:
        print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    say(f"scratch folder {work}; {plan}")
    try:
        with Processes(work / "logs") as procs:
            result = run(plan, procs=procs, work=work, env=env, say=say)
    except KeyboardInterrupt:
        say("interrupted; every process started was stopped")
        return 130
    finally:
        say(f"logs in {work / 'logs'}")
        if not args.keep:
            for sub in ("dest", "scale-inputs", "prefect-home"):
                shutil.rmtree(work / sub, ignore_errors=True)
    print(json.dumps(result, indent=1))
    sizes = result["sizes"].values()
    return 1 if any("error" in r or "failures" in r for r in sizes) else 0


if __name__ == "__main__":
    sys.exit(main())
