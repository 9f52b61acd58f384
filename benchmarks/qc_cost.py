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

import av

from i2v.qc import probe_video
from i2v.simulator.render import MOTIONS, render_video

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--width", type=int, default=320)
    args = parser.parse_args()
    pictures = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    combos = list(itertools.product(pictures, MOTIONS, (6, 10)))
    with tempfile.TemporaryDirectory() as scratch:
        videos: list[tuple[Path, int]] = []
        for i in range(args.videos):
            picture, motion, duration = combos[i % len(combos)]
            path = Path(scratch) / f"v{i}.mp4"
            if i < len(combos):
                data = render_video(
                    picture.read_bytes(), motion=motion, duration_s=duration, width=args.width
                )
                path.write_bytes(data)
            else:  # more videos than combinations: probe the same files again
                path = Path(scratch) / f"v{i % len(combos)}.mp4"
            videos.append((path, duration))
        probe_ms, decode_ms, frames, flagged = [], [], [], 0
        for path, duration in videos:
            t0 = time.process_time()
            facts = probe_video(path, expected_duration_s=duration)
            probe_ms.append((time.process_time() - t0) * 1000)
            frames.append(facts.decoded_frames)
            flagged += not facts.ok
        for path, _ in videos[: min(len(videos), 20)]:
            t0 = time.process_time()
            with av.open(str(path)) as container:
                total = sum(1 for _ in container.decode(video=0))
            decode_ms.append((time.process_time() - t0) * 1000)
    probe_ms.sort()
    print(
        f"QC probe over {len(videos)} simulator videos ({args.width} px wide, 6 and 10 s, "
        f"24 fps): CPU per video mean {statistics.mean(probe_ms):.1f} ms, median "
        f"{statistics.median(probe_ms):.1f} ms, p95 {probe_ms[int(0.95 * (len(probe_ms) - 1))]:.1f}"
        f" ms; {statistics.mean(frames):.0f} frames decoded per video; {flagged} flagged"
    )
    print(
        f"for comparison, decoding a whole video: {statistics.mean(decode_ms):.1f} ms "
        f"(last one had {total} frames)"
    )


if __name__ == "__main__":
    main()
