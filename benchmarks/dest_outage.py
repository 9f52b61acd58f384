"""The DEST outages of issues 19 and 26, as an operator meets them, through the CLI.

    python benchmarks/dest_outage.py [--rows 24] [--outage 90] [--latency 2]

S3 is a moto server behind the tests' faulty hop (`tests/s3hop.py`), the provider is the
simulator (in this process, so its counters are read directly), and `i2v run` runs as a
user runs it, in a subprocess with its own temporary Prefect. Three scenarios:

- `drops`: 10 % of S3 requests answered 503 SlowDown, 5 % of writes stored and their
  answers lost, for the whole run.
- `ride_out`: S3 closes every connection for `--outage` s from the moment the first six
  jobs exist (their generate answers still on their way); the run's default patience
  (`dest_wait_s`, 600 s) is longer.
- `stop_and_rerun`: the same cut with `dest_wait_s` shorter than the outage: the run
  stops, keeping the paid ids; the same command once S3 is back.

Prints one JSON object per scenario: wall time, exit code, rows by status, jobs created
(and during the outage), inputs paid twice, the hop's counters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.harness import free_port  # noqa: E402
from tests.helpers import sim_config  # noqa: E402
from tests.s3hop import S3Hop  # noqa: E402


def _manifest(folder: Path, rows: int) -> Path:
    pictures = ["coffee.png", "astronaut.png", "rocket.jpg"]
    for name in pictures:
        shutil.copy(REPO / "examples" / name, folder / name)
    lines = ["id,image,prompt"] + [
        f"r{i:03d},{pictures[i % 3]},slow push in take {i}" for i in range(rows)
    ]
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "i2v"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return done.returncode, time.monotonic() - started, (done.stdout + done.stderr)[-600:]


def _counts(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    import io

    import pandas as pd

    try:
        raw = s3.get_object(Bucket=bucket, Key=f"{prefix}/results.parquet")["Body"].read()
    except Exception:
        return {}
    frame = pd.read_parquet(io.BytesIO(raw))
    return {str(k): int(v) for k, v in frame["status"].value_counts().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--outage", type=float, default=90.0)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--only", choices=["drops", "ride_out", "stop_and_rerun"])
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    from i2v.simulator.server import start_simulator

    work = Path(tempfile.mkdtemp(prefix="i2v-outage-"))
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(creds)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    manifest = _manifest(work, args.rows)
    scenarios = [args.only] if args.only else ["drops", "ride_out", "stop_and_rerun"]
    for n, name in enumerate(scenarios):
        bucket = f"outage-{n}-{int(time.time())}"
        s3.create_bucket(Bucket=bucket)
        sim = start_simulator(port=0, latency_s=args.latency, generate_delay_s=1.0)
        hop = S3Hop(endpoint, seed=n).start()
        env = {
            **os.environ,
            **creds,
            "AWS_ENDPOINT_URL": hop.url,
            "ATLASCLOUD_API_KEY": "bench-key",
            "I2V_JOURNAL_DIR": str(work / f"journal-{name}"),
            "PREFECT_HOME": str(work / f"prefect-{name}"),
        }
        dest = f"s3://{bucket}/out"
        seen: dict[str, int] = {}
        if name == "drops":
            hop.rate_503, hop.rate_lost_writes = 0.10, 0.05
        else:

            def cut(seen: dict[str, int] = seen, hop: S3Hop = hop, sim: Any = sim) -> None:
                while sim.stats.jobs_created < 6:
                    time.sleep(0.002)
                seen["jobs_at_cut"] = sim.stats.jobs_created
                hop.outage_for(args.outage)
                time.sleep(args.outage)
                seen["jobs_at_heal"] = sim.stats.jobs_created

            threading.Thread(target=cut, daemon=True).start()
        extra = {"dest_wait_s": args.outage / 3} if name == "stop_and_rerun" else {}
        config = sim_config(work, sim, fast=False, concurrency=6, **extra)
        runs = []
        for attempt in range(2 if name == "stop_and_rerun" else 1):
            if attempt:
                while hop.outage:
                    time.sleep(0.5)
            code, wall, tail = _cli(
                ["run", str(manifest), "--dest", dest, "--config", str(config)], env
            )
            runs.append(
                {
                    "exit": code,
                    "wall_s": round(wall, 1),
                    "rows": _counts(s3, bucket, "out"),
                    "tail": tail,
                }
            )
        per_input = sim.stats.submissions_per_input
        print(
            json.dumps(
                {
                    "scenario": name,
                    "rows": args.rows,
                    "runs": runs,
                    "jobs_created": sim.stats.jobs_created,
                    "paid_twice": sum(1 for v in per_input.values() if v > 1),
                    "jobs_during_outage": (seen["jobs_at_heal"] - seen["jobs_at_cut"])
                    if "jobs_at_heal" in seen
                    else None,
                    "hop": {k: v for k, v in vars(hop.stats).items() if k != "lost_keys"},
                },
                indent=1,
            ),
            flush=True,
        )
        hop.stop()
        sim.stop()
    moto.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
