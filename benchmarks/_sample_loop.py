"""Atlas's published sample (examples/atlas_sample.py), one row after another.

Its own code, unchanged: upload -> generateVideo -> poll every ATLAS_SAMPLE_POLL_S
(3 s as published) -> download, looped over the rows of a manifest in one process
(so the loop pays for one interpreter start, not one per row).

    python benchmarks/_sample_loop.py MANIFEST.csv OUT_DIR RESULT.json

Needs ATLASCLOUD_BASE_URL and ATLASCLOUD_API_KEY; writes {"poll_s", "row_s": [...]}.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "atlas_sample.py"


def load_sample() -> ModuleType:
    spec = importlib.util.spec_from_file_location("atlas_sample", SAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    manifest, out_dir, result = Path(argv[1]), Path(argv[2]), Path(argv[3])
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = load_sample()
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    row_s: list[float] = []
    for row in rows:
        # The sample reads these module constants (from its env) on every call.
        vars(sample).update(IMAGE=manifest.parent / row["image"], PROMPT=row["prompt"])
        sys.argv = ["atlas_sample.py", str(out_dir / f"{row['id']}.mp4")]
        t0 = time.monotonic()
        code = sample.main()
        row_s.append(time.monotonic() - t0)
        if code != 0:
            print(f"row {row['id']}: the sample exited {code}", file=sys.stderr)
            return 1
    result.write_text(json.dumps({"poll_s": sample.POLL_S, "row_s": row_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
