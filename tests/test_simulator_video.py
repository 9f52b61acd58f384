"""The simulator's rendered videos: real H.264 mp4s whose camera move follows the prompt."""

from __future__ import annotations

import io
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from i2v.simulator.render import (
    MOTIONS,
    RenderCache,
    cached_render,
    output_size,
    parse_motion,
    render_video,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROCKET = (EXAMPLES / "rocket.jpg").read_bytes()
COFFEE = (EXAMPLES / "coffee.png").read_bytes()


def decode(video: bytes) -> tuple[float, str, str, list[np.ndarray]]:
    """(duration s, codec, pixel format, grayscale frames)."""
    with av.open(io.BytesIO(video), "r") as container:
        stream = container.streams.video[0]
        codec, pix_fmt = stream.codec_context.name, str(stream.codec_context.pix_fmt)
        duration = (container.duration or 0) / 1_000_000
        frames = [f.to_ndarray(format="gray").astype(np.float64) for f in container.decode(stream)]
    return duration, codec, pix_fmt, frames


def shift(a: np.ndarray, b: np.ndarray, max_lag: int) -> int:
    """The lag d that best matches profile b[x] with a[x + d]: d > 0 means the content
    moved towards smaller x (left or up) from a to b."""
    best_d, best_c = 0, -2.0
    for d in range(-max_lag, max_lag + 1):
        x, y = (a[d:], b[: len(b) - d]) if d >= 0 else (a[:d], b[-d:])
        c = float(np.corrcoef(x, y)[0, 1])
        if c > best_c:
            best_d, best_c = d, c
    return best_d


def zoom_factor(a: np.ndarray, b: np.ndarray) -> float:
    """The factor z (>= 1) for which b best matches a's center 1/z crop scaled back up."""
    h, w = a.shape
    img = Image.fromarray(a.astype(np.uint8))
    best_z, best_c = 1.0, -2.0
    for z in np.linspace(1.0, 2.0, 41):
        cw, ch = w / z, h / z
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        crop = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR, box=box), np.float64)
        c = float(np.corrcoef(crop.ravel(), b.ravel())[0, 1])
        if c > best_c:
            best_z, best_c = float(z), c
    return best_z


@pytest.fixture(scope="module")
def videos() -> dict[str, list[np.ndarray]]:
    """Frames of every motion over the rocket picture (6 s, 320 px, 24 fps)."""

    def frames(motion: str) -> list[np.ndarray]:
        return decode(cached_render(ROCKET, motion=motion, duration_s=6, width=320, fps=24))[3]

    # Encoding and resampling release the GIL: two threads use both cores.
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(MOTIONS, pool.map(frames, MOTIONS), strict=True))


@pytest.mark.parametrize(
    ("prompt", "motion"),
    [
        ("The camera pans right across the valley", "pan_right"),
        ("slow pan to the left over the city", "pan_left"),
        ("Camera tilts up to reveal the sky", "tilt_up"),
        ("tilt down to the river", "tilt_down"),
        ("Zoom in on her eyes", "zoom_in"),
        ("the camera pushes in slowly", "zoom_in"),
        ("pull back to show the whole crowd", "zoom_out"),
        ("Zooming out from the flower", "zoom_out"),
        ("the drone orbits the lighthouse", "orbit"),
        ("rotate around the statue", "orbit"),
        ("pan left, then zoom in", "pan_left"),  # the first move named wins
        ("a cat sleeping in the sun", "slow_push"),
        ("", "slow_push"),
        (None, "slow_push"),
    ],
)
def test_parse_motion_reads_the_prompts_verbs(prompt: str | None, motion: str) -> None:
    assert parse_motion(prompt) == motion


@pytest.mark.parametrize("duration_s", [6, 10])
def test_duration_frame_count_and_format(duration_s: int) -> None:
    duration, codec, pix_fmt, frames = decode(
        render_video(COFFEE, motion="pan_left", duration_s=duration_s, width=320, fps=24)
    )
    assert duration == pytest.approx(duration_s, abs=0.1)
    assert len(frames) == duration_s * 24
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert frames[0].shape == (214, 320)  # coffee.png is 600x400: aspect kept, even height


def test_size_is_even_and_keeps_the_aspect() -> None:
    assert output_size(640, 427, 320) == (320, 214)
    assert output_size(512, 512, 321) == (320, 320)
    assert output_size(400, 1000, 320) == (320, 800)
    _, _, _, frames = decode(render_video(ROCKET, duration_s=6, width=161, fps=4))
    assert frames[0].shape == (106, 160) and len(frames) == 24


@pytest.mark.parametrize("motion", MOTIONS)
def test_consecutive_frames_differ(videos: dict[str, list[np.ndarray]], motion: str) -> None:
    frames = videos[motion]
    assert len(frames) == 144
    diffs = [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(frames)]
    assert min(diffs) > 0, f"{motion}: a frame repeats the one before"
    assert float(np.abs(frames[-1] - frames[0]).mean()) > 3, f"{motion}: barely moves"


def test_pan_right_moves_content_left_and_pan_left_right(
    videos: dict[str, list[np.ndarray]],
) -> None:
    def dx(motion: str) -> int:
        first, last = videos[motion][0], videos[motion][-1]
        return shift(first.mean(axis=0), last.mean(axis=0), max_lag=120)

    # The window travels 18% of the picture = 22.5% of a 320 px frame = 72 px.
    assert dx("pan_right") == pytest.approx(72, abs=4)
    assert dx("pan_left") == pytest.approx(-72, abs=4)
    assert abs(dx("zoom_in")) <= 2  # zooms stay centered


def test_tilt_up_moves_content_down(videos: dict[str, list[np.ndarray]]) -> None:
    def dy(motion: str) -> int:
        first, last = videos[motion][0], videos[motion][-1]
        return shift(first.mean(axis=1), last.mean(axis=1), max_lag=80)

    assert dy("tilt_up") == pytest.approx(-48, abs=4)  # 0.18 / 0.8 of 214 px
    assert dy("tilt_down") == pytest.approx(48, abs=4)


def test_zoom_in_scales_the_center_up_and_zoom_out_down(
    videos: dict[str, list[np.ndarray]],
) -> None:
    first, last = videos["zoom_in"][0], videos["zoom_in"][-1]
    assert zoom_factor(first, last) == pytest.approx(0.95 / 0.6, abs=0.08)
    assert zoom_factor(last, first) == pytest.approx(1.0, abs=0.05)  # not the other way

    first, last = videos["zoom_out"][0], videos["zoom_out"][-1]
    assert zoom_factor(last, first) == pytest.approx(0.95 / 0.6, abs=0.08)

    first, last = videos["slow_push"][0], videos["slow_push"][-1]
    assert zoom_factor(first, last) == pytest.approx(0.94 / 0.78, abs=0.06)  # gentle


def test_orbit_rotates_the_picture(videos: dict[str, list[np.ndarray]]) -> None:
    first, last = videos["orbit"][0], videos["orbit"][-1]

    def angle_error(a: np.ndarray, b: np.ndarray, degrees: float) -> float:
        rotated = Image.fromarray(a.astype(np.uint8)).rotate(degrees, Image.Resampling.BILINEAR)
        r = np.asarray(rotated, np.float64)[40:-40, 60:-60]
        return float(np.abs(r - b[40:-40, 60:-60]).mean())

    # The window turns 10 degrees (and drifts a little): the best undo is a rotation.
    errors = {deg: angle_error(first, last, deg) for deg in range(-14, 15, 2)}
    best = min(errors.items(), key=lambda kv: kv[1])[0]
    assert abs(best) >= 6


def test_render_cache_renders_each_key_once_under_concurrency() -> None:
    cache = RenderCache()
    calls = []
    gate = threading.Event()

    def slow_render() -> bytes:
        calls.append(1)
        gate.wait(1)
        return b"video"

    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_render(("k",), slow_render)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert results == [b"video"] * 8 and len(calls) == 1 and cache.renders == 1
    assert cache.get_or_render(("other",), lambda: b"x") == b"x" and cache.renders == 2


def test_render_cache_evicts_least_recent_over_budget() -> None:
    cache = RenderCache(max_bytes=10)
    cache.get_or_render(("a",), lambda: b"12345")
    cache.get_or_render(("b",), lambda: b"12345")
    cache.get_or_render(("a",), lambda: b"never")  # a is now the most recent
    cache.get_or_render(("c",), lambda: b"12345")  # over budget: b goes
    assert cache.get_or_render(("a",), lambda: b"new") == b"12345"
    assert cache.get_or_render(("b",), lambda: b"new") == b"new"


def test_unknown_motion_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown motion"):
        render_video(ROCKET, motion="barrel_roll")
