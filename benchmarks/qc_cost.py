"""CPU cost of the quality check (`i2v.qc.probe_video`) per landed video.

    .venv/bin/python benchmarks/qc_cost.py             # 100 simulator videos
    .venv/bin/python benchmarks/qc_cost.py --videos 40 --width 768

The videos are the simulator's own renders (`i2v.simulator.render`, the bytes it serves):
every example picture under every camera move, 6 s and 10 s, at the simulator's width
(320 px by default; 768 approximates Hailuo's 768p). Each is probed once, timed with
`time.process_time()` (this process's CPU, all threads), and, for comparison, decoded
in full once. Rendering happens first and is not counted.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import av

from i2v.qc import probe_video
from i2v.simulator.render import MOTIONS, render_video

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def measure(videos: int = 100, width: int = 320) -> dict[str, Any]:
    """CPU ms of the probe per video (mean, median, p95) and of a full decode (mean)."""
    pictures = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    combos = list(itertools.product(pictures, MOTIONS, (6, 10)))
    with tempfile.TemporaryDirectory() as scratch:
        files: list[tuple[Path, int]] = []
        for i in range(videos):
            picture, motion, duration = combos[i % len(combos)]
            path = Path(scratch) / f"v{i}.mp4"
            if i < len(combos):
                data = render_video(
                    picture.read_bytes(), motion=motion, duration_s=duration, width=width
                )
                path.write_bytes(data)
            else:  # more videos than combinations: probe the same files again
                path = Path(scratch) / f"v{i % len(combos)}.mp4"
            files.append((path, duration))
        probe_ms, decode_ms, frames, flagged = [], [], [], 0
        for path, duration in files:
            t0 = time.process_time()
            facts = probe_video(path, expected_duration_s=duration)
            probe_ms.append((time.process_time() - t0) * 1000)
            frames.append(facts.decoded_frames)
            flagged += not facts.ok
        for path, _ in files[: min(len(files), 20)]:
            t0 = time.process_time()
            with av.open(str(path)) as container:
                sum(1 for _ in container.decode(video=0))
            decode_ms.append((time.process_time() - t0) * 1000)
    probe_ms.sort()
    return {
        "videos": len(files),
        "width": width,
        "probe_mean_ms": statistics.mean(probe_ms),
        "probe_median_ms": statistics.median(probe_ms),
        "probe_p95_ms": probe_ms[int(0.95 * (len(probe_ms) - 1))],
        "frames_decoded": statistics.mean(frames),
        "flagged": flagged,
        "full_decode_ms": statistics.mean(decode_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args()
    r = measure(args.videos, args.width)
    print(
        f"QC probe over {r['videos']} simulator videos ({r['width']} px wide, 6 and 10 s, "
        f"24 fps): CPU per video mean {r['probe_mean_ms']:.1f} ms, median "
        f"{r['probe_median_ms']:.1f} ms, p95 {r['probe_p95_ms']:.1f} ms; "
        f"{r['frames_decoded']:.0f} frames decoded per video; {r['flagged']} flagged"
    )
    print(f"for comparison, decoding a whole video: {r['full_decode_ms']:.1f} ms")


if __name__ == "__main__":
    main()
