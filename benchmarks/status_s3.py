"""How fast `i2v status` reads a big S3 DEST: N state records on a moto server.

    .venv/bin/python benchmarks/status_s3.py                 # 10,000 inputs, indexed by the run
    .venv/bin/python benchmarks/status_s3.py --index none    # a DEST nothing indexed
    .venv/bin/python benchmarks/status_s3.py --inputs 2000 --repeat 3

moto runs as its own process on loopback (as in `make bench`), the records are written
straight into `_state/` (a realistic mix: landed, a few failed, timed out, ambiguous
and QC-flagged) with a 10,000-row results table and a run summary. With `--index run`
(the default) they are written the way a batch run writes them (`i2v.claims.Records`,
each version remembered) and the status index is then refreshed as a run does after
its results table; with `--index none` no index is left, as by a DEST written by
something else. Then the real `i2v status DEST --json` runs in a subprocess, timed from
outside: first cold (the first status after the "run"), then again; and
`i2v.status.dest_status` in this process. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import BIN, REPO, Processes, start_moto


def populate(dest: str, inputs: int, *, index: bool) -> None:
    import pandas as pd

    from i2v.claims import Records
    from i2v.dest import open_storage
    from i2v.results import RunSummary
    from i2v.state import InputRecord, Phase, StateStore
    from i2v.status_index import refresh_index

    storage = open_storage(dest)
    records = Records(StateStore(storage))

    def record(i: int) -> InputRecord:
        kind = i % 100
        phase = Phase.LANDED
        extra: dict[str, object] = {"qc": "ok", "video_key": f"videos/r{i:05d}.mp4"}
        if kind == 1:
            phase, extra = Phase.FAILED, {"error_code": "1039", "error": "moderation"}
        elif kind == 2:
            phase, extra = Phase.TIMED_OUT, {}
        elif kind == 3:
            phase, extra = Phase.AMBIGUOUS, {"error": "answer lost"}
        elif kind == 4:
            extra["qc"] = "short:4.1s"
        return InputRecord(
            identity=f"{i:064x}",
            model="minimax/hailuo-2.3/i2v-standard",
            picture_sha256=f"{i:064x}",
            prompt=f"slow push in, take {i}",
            duration=6,
            phase=phase,
            prediction_id=None if phase is Phase.AMBIGUOUS else f"pred{i:06d}",
            attempts=1,
            submit_started_at="2025-06-01T10:00:00.000Z",
            submitted_at=None if phase is Phase.AMBIGUOUS else "2025-06-01T10:00:01.000Z",
            cost_usd=0.28,
            owner_run="20250601T100000Z-bench000",
            history=[{"at": "2025-06-01T10:00:00.000Z", "phase": "submitting"}] * 4,
            **extra,
        )

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(lambda i: records.put(record(i)), range(inputs)))
    table = pd.DataFrame(
        {
            "id": [f"r{i:05d}" for i in range(inputs)],
            "status": ["landed"] * inputs,
            "error": [None] * inputs,
            "input_identity": [f"{i:064x}" for i in range(inputs)],
        }
    )
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    storage.write_bytes("results.parquet", buf.getvalue())
    summary = RunSummary(
        run_id="20250601T100000Z-bench000",
        source="s3://bench/manifest.csv",
        dest=dest,
        rows=inputs,
        inputs=inputs,
        counts={"landed": inputs},
        command=["i2v", "run", "s3://bench/manifest.csv", "--dest", dest],
    )
    storage.write_bytes(
        "runs/20250601T100000Z-bench000/summary.json", summary.model_dump_json().encode()
    )
    if index:
        started = time.monotonic()
        refreshed = refresh_index(storage, records.latest())
        print(f"refreshed the index with {refreshed} records in {time.monotonic() - started:.2f} s")


def status_cli(dest: str, label: str) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "i2v"), "status", dest, "--json"],
        cwd=REPO,
        env=os.environ,
        capture_output=True,
        timeout=600,
    )
    wall = time.monotonic() - started
    body = json.loads(done.stdout)
    print(
        f"`i2v status --json` {label}: {wall:.2f} s wall, exit {done.returncode}, "
        f"{body['inputs']} inputs, read {body['read_s']:.2f} s, {body['records_read']} GETs, "
        f"{body['records_from_index']} from the index"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--index",
        choices=("run", "none"),
        default="run",
        help="run: the records' writer refreshes the index as a batch run does; none: no index",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, Processes(Path(scratch) / "logs") as procs:
        endpoint = start_moto(procs)
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        dest = "s3://bench/dest"
        started = time.monotonic()
        populate(dest, args.inputs, index=args.index == "run")
        print(f"wrote {args.inputs} records in {time.monotonic() - started:.1f} s")

        from i2v.dest import open_storage
        from i2v.status import dest_status

        status_cli(dest, "first (cold)")
        for _ in range(args.repeat):
            t0 = time.monotonic()
            status = dest_status(open_storage(dest))
            print(
                f"dest_status: {time.monotonic() - t0:.2f} s for {status.inputs} inputs "
                f"({status.needs_person_rows} rows need a person, {status.records_read} GETs)"
            )
        for _ in range(args.repeat):
            status_cli(dest, "again")


if __name__ == "__main__":
    main()
