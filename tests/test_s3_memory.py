"""Big S3 transfers stay bounded in memory (see i2v.s3_storage): in the caller's thread, a few at
a time, multipart and atomic, malloc's free memory given back after each; and a run's
threads share two malloc arenas."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from i2v import landing
from i2v import s3_storage as s3_module
from i2v._constants import MiB
from i2v.dest import open_storage
from i2v.errors import StorageError
from i2v.memory import give_back_free_memory
from i2v.s3 import make_s3_client
from i2v.s3_storage import S3Storage


@pytest.fixture
def storage(s3_bucket: str) -> S3Storage:
    made = open_storage(f"s3://{s3_bucket}/out")
    assert isinstance(made, S3Storage)
    return made


def staged(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_big_upload_is_multipart_in_the_callers_thread(
    storage: S3Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[int] = set()
    real_part = storage.client.upload_part

    def part(**kwargs: Any) -> Any:
        threads.add(threading.get_ident())
        return real_part(**kwargs)

    monkeypatch.setattr(storage.client, "upload_part", part)
    before = threading.active_count()
    storage.put_file("videos/big.mp4", staged(tmp_path, "big.mp4", 17 * MiB))

    assert threads == {threading.get_ident()}  # 3 parts, no s3transfer threads
    # None left behind (another test's thread may end meanwhile: at most as many).
    assert threading.active_count() <= before
    head = storage.client.head_object(Bucket=storage.bucket, Key="out/videos/big.mp4")
    assert head["ETag"].strip('"').endswith("-3")


def test_a_failed_big_upload_leaves_no_object_and_no_open_upload(
    storage: S3Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_part = storage.client.upload_part

    def part(**kwargs: Any) -> Any:
        if kwargs["PartNumber"] == 2:
            raise OSError("disk went away")
        return real_part(**kwargs)

    monkeypatch.setattr(storage.client, "upload_part", part)
    with pytest.raises(StorageError, match="cannot upload"):
        storage.put_file("videos/big.mp4", staged(tmp_path, "big.mp4", 17 * MiB))

    assert not storage.exists("videos/big.mp4")
    open_uploads = make_s3_client().list_multipart_uploads(Bucket=storage.bucket)
    assert not open_uploads.get("Uploads")


def test_memory_is_given_back_after_big_transfers_only(
    storage: S3Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(s3_module, "give_back_free_memory", lambda: calls.append("trim"))

    storage.put_file("videos/small.mp4", staged(tmp_path, "small.mp4", MiB))
    assert calls == []
    storage.put_file("videos/big.mp4", staged(tmp_path, "big.mp4", 9 * MiB))
    assert calls == ["trim"]
    storage.get_file("videos/big.mp4", tmp_path / "back.mp4")
    assert calls == ["trim", "trim"]
    assert (tmp_path / "back.mp4").read_bytes() == (tmp_path / "big.mp4").read_bytes()


def test_unstaging_a_big_landing_gives_memory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    give_back_free_memory()  # callable here whatever the libc: a no-op without glibc
    calls: list[str] = []
    monkeypatch.setattr(landing, "give_back_free_memory", lambda: calls.append("trim"))
    small, big = tmp_path / "small.part", tmp_path / "big.part"
    small.write_bytes(b"x")
    big.write_bytes(b"x")

    landing._unstage(small, MiB)
    landing._unstage(big, landing.BIG_VIDEO_BYTES)
    landing._unstage(tmp_path / "moved-away.part", landing.BIG_VIDEO_BYTES)  # a folder DEST's

    assert not small.exists() and not big.exists()
    assert calls == ["trim", "trim"]


ARENA_PROBE = r"""
import ctypes, re, sys, tempfile, threading
from pathlib import Path
from i2v.memory import limit_malloc_arenas

limited = sys.argv[1] == "limit" and limit_malloc_arenas(2)
libc = ctypes.CDLL(None)
held, ready, done = [], threading.Barrier(17), threading.Event()

def work():
    held.append([bytearray(300_000) for _ in range(4)])  # malloc'd, not pymalloc
    ready.wait()
    done.wait()

threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads:
    t.start()
ready.wait()
with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
    libc.fopen.restype = ctypes.c_void_p
    fp = libc.fopen(tmp.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    heaps = len(re.findall(r'<heap nr="\d+">', Path(tmp.name).read_text()))
done.set()
for t in threads:
    t.join()
print(limited, heaps)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
@pytest.mark.parametrize("mode", ["limit", "default"])
def test_a_run_shares_two_malloc_arenas_however_many_threads(mode: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MALLOC_ARENA_MAX": ""},
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    limited, heaps = out[0] == "True", int(out[1])
    if mode == "limit":
        assert limited and heaps <= 2, out
    else:  # what it saves: glibc's default gives threads arenas of their own
        assert heaps > 2, out
