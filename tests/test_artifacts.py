"""Progress artifact and contact sheet: real Prefect artifacts, real H.264 videos."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from PIL import Image

from i2v.dest import open_storage
from i2v.sheet import SheetFrames, save_sheet, sheet_image
from i2v.simulator.render import render_video
from tasks.artifacts import (
    CONTACT_SHEET_KEY,
    PROGRESS_KEY,
    ProgressReporter,
    publish_contact_sheet,
)
from tests.helpers import EXAMPLES, read_artifacts

pytestmark = [pytest.mark.timeout(180)]


def make_contact_sheet(storage: Any, keys: list[str], run_id: str, **options: Any) -> str | None:
    """The sheet's location, as the summary names it."""
    sheet = sheet_image(storage, keys, **options)
    return None if sheet is None else str(storage.key_uri(save_sheet(storage, sheet, run_id)))


def _job(rows: int) -> Any:
    return SimpleNamespace(rows=[object()] * rows)


def _outcome(status: str) -> Any:
    return SimpleNamespace(status=status)


def _artifact(key: str) -> Any:
    found = [a for a in read_artifacts(key=key) if a.key == key]
    return max(found, key=lambda a: str(a.created)) if found else None


@pytest.mark.usefixtures("prefect_harness")
def test_progress_follows_outcomes_and_coalesces_updates() -> None:
    from prefect import flow

    seen: dict[str, Any] = {}

    @flow
    async def watched() -> None:
        reporter = ProgressReporter(min_interval_s=0.5)
        await reporter.start(10, done=2)  # two rows rejected before any call
        seen["start"] = reporter.percent
        for i in range(6):  # six outcomes of one row each, in a burst
            reporter.listener("submitted", _job(1), None)  # not progress: ignored
            reporter.listener("outcome", _job(1), _outcome("landed" if i else "failed"))
        await asyncio.sleep(0.05)
        seen["burst_updates"] = reporter.updates
        # An outcome from a worker thread (a sync task) still reaches the run's loop.
        t = threading.Thread(
            target=reporter.listener, args=("outcome", _job(2), _outcome("landed"))
        )
        t.start()
        t.join()
        await asyncio.sleep(0.8)  # past the coalescing interval: one update goes out
        seen["after_wait"] = reporter.updates
        await reporter.finish()
        seen["final"] = reporter
        seen["description"] = reporter.description()

    asyncio.run(watched())
    reporter = seen["final"]
    assert seen["start"] == 20.0
    assert seen["burst_updates"] == 0, "a burst of outcomes must not call the API each time"
    assert seen["after_wait"] == 1
    assert reporter.done == 10 and reporter.percent == 100.0
    assert seen["description"] == "10/10 rows done (1 failed, 7 landed, 2 rejected)"
    art = _artifact(PROGRESS_KEY)
    assert art is not None and art.type == "progress"
    assert float(art.data) == 100.0
    assert art.description == seen["description"]


def test_progress_without_prefect_api_never_raises() -> None:
    """Outside any run (and API) the reporter is inert: it never sinks the pipeline."""

    async def main() -> ProgressReporter:
        reporter = ProgressReporter()
        reporter.listener("outcome", _job(1), _outcome("landed"))  # before start: counted
        await reporter.finish()
        return reporter

    reporter = asyncio.run(main())
    assert reporter.done == 1 and reporter.updates == 0


# ----------------------------------------------------------------------- contact sheet


def _videos(storage: Any, names: list[str]) -> list[str]:
    pictures = ["astronaut.png", "coffee.png", "rocket.jpg"]
    keys = []
    for i, name in enumerate(names):
        data = render_video(
            (EXAMPLES / pictures[i % 3]).read_bytes(), duration_s=1, width=160, fps=8
        )
        key = f"videos/{name}.mp4"
        storage.write_bytes(key, data, content_type="video/mp4")
        keys.append(key)
    return keys


def test_contact_sheet_local_grid_with_an_unreadable_video(tmp_path: Path) -> None:
    dest = open_storage(tmp_path / "dest")
    keys = _videos(dest, ["a", "b", "c", "d", "e"])
    dest.write_bytes("videos/broken.mp4", b"\x00\x00\x00\x18ftypmp42 not really a video")
    where = make_contact_sheet(
        dest, [*keys, "videos/broken.mp4", keys[0]], "run-1", thumb_width=100, columns=3
    )
    path = tmp_path / "dest" / "runs" / "run-1" / "contact_sheet.png"
    assert where == str(path)
    with Image.open(path) as sheet:
        assert sheet.format == "PNG"
        # 6 distinct videos (the repeated key is shown once): 3 columns x 2 rows.
        assert sheet.width == 3 * (100 + 6) + 6
        assert 2 * 60 < sheet.height < 2 * 140
        # The broken video is a grey tile: the pixel at its centre is grey, not dark.
        tile_h = (sheet.height - 6) // 2
        pixel = sheet.convert("RGB").getpixel((2 * 106 + 6 + 50, 6 + tile_h + 20))
        assert pixel == (90, 90, 90)
    assert make_contact_sheet(dest, [], "run-2") is None
    assert not (tmp_path / "dest" / "runs" / "run-2").exists()


def test_sheet_tiles_taken_while_landing_need_no_read_from_dest(tmp_path: Path) -> None:
    dest = open_storage(tmp_path / "dest")
    keys = _videos(dest, ["a", "b", "c"])
    frames = SheetFrames(limit=3, width=100)  # tiles: a copy is a tile of its own
    root = tmp_path / "dest"
    # Taken as rows land; the limit keeps the earliest rows (a, b and its copy; not c).
    frames.take(["videos/c.mp4"], root / "videos" / "c.mp4", order=4)
    frames.take(["videos/b.mp4", "videos/b-copy.mp4"], root / "videos" / "b.mp4", order=3)
    frames.take(["videos/a.mp4"], root / "videos" / "a.mp4", order=2)
    assert frames.get("videos/c.mp4") is None and len(frames) == 3
    assert not frames.wanted(9) and frames.wanted(1)
    for key in keys:  # the sheet must not need the files any more
        (root / key).unlink()
    sheet = sheet_image(dest, keys, thumb_width=100, columns=3, frames=frames)
    assert sheet is not None
    rgb = sheet.convert("RGB")
    tile_h = sheet.height - 6 - 16 - 6
    grey = (90, 90, 90)
    assert rgb.getpixel((6 + 50, 6 + tile_h // 2)) != grey, "a: a real frame"
    assert rgb.getpixel((6 + 106 + 50, 6 + tile_h // 2)) != grey, "b: a real frame"
    assert rgb.getpixel((6 + 2 * 106 + 50, 6 + tile_h // 2)) == grey, "c: gone, not kept"


def test_contact_sheet_caps_the_number_of_tiles(tmp_path: Path) -> None:
    dest = open_storage(tmp_path / "dest")
    keys = _videos(dest, ["a", "b", "c"])
    make_contact_sheet(dest, keys, "run-1", thumb_width=80, columns=4, max_videos=2)
    with Image.open(tmp_path / "dest" / "runs" / "run-1" / "contact_sheet.png") as sheet:
        assert sheet.width == 2 * (80 + 6) + 6  # two tiles, one row


def test_contact_sheet_on_s3(s3_bucket: str) -> None:
    dest = open_storage(f"s3://{s3_bucket}/out")
    keys = _videos(dest, ["x", "y"])
    where = make_contact_sheet(dest, keys, "run-9")
    assert where == f"s3://{s3_bucket}/out/runs/run-9/contact_sheet.png"
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key="out/runs/run-9/contact_sheet.png")
    assert head["ContentType"] == "image/png" and head["ContentLength"] > 1000


@pytest.mark.usefixtures("prefect_harness")
def test_publish_contact_sheet_links_and_embeds(tmp_path: Path) -> None:
    from prefect import flow

    dest = open_storage(tmp_path / "dest")
    keys = _videos(dest, ["p", "q"])

    @flow
    async def publish() -> tuple[str, str]:
        with_videos = await publish_contact_sheet(dest, keys, "run-5")
        without = await publish_contact_sheet(dest, [], "run-6")
        return with_videos, without

    markdown, empty = asyncio.run(publish())
    sheet = tmp_path / "dest" / "runs" / "run-5" / "contact_sheet.png"
    assert sheet.exists() and empty == ""
    # The UI renders only a plain image with an http(s) or data: URL: a folder DEST's
    # sheet is embedded (small), the full-size file named by its path.
    assert "![contact sheet of run run-5](data:image/png;base64," in markdown
    assert "[![" not in markdown and "file://" not in markdown
    assert f"Full size: `{sheet}`" in markdown
    link = _artifact(CONTACT_SHEET_KEY)
    assert link is not None and link.type == "markdown"  # link artifacts render as markdown
    assert str(sheet) in link.data


def test_embedded_sheet_stays_small_however_many_videos() -> None:
    import base64
    import io

    from i2v.sheet import embedded_png

    noise = Image.effect_noise((4 * 246, 25 * 160), 90).convert("RGB")  # worst case: noise
    uri = embedded_png(noise, max_bytes=200_000)
    assert uri.startswith("data:image/png;base64,") and len(uri) <= 200_000
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as small:
        assert small.format == "PNG" and small.width < noise.width
    photo = Image.open(EXAMPLES / "astronaut.png")
    assert len(embedded_png(photo)) <= 300_000


def test_the_table_artifact_of_a_big_run_keeps_the_rows_that_need_a_person() -> None:
    import pandas as pd

    from tasks.results_artifacts import artifact_rows

    status = ["landed"] * 7 + ["failed", "landed", "ambiguous"]
    # The results table's own dtype for its text columns (see i2v.results).
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(10)], "status": status}).astype("string")
    shown = artifact_rows(frame, limit=4)
    assert list(shown["id"]) == ["r0", "r1", "r7", "r9"], "table order, the two not landed kept"
    assert artifact_rows(frame, limit=10) is frame
