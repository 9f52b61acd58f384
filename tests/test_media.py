"""Picture checks on real encoded pictures, and the video helpers on a real tiny mp4."""

from __future__ import annotations

import hashlib
import io
import os
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image

from i2v.errors import InputError, OutputError
from i2v.media import (
    MAX_IMAGE_BYTES,
    check_image,
    check_mp4_file,
    is_mp4_header,
    video_facts,
    video_frame,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def encode(size: tuple[int, int], fmt: str, mode: str = "RGB", **save: object) -> bytes:
    """A real picture of `size`, encoded as `fmt`, with some structure in it."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


# ---------------------------------------------------------------------- pictures


@pytest.mark.parametrize(("fmt", "content_type"), [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_good_picture_passes_with_facts(fmt: str, content_type: str) -> None:
    data = encode((800, 600), fmt)
    info = check_image(data, name="good")
    assert (info.format, info.width, info.height) == (fmt, 800, 600)
    assert info.size_bytes == len(data)
    assert info.content_type == content_type
    assert info.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("file", "fmt", "size"),
    [
        ("astronaut.png", "PNG", (512, 512)),
        ("coffee.png", "PNG", (600, 400)),
        ("rocket.jpg", "JPEG", (640, 427)),
    ],
)
def test_shipped_examples_pass(file: str, fmt: str, size: tuple[int, int]) -> None:
    info = check_image((EXAMPLES / file).read_bytes(), name=file)
    assert info.format == fmt and (info.width, info.height) == size


def test_chelsea_short_side_exactly_300_is_rejected() -> None:
    with pytest.raises(InputError) as err:
        check_image((EXAMPLES / "chelsea.png").read_bytes(), name="chelsea.png")
    msg = str(err.value)
    assert msg.startswith("chelsea.png: ")
    assert "451x300" in msg and "over 300 px" in msg


def test_short_side_301_passes() -> None:
    assert check_image(encode((301, 400), "PNG")).height == 400


@pytest.mark.parametrize(
    ("size", "word", "ratio"),
    [((1400, 500), "wide", "2.80"), ((500, 1400), "tall", "0.36")],
)
def test_aspect_ratio_out_of_range_says_the_ratio(
    size: tuple[int, int], word: str, ratio: str
) -> None:
    with pytest.raises(InputError) as err:
        check_image(encode(size, "JPEG"), name="pano.jpg")
    msg = str(err.value)
    assert f"too {word}" in msg and ratio in msg and "2:5" in msg and "5:2" in msg


@pytest.mark.parametrize(("size", "word"), [((1250, 500), "wide"), ((500, 1250), "tall")])
def test_aspect_ratio_exactly_at_the_bounds_is_refused(size: tuple[int, int], word: str) -> None:
    # The published schema: strictly greater than 2:5 and less than 5:2.
    with pytest.raises(InputError) as err:
        check_image(encode(size, "PNG"), name="edge.png")
    assert f"too {word}" in str(err.value) and "strictly between 2:5" in str(err.value)


@pytest.mark.parametrize("size", [(1249, 500), (500, 1249), (1000, 401), (401, 1000)])
def test_aspect_ratio_just_inside_the_bounds_passes(size: tuple[int, int]) -> None:
    info = check_image(encode(size, "PNG"))
    assert Fraction(2, 5) < Fraction(info.width, info.height) < Fraction(5, 2)


@pytest.mark.parametrize(("fmt", "save"), [("GIF", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {})])
def test_other_formats_are_named_and_refused(fmt: str, save: dict[str, object]) -> None:
    data = encode((640, 480), fmt, **save)
    with pytest.raises(InputError) as err:
        check_image(data, name=f"coffee.{fmt.lower()}")
    assert str(err.value) == f"coffee.{fmt.lower()}: {fmt} is not accepted; use JPEG or PNG"


def test_gif_with_png_name_is_still_a_gif() -> None:
    with pytest.raises(InputError, match="GIF is not accepted"):
        check_image(encode((640, 480), "GIF"), name="sneaky.png")


def test_png_named_file_that_is_really_a_jpeg_passes_as_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(encode((640, 480), "JPEG"))
    info = check_image(path.read_bytes(), name=path.name)
    assert info.format == "JPEG" and info.content_type == "image/jpeg"


def test_not_an_image() -> None:
    with pytest.raises(InputError, match=r"notes\.png: not a picture"):
        check_image(b"just some text, not pixels\n" * 20, name="notes.png")


def test_empty_file() -> None:
    with pytest.raises(InputError, match=r"empty\.jpg: the file is empty \(0 bytes\)"):
        check_image(b"", name="empty.jpg")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_picture_is_refused(fmt: str) -> None:
    data = encode((800, 600), fmt)
    with pytest.raises(InputError, match="damaged or truncated"):
        check_image(data[: len(data) * 2 // 3], name="cut")


def test_corrupt_png_checksum_is_refused() -> None:
    data = bytearray(encode((800, 600), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40] ^= 0xFF  # flip bits inside the compressed pixels
    with pytest.raises(InputError, match="damaged or truncated"):
        check_image(bytes(data), name="bitrot.png")


def test_over_20_mb_is_refused_with_its_size() -> None:
    # Random noise does not compress: a real PNG just over the limit.
    side = 2700
    noise = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG", compress_level=0)
    data = out.getvalue()
    assert len(data) > MAX_IMAGE_BYTES
    with pytest.raises(InputError) as err:
        check_image(data, name="huge.png")
    shown = f"{len(data) / (1024 * 1024):.1f} MB"
    assert str(err.value).startswith(f"huge.png: {shown} is over the 20 MB limit")


def test_phone_style_mpo_jpeg_counts_as_jpeg() -> None:
    first = Image.linear_gradient("L").resize((640, 480)).convert("RGB")
    second = first.rotate(90)
    out = io.BytesIO()
    first.save(out, format="MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(out.getvalue())).format == "MPO"
    assert check_image(out.getvalue()).format == "JPEG"


# ------------------------------------------------------------------------ videos


def make_mp4(path: Path, *, frames: int = 12, fps: int = 12, size: tuple[int, int] = (64, 48)):
    """A real tiny H.264 mp4 whose frames get brighter one by one."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = Image.new("RGB", size, (i * 20 % 256, 40, 80))
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def tiny_mp4(tmp_path: Path) -> Path:
    return make_mp4(tmp_path / "tiny.mp4")


def test_mp4_header() -> None:
    assert is_mp4_header(b"\x00\x00\x00\x20ftypisom")
    assert not is_mp4_header(b"\x00\x00\x00\x20moov")
    assert not is_mp4_header(b"ftyp")
    assert not is_mp4_header(b"")


def test_check_mp4_file(tiny_mp4: Path, tmp_path: Path) -> None:
    assert check_mp4_file(tiny_mp4) == tiny_mp4.stat().st_size > 0
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(OutputError, match="empty"):
        check_mp4_file(empty)
    html = tmp_path / "error.mp4"
    html.write_bytes(b"<html><body>AccessDenied</body></html>")
    with pytest.raises(OutputError, match="not an MP4"):
        check_mp4_file(html)
    with pytest.raises(OutputError, match="cannot be read"):
        check_mp4_file(tmp_path / "missing.mp4")


def test_video_facts(tiny_mp4: Path) -> None:
    facts = video_facts(tiny_mp4)
    assert (facts.width, facts.height) == (64, 48)
    assert facts.frames == 12
    assert facts.fps == pytest.approx(12.0)
    assert facts.duration_s == pytest.approx(1.0, abs=0.1)


def test_video_facts_on_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(OutputError, match="not a readable video"):
        video_facts(bad)


def test_video_frame_picks_the_frame_and_scales(tiny_mp4: Path) -> None:
    first = video_frame(tiny_mp4, index=0, width=32)
    fifth = video_frame(tiny_mp4, index=5, width=32)
    assert first.size == (32, 24)
    # Frame i has red ~ 20*i: the decoded frames differ the way they were made.
    assert first.getpixel((16, 12))[0] < 15
    assert abs(fifth.getpixel((16, 12))[0] - 100) < 15
    past_end = video_frame(tiny_mp4, index=999, width=64)
    assert past_end.size == (64, 48)
    assert abs(past_end.getpixel((32, 24))[0] - 220) < 15
