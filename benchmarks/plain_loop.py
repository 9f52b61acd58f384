"""The baseline the pipeline must beat: a plain asyncio loop, as a team would write one.

No Prefect, no records, no checks: for every row of a manifest, at most C at once,
upload the picture, start the video, poll it (first after the expected duration,
then every `--poll-interval` seconds), download it to OUT_DIR. One process, one
httpx client.

    python benchmarks/plain_loop.py MANIFEST.csv OUT_DIR --concurrency 40 \
        --expected 2 --poll-interval 1

Needs ATLASCLOUD_BASE_URL and ATLASCLOUD_API_KEY. Prints one JSON line:
{"rows", "landed", "failed", "wall_s", "first_submit", "last_land"} (epoch seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

MODEL = "minimax/hailuo-2.3/i2v-standard"


async def one(
    client: httpx.AsyncClient,
    row: dict[str, str],
    folder: Path,
    out: Path,
    args: argparse.Namespace,
    marks: dict[str, list[float]],
) -> bool:
    picture = folder / row["image"]
    kind = "image/png" if picture.suffix == ".png" else "image/jpeg"
    up = await client.post(
        "/api/v1/model/uploadMedia", files={"file": (picture.name, picture.read_bytes(), kind)}
    )
    up.raise_for_status()
    body = {
        "model": MODEL,
        "image": up.json()["data"]["download_url"],
        "prompt": row.get("prompt", ""),
        "duration": int(row.get("duration") or 6),
    }
    made = await client.post("/api/v1/model/generateVideo", json=body)
    made.raise_for_status()
    marks["submit"].append(time.time())
    answer = made.json()
    prediction = (answer.get("data") or answer)["id"]
    await asyncio.sleep(args.expected)
    while True:
        polled = await client.get(f"/api/v1/model/prediction/{prediction}")
        if polled.status_code == 200:
            data = polled.json()["data"]
            if data["status"] in ("completed", "succeeded"):
                outputs = data["outputs"]
                url = outputs if isinstance(outputs, str) else outputs[0]
                break
            if data["status"] == "failed":
                return False
        await asyncio.sleep(args.poll_interval)
    async with client.stream("GET", url) as video:
        video.raise_for_status()
        with (out / f"{row['id']}.mp4").open("wb") as f:
            async for chunk in video.aiter_bytes():
                f.write(chunk)
    marks["land"].append(time.time())
    return True


async def main(
    args: argparse.Namespace, rows: list[dict[str, str]], started: float
) -> dict[str, Any]:
    manifest, out = Path(args.manifest), Path(args.out_dir)
    gate = asyncio.Semaphore(args.concurrency)
    marks: dict[str, list[float]] = {"submit": [], "land": []}
    headers = {"Authorization": f"Bearer {os.environ['ATLASCLOUD_API_KEY']}"}
    limits = httpx.Limits(max_connections=args.concurrency + 10)
    async with httpx.AsyncClient(
        base_url=os.environ["ATLASCLOUD_BASE_URL"],
        headers=headers,
        timeout=60,
        limits=limits,
        follow_redirects=True,
    ) as client:

        async def gated(row: dict[str, str]) -> bool:
            async with gate:
                try:
                    return await one(client, row, manifest.parent, out, args, marks)
                except httpx.HTTPError as exc:
                    print(f"row {row['id']}: {exc}", file=sys.stderr)
                    return False

        done = await asyncio.gather(*(gated(row) for row in rows))
    return {
        "rows": len(rows),
        "landed": sum(done),
        "failed": len(done) - sum(done),
        "wall_s": time.monotonic() - started,
        "first_submit": min(marks["submit"], default=None),
        "last_land": max(marks["land"], default=None),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("out_dir")
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--expected", type=float, default=2.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    options = parser.parse_args()
    began = time.monotonic()
    with Path(options.manifest).open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    Path(options.out_dir).mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(main(options, table, began))))
