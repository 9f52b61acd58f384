"""Manifest reading: real CSV files on disk and on a real (moto) S3 server."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from i2v.errors import ConfigError, ManifestError
from i2v.manifest import Manifest, read_manifest
from i2v.models import get_model
from i2v.s3 import make_s3_client

REPO = Path(__file__).resolve().parent.parent
STANDARD = get_model("minimax/hailuo-2.3/i2v-standard")
PRO = get_model("minimax/hailuo-2.3/i2v-pro")  # takes no duration
T2V = get_model("minimax/hailuo-2.3/t2v-standard")  # needs no image


def exact(message: str) -> str:
    """A `match=` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


def write(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def read(source: str | Path, **kwargs: Any) -> Manifest:
    kwargs.setdefault("spec", STANDARD)
    return read_manifest(str(source), **kwargs)


def errors_by_line(manifest: Manifest) -> dict[int, str | None]:
    return {row.line: row.error for row in manifest.rows}


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return make_s3_client()


# ------------------------------------------------------------------------------ good input


def test_good_manifest(pictures: Path) -> None:
    csv = write(
        pictures / "manifest.csv",
        "id,image,prompt,duration\n"
        "a1,astronaut.png,push in,6\n"
        ",coffee.png,,10\n"
        "r1 , rocket.jpg ,  tilt up  ,\n",
    )
    m = read(csv, default_prompt="gentle motion")

    assert m.source == str(csv)
    assert m.base == str(pictures)
    assert m.extra_columns == []
    assert [r.line for r in m.rows] == [2, 3, 4]
    assert [r.id for r in m.rows] == ["a1", None, "r1"]
    assert [r.image for r in m.rows] == ["astronaut.png", "coffee.png", " rocket.jpg "]
    assert [r.image_location for r in m.rows] == [
        str(pictures / "astronaut.png"),
        str(pictures / "coffee.png"),
        str(pictures / "rocket.jpg"),
    ]
    assert [r.prompt for r in m.rows] == ["push in", "gentle motion", "tilt up"]
    assert [r.duration for r in m.rows] == [6, 10, 6]
    assert [r.error for r in m.rows] == [None, None, None]
    assert m.good_rows == m.rows and m.bad_rows == []


def test_default_duration_fills_empty_cells(pictures: Path) -> None:
    csv = write(pictures / "m.csv", "image,duration\nastronaut.png,\ncoffee.png,6\n")
    assert [r.duration for r in read(csv, default_duration=10).rows] == [10, 6]


def test_the_shipped_example_manifest_reads_clean() -> None:
    m = read(REPO / "examples" / "manifest.csv")
    assert m.rows and m.bad_rows == []
    assert all(Path(r.image_location or "").parent == REPO / "examples" for r in m.rows)


def test_bom_quoted_commas_stripped_names_and_extras_in_order(pictures: Path) -> None:
    csv = write(
        pictures / "m.csv",
        "\ufeffcampaign, image ,notes,prompt,id,owner\n"
        'spring,astronaut.png,"one, two","a cat, walking ""slowly""",x,ann\n'
        'fall,coffee.png,"multi\nline",,y,\n',
    )
    m = read(csv)
    assert m.extra_columns == ["campaign", "notes", "owner"]
    first, second = m.rows
    assert list(first.extras.items()) == [
        ("campaign", "spring"),
        ("notes", "one, two"),
        ("owner", "ann"),
    ]
    assert first.prompt == 'a cat, walking "slowly"'
    assert second.extras == {"campaign": "fall", "notes": "multi\nline", "owner": ""}
    assert m.bad_rows == []


def test_numbers_stay_strings_and_blank_lines_keep_line_numbers(pictures: Path) -> None:
    csv = write(
        pictures / "m.csv",
        "image,code,flag\r\nastronaut.png,007,NA\r\n\r\n,,\r\ncoffee.png,1e3,\r\n",
    )
    m = read(csv)
    assert [r.line for r in m.rows] == [2, 5]  # the blank and all-empty rows are not data
    assert m.rows[0].extras == {"code": "007", "flag": "NA"}
    assert m.rows[1].extras == {"code": "1e3", "flag": ""}


# ------------------------------------------------------------------------------ image paths


def test_relative_and_absolute_paths_inside_the_folder(pictures: Path) -> None:
    (pictures / "sub").mkdir()
    (pictures / "sub" / "x.png").write_bytes(b"x")
    csv = write(
        pictures / "m.csv",
        f"image\nsub/x.png\n./sub/../astronaut.png\n{pictures / 'coffee.png'}\n"
        f"{(pictures / 'rocket.jpg').as_uri()}\n",
    )
    m = read(csv)
    assert [r.image_location for r in m.rows] == [
        str(pictures / "sub" / "x.png"),
        str(pictures / "astronaut.png"),
        str(pictures / "coffee.png"),
        str(pictures / "rocket.jpg"),
    ]
    assert m.bad_rows == []


def test_paths_outside_the_folder_are_refused_unless_allowed(tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    (batch / "link.png").symlink_to(outside)
    csv = write(batch / "m.csv", f"image\n../outside.png\n{outside}\nlink.png\n")

    m = read(csv)
    assert errors_by_line(m) == {
        2: "image path ../outside.png is outside the manifest's folder; "
        "set allow_outside_base in the config to allow it",
        3: f"image path {outside} is outside the manifest's folder; "
        "set allow_outside_base in the config to allow it",
        4: f"image path link.png is outside the manifest's folder (it links to {outside}); "
        "set allow_outside_base in the config to allow it",
    }
    assert [r.image_location for r in m.rows] == [None, None, None]

    allowed = read(csv, allow_outside_base=True)
    assert allowed.bad_rows == []
    assert [r.image_location for r in allowed.rows] == [str(outside)] * 3


def test_missing_local_picture_is_a_row_error(pictures: Path) -> None:
    csv = write(pictures / "m.csv", "image\nastronaut.png\nnope.png\n")
    assert errors_by_line(read(csv)) == {
        2: None,
        3: f"image file not found: {pictures / 'nope.png'}",
    }


# ------------------------------------------------------------------------------ bad rows


def test_every_bad_row_gets_its_own_message(pictures: Path) -> None:
    long_prompt = "p" * (STANDARD.max_prompt_chars + 1)
    rows = {
        2: ("ok1", "astronaut.png", "fine", "6", None),
        3: ("e1", "", "p", "6", "image is empty"),
        4: (
            "d7",
            "coffee.png",
            "p",
            "7",
            "duration 7 is not allowed for minimax/hailuo-2.3/i2v-standard; use 6 or 10",
        ),
        5: ("dsix", "coffee.png", "p", "six", "duration 'six' is not a number; use 6 or 10"),
        6: ("d60", "coffee.png", "p", "6.0", None),
        7: (
            "d65",
            "coffee.png",
            "p",
            "6.5",
            "duration 6.5 is not allowed for minimax/hailuo-2.3/i2v-standard; use 6 or 10",
        ),
        8: (
            "long",
            "coffee.png",
            long_prompt,
            "",
            f"prompt has {len(long_prompt)} characters; "
            "minimax/hailuo-2.3/i2v-standard takes at most 2000",
        ),
        9: ("OK1", "rocket.jpg", "p", "", "duplicate id 'OK1' (first used on line 2)"),
        10: ("ok1", "rocket.jpg", "p", "", "duplicate id 'ok1' (first used on line 2)"),
        11: ("h1", "http://example.com/a.png", "p", "", None),
        12: ("h2", "http://127.0.0.1:8000/a.png", "p", "", None),
        13: ("g1", "gs://bucket/a.png", "p", "", None),
        14: ("s1", "s3://bucket/a.png", "p", "", None),
        15: ("s2", "s3://bucket/", "p", "", None),
        16: ("w1", "https://example.com/a.png", "p", "", None),
        17: ("a/b", "coffee.png", "p", "", None),
        18: ("ok2", "data:image/png;base64,AAAA", "p", "", None),
        19: ("nan", "coffee.png", "p", "nan", "duration 'nan' is not a number; use 6 or 10"),
    }
    lines = ["id,image,prompt,duration"] + [
        ",".join(f'"{v}"' for v in values[:4]) for values in rows.values()
    ]
    lines.append("extra,coffee.png,p,6,surplus")  # line 20
    m = read(write(pictures / "m.csv", "\n".join(lines) + "\n"))
    got = errors_by_line(m)

    for line, values in rows.items():
        if values[4] is not None:
            assert got[line] == values[4], line
    assert got[2] is None and got[6] is None and got[14] is None and got[16] is None
    assert got[12] == (
        "image URL 'http://127.0.0.1:8000/a.png' resolves to 127.0.0.1, a loopback address: "
        "refused (allow internal hosts on the worker with I2V_PRIVATE_HOSTS=127.0.0.1:8000)"
    )
    assert got[11] == "image URL 'http://example.com/a.png' uses plain http; use https"
    assert got[13] == (
        "image location scheme 'gs' is not allowed here; "
        "use https:// or s3:// or a path relative to the manifest"
    )
    assert got[15] == "image URI 's3://bucket/' does not name an object (s3://bucket/key)"
    assert got[17] is not None and got[17].startswith("id 'a/b' cannot name a file")
    assert got[18] == "image is a data: URI; give a path, https:// or s3:// location"
    assert got[20] == (
        "row has 5 values but the header has 4 columns; quote values that contain commas"
    )
    by_line = {r.line: r for r in m.rows}
    assert by_line[6].duration == 6
    assert by_line[4].duration is None and by_line[4].image_location is None
    assert by_line[14].image_location == "s3://bucket/a.png"
    assert len(m.good_rows) == 4 and len(m.bad_rows) == len(m.rows) - 4


def test_internal_hosts_only_through_the_workers_allowance(
    pictures: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [
        "http://localhost:9/a.png",  # a name: judged when fetched, if the allowance may cover it
        "https://127.0.0.1:8443/a.png",
        "https://10.1.2.3/a.png",
        "http://[::1]:8443/a.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:10.0.0.1]/a.png",
        "http://example.com/a.png",
        "https://pictures.example.com/a.png",
    ]
    csv = write(pictures / "m.csv", "image\n" + "\n".join(images) + "\n")
    hint = "(allow internal hosts on the worker with I2V_PRIVATE_HOSTS="
    assert errors_by_line(read(csv)) == {
        2: "image URL 'http://localhost:9/a.png' uses plain http; use https",
        3: "image URL 'https://127.0.0.1:8443/a.png' resolves to 127.0.0.1, a loopback "
        f"address: refused {hint}127.0.0.1:8443)",
        4: f"image URL 'https://10.1.2.3/a.png' resolves to 10.1.2.3, a private address: "
        f"refused {hint}10.1.2.3)",
        5: "image URL 'http://[::1]:8443/a.png' resolves to ::1, a loopback address: "
        f"refused {hint}[::1]:8443)",
        6: "image URL 'https://169.254.169.254/latest/meta-data/' resolves to 169.254.169.254, "
        "a link-local address (where cloud metadata services answer): refused",
        7: "image URL 'https://[::ffff:10.0.0.1]/a.png' resolves to ::ffff:10.0.0.1, a private "
        f"address (IPv4 10.0.0.1 inside IPv6): refused {hint}[::ffff:10.0.0.1])",
        8: "image URL 'http://example.com/a.png' uses plain http; use https",
        9: None,
    }
    # The worker's environment, never the manifest or the flow's options, allows them.
    monkeypatch.setenv("I2V_PRIVATE_HOSTS", "localhost:9, 127.0.0.0/8,10.0.0.0/8 [::1]:8443")
    got = errors_by_line(read(csv))
    assert got[6] == (
        "image URL 'https://169.254.169.254/latest/meta-data/' resolves to 169.254.169.254, "
        "a link-local address (where cloud metadata services answer): refused"
    )
    # Line 8's name may resolve into an allowed network: judged when fetched.
    assert [line for line, error in got.items() if error is None] == [2, 3, 4, 5, 7, 8, 9]
    monkeypatch.setenv("I2V_PRIVATE_HOSTS", "localhost:9")
    got = errors_by_line(read(csv))
    assert got[2] is None and got[3] is not None and got[8] is not None


def test_a_bad_allowance_stops_the_run(pictures: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = write(pictures / "m.csv", "image\nastronaut.png\n")
    monkeypatch.setenv("I2V_PRIVATE_HOSTS", "pictures.internal,10.0.0.0/33")
    with pytest.raises(ConfigError, match=r"I2V_PRIVATE_HOSTS entry '10.0.0.0/33' is not"):
        read(csv)


def test_plain_http_and_schemes_narrowed(pictures: Path) -> None:
    csv = write(
        pictures / "m.csv",
        "image\nhttp://localhost:9/a.png\nastronaut.png\ns3://b/k.png\nhttps://x.org/a.png\n",
    )
    m = read(csv, allowed_schemes=("https",))
    assert errors_by_line(m) == {
        2: "image URL 'http://localhost:9/a.png' uses plain http; use https",
        3: "local image paths are not allowed here; use https:// or s3:// locations",
        4: "image location scheme 's3' is not allowed here; use https://",
        5: None,
    }


def test_model_without_duration_refuses_a_duration(pictures: Path) -> None:
    csv = write(pictures / "m.csv", "image,duration\nastronaut.png,\ncoffee.png,10\n")
    m = read(csv, spec=PRO)
    assert [r.duration for r in m.rows] == [None, None]
    assert errors_by_line(m) == {
        2: None,
        3: "minimax/hailuo-2.3/i2v-pro takes no duration (got '10'); leave it empty",
    }
    # The config always carries a default duration; it does not apply to this model.
    assert [r.duration for r in read(csv, spec=PRO, default_duration=6).rows] == [None, None]


def test_text_to_video_needs_a_prompt_not_an_image(tmp_path: Path) -> None:
    csv = write(tmp_path / "m.csv", "prompt\na rocket launch\n\n")
    assert read(csv, spec=T2V).rows[0].error is None
    csv = write(tmp_path / "m.csv", "prompt,id\n,x\n")
    assert read(csv, spec=T2V).rows[0].error == (
        "prompt is empty; minimax/hailuo-2.3/t2v-standard needs a prompt"
    )


def test_bad_defaults_are_config_errors(pictures: Path) -> None:
    csv = write(pictures / "m.csv", "image\nastronaut.png\n")
    with pytest.raises(ConfigError, match="default_duration 7 is not allowed"):
        read(csv, default_duration=7)
    with pytest.raises(ConfigError, match="default_prompt has 2001 characters"):
        read(csv, default_prompt="x" * 2001)


# ------------------------------------------------------------------------------ whole manifest


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"image,prompt\n", "has a header but no data rows"),
        (b"image,prompt\n,\n\n", "has a header but no data rows"),
        (b"picture,prompt\na.png,x\n", "has no 'image' column; found: 'picture', 'prompt'$"),
        (b"Image,prompt\na.png,x\n", "column names are case-sensitive"),
        (b"image,prompt, image\na.png,x,b.png\n", "duplicate column name 'image'"),
        (b"image,,prompt\na.png,oops,x\n", "column 2 has values but no name"),
        (b"PK\x03\x04\x14\x00\x06\x00", "looks like an Excel workbook"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data"),
    ],
)
def test_unusable_manifests_raise(tmp_path: Path, content: bytes, message: str) -> None:
    csv = tmp_path / "m.csv"
    csv.write_bytes(content)
    with pytest.raises(ManifestError, match=message) as info:
        read(csv)
    assert str(csv) in str(info.value)


def test_trailing_unnamed_empty_columns_are_ignored(pictures: Path) -> None:
    csv = write(pictures / "m.csv", "image,prompt,,\nastronaut.png,x,,\n")
    m = read(csv)
    assert m.extra_columns == [] and m.rows[0].extras == {} and m.bad_rows == []


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=exact(f"manifest not found: {tmp_path / 'nope.csv'}")):
        read(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="is a folder"):
        read(tmp_path)
    with pytest.raises(ManifestError, match="unsupported manifest source"):
        read("https://example.com/m.csv")
    with pytest.raises(ManifestError, match="names no bucket"):
        read("s3:///m.csv")


def test_relative_manifest_path(pictures: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(pictures / "m.csv", "image\nastronaut.png\n")
    monkeypatch.chdir(pictures.parent)
    m = read("pictures/m.csv")
    assert m.source == str(pictures / "m.csv")
    assert m.rows[0].image_location == str(pictures / "astronaut.png")


# ------------------------------------------------------------------------------ S3


def test_csv_on_s3_with_relative_keys(s3_bucket: str, s3: Any, pictures: Path) -> None:
    s3.put_object(
        Bucket=s3_bucket,
        Key="batch/manifest.csv",
        Body=(
            "id,image,prompt\n"
            "a,pics/astronaut.png,push in\n"
            "b,./pics/../coffee.png,\n"
            "c,../other/rocket.jpg,\n"
            f"d,s3://{s3_bucket}/elsewhere/x.png,\n"
            "e,https://example.com/y.png,\n"
            "f,/abs/z.png,\n"
            f"g,{(pictures / 'astronaut.png').as_uri()},\n"
            "h,../../up.png,\n"
        ).encode(),
    )
    uri = f"s3://{s3_bucket}/batch/manifest.csv"
    m = read(uri, s3_client=s3)
    assert m.source == uri
    assert m.base == f"s3://{s3_bucket}/batch"
    assert [r.image_location for r in m.rows] == [
        f"s3://{s3_bucket}/batch/pics/astronaut.png",
        f"s3://{s3_bucket}/batch/coffee.png",
        None,
        f"s3://{s3_bucket}/elsewhere/x.png",
        "https://example.com/y.png",
        None,
        None,
        None,
    ]
    errors = errors_by_line(m)
    assert errors[4] == (
        "image path ../other/rocket.jpg is outside the manifest's folder; "
        "set allow_outside_base in the config to allow it"
    )
    assert errors[7] is not None and "is absolute" in errors[7]
    assert errors[8] is not None and "is a local file but the manifest is on S3" in errors[8]
    assert errors[9] == f"image path ../../up.png goes above the top of bucket '{s3_bucket}'"

    allowed = read(uri, s3_client=s3, allow_outside_base=True)
    assert allowed.rows[2].image_location == f"s3://{s3_bucket}/other/rocket.jpg"
    assert allowed.rows[7].error is not None  # above the bucket stays refused


def test_missing_s3_manifest(s3_bucket: str) -> None:
    # No client given: read_manifest makes one from the environment (AWS_ENDPOINT_URL).
    with pytest.raises(ManifestError, match=exact(f"manifest not found: s3://{s3_bucket}/m.csv")):
        read(f"s3://{s3_bucket}/m.csv")
    with pytest.raises(ManifestError, match="bucket 'no-such-bucket-i2v' does not exist"):
        read("s3://no-such-bucket-i2v/m.csv")


def test_s3_prefix_of_pictures(s3_bucket: str, s3: Any, pictures: Path) -> None:
    for key, name in [
        ("shoot/rocket.jpg", "rocket.jpg"),
        ("shoot/astronaut.png", "astronaut.png"),
        ("shoot/b/astronaut.JPEG", "astronaut.png"),
        ("shoot/a/astronaut.png", "astronaut.png"),
        ("shoot/._astronaut.png", "astronaut.png"),  # macOS resource fork, not a picture
        ("shoot/notes.txt", "astronaut.png"),
        ("shoot2/coffee.png", "coffee.png"),  # a sibling prefix, not under shoot/
    ]:
        s3.put_object(Bucket=s3_bucket, Key=key, Body=(pictures / name).read_bytes())

    m = read(f"s3://{s3_bucket}/shoot", s3_client=s3, default_prompt="slow zoom")
    assert m.base == f"s3://{s3_bucket}/shoot"
    assert [r.image for r in m.rows] == [
        f"s3://{s3_bucket}/shoot/a/astronaut.png",
        f"s3://{s3_bucket}/shoot/astronaut.png",
        f"s3://{s3_bucket}/shoot/b/astronaut.JPEG",
        f"s3://{s3_bucket}/shoot/rocket.jpg",
    ]
    assert [r.image_location for r in m.rows] == [r.image for r in m.rows]
    assert [r.id for r in m.rows] == ["astronaut", "astronaut-2", "astronaut-3", "rocket"]
    assert [r.line for r in m.rows] == [1, 2, 3, 4]
    assert {r.prompt for r in m.rows} == {"slow zoom"}
    assert {r.duration for r in m.rows} == {6}
    assert m.bad_rows == [] and m.extra_columns == []

    assert {r.duration for r in read(f"s3://{s3_bucket}/shoot/", default_duration=10).rows} == {10}


def test_s3_prefix_without_pictures(s3_bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=s3_bucket, Key="docs/readme.txt", Body=b"x")
    with pytest.raises(ManifestError, match=r"no \.jpg/\.jpeg/\.png pictures under .*docs/"):
        read(f"s3://{s3_bucket}/docs", s3_client=s3)
    with pytest.raises(ManifestError, match="1 other objects found"):
        read(f"s3://{s3_bucket}/docs", s3_client=s3)
    with pytest.raises(ManifestError, match="pictures under"):
        read(f"s3://{s3_bucket}/empty/", s3_client=s3)
    with pytest.raises(ManifestError, match="does not exist"):
        read("s3://no-such-bucket-i2v/pics/", s3_client=s3)


def test_large_manifest_reads_quickly(pictures: Path) -> None:
    lines = ["id,image,prompt,duration,batch"]
    lines += [f"r{i},astronaut.png,prompt {i},{6 if i % 2 else 10},b{i % 7}" for i in range(20000)]
    csv = write(pictures / "big.csv", "\n".join(lines))
    m = read(csv)
    assert len(m.good_rows) == 20000
    assert os.path.basename(m.rows[-1].image_location or "") == "astronaut.png"
