"""Storage backends against a real folder and a real (moto) S3 server on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from i2v._constants import MiB
from i2v.dest import open_storage
from i2v.errors import ConfigError, InputError, StorageError
from i2v.local_storage import LocalStorage
from i2v.localfs import LOCK_NAME, TMP_SUFFIX, folder_lock
from i2v.locations import presign_location, read_location
from i2v.s3 import BOTO_ATTEMPTS, default_s3_client, make_s3_client, split_s3_uri
from i2v.s3_storage import BIG_TRANSFERS_AT_ONCE, S3Storage
from i2v.storage import Storage
from tests.helpers import REPO


def exact(message: str) -> str:
    """A `match=` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return make_s3_client()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return open_storage(tmp_path / "out" / "demo")
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"s3://{bucket}/runs/demo")


# ------------------------------------------------------------------------------ both backends


def test_write_read_exists_size(storage: Storage) -> None:
    assert storage.read_bytes("videos/a.mp4") is None
    assert not storage.exists("videos/a.mp4")
    assert storage.size("videos/a.mp4") is None

    storage.write_bytes("videos/a.mp4", b"first", content_type="video/mp4")
    storage.write_bytes("videos/a.mp4", b"second version")  # overwrite

    assert storage.read_bytes("videos/a.mp4") == b"second version"
    assert storage.exists("videos/a.mp4")
    assert storage.size("videos/a.mp4") == len(b"second version")
    assert not storage.exists("videos")  # a folder is not an object


def test_list_is_sorted_relative_and_prefix_bounded(storage: Storage) -> None:
    for key in ["videos/b.mp4", "_state/x.json", "videos/a.mp4", "videos2/c.mp4", "top.csv"]:
        storage.write_bytes(key, b"x")

    assert storage.list() == [
        "_state/x.json",
        "top.csv",
        "videos/a.mp4",
        "videos/b.mp4",
        "videos2/c.mp4",
    ]
    assert storage.list("videos/") == ["videos/a.mp4", "videos/b.mp4"]
    assert storage.list("videos") == ["videos/a.mp4", "videos/b.mp4", "videos2/c.mp4"]
    assert storage.list("videos/a") == ["videos/a.mp4"]
    assert storage.list("nothing/") == []


def test_list_excludes_staging_and_in_progress_files(storage: Storage) -> None:
    storage.write_bytes("videos/a.mp4", b"x")
    (storage.staging_dir() / "half.mp4.part").write_bytes(b"partial")
    if isinstance(storage, LocalStorage):
        (storage.root / "videos" / f".b.mp4.1234{TMP_SUFFIX}").write_bytes(b"crashed write")
    assert storage.list() == ["videos/a.mp4"]


def test_copy_and_delete(storage: Storage) -> None:
    storage.write_bytes("videos/a.mp4", b"payload")
    storage.copy("videos/a.mp4", "videos/copies/b.mp4")
    assert storage.read_bytes("videos/copies/b.mp4") == b"payload"
    assert storage.read_bytes("videos/a.mp4") == b"payload"

    storage.delete("videos/a.mp4")
    assert not storage.exists("videos/a.mp4")
    storage.delete("videos/a.mp4")  # missing is fine
    assert storage.list() == ["videos/copies/b.mp4"]


def test_copy_of_missing_source_is_a_storage_error(storage: Storage) -> None:
    with pytest.raises(StorageError, match=r"does not exist") as info:
        storage.copy("videos/nope.mp4", "videos/b.mp4")
    assert storage.key_uri("videos/nope.mp4") in str(info.value)


def test_put_file_lands_a_staged_file(storage: Storage) -> None:
    staged = storage.staging_dir() / "v.mp4.part"
    staged.write_bytes(b"\x00\x01video" * 1000)
    storage.put_file("videos/v.mp4", staged, content_type="video/mp4")
    assert storage.read_bytes("videos/v.mp4") == b"\x00\x01video" * 1000
    staged.unlink(missing_ok=True)  # what the pipeline does afterwards


@pytest.mark.parametrize("key", ["", "../x", "/abs/x", "a//b", "a/./b", "a\\b", "videos/"])
def test_keys_that_could_escape_or_mislead_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        storage.write_bytes(key, b"x")
    with pytest.raises(StorageError, match="invalid storage key"):
        storage.read_bytes(key)
    with pytest.raises(StorageError, match="invalid storage key"):
        storage.write_if_absent(key, b"x")


# ------------------------------------------------------------------------------ conditional writes


def test_write_if_absent_creates_only_once(storage: Storage) -> None:
    assert storage.write_if_absent("claims/a.json", b"first", content_type="application/json")
    assert not storage.write_if_absent("claims/a.json", b"second")
    assert storage.read_bytes("claims/a.json") == b"first"
    assert storage.list() == ["claims/a.json"]  # no lock or temp file shows


def test_replace_if_writes_only_over_the_version_read(storage: Storage) -> None:
    assert storage.read_versioned("claims/a.json") == (None, None)
    assert storage.replace_if("claims/a.json", b"v1", None)  # None: create
    assert not storage.replace_if("claims/a.json", b"again", None)
    data, v1 = storage.read_versioned("claims/a.json")
    assert data == b"v1" and v1

    assert storage.replace_if("claims/a.json", b"v2", v1)
    data, v2 = storage.read_versioned("claims/a.json")
    assert data == b"v2" and v2 not in (None, v1)
    assert not storage.replace_if("claims/a.json", b"stale", v1)
    assert storage.read_versioned("claims/a.json") == (b"v2", v2)

    storage.write_bytes("claims/a.json", b"v3")  # an unconditional write is a new version
    assert not storage.replace_if("claims/a.json", b"stale", v2)
    _, v3 = storage.read_versioned("claims/a.json")
    storage.delete("claims/a.json")
    assert not storage.replace_if("claims/a.json", b"stale", v3)  # gone since read
    assert storage.read_versioned("claims/a.json") == (None, None)


def _race(n: int, attempt: Any) -> list[int]:
    """Run `attempt(i)` in n threads released together; the i of those that got True."""
    barrier = threading.Barrier(n)
    wins: list[int] = []

    def run(i: int) -> None:
        barrier.wait()
        if attempt(i):
            wins.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wins


def test_racing_threads_create_once(storage: Storage) -> None:
    for round_ in range(5):
        key = f"claims/{round_}.json"
        wins = _race(12, lambda i, key=key: storage.write_if_absent(key, f"run-{i}".encode()))
        assert len(wins) == 1, wins
        assert storage.read_bytes(key) == f"run-{wins[0]}".encode()


def test_racing_threads_replace_one_version_once(storage: Storage) -> None:
    for round_ in range(5):
        key = f"claims/{round_}.json"
        storage.write_bytes(key, b"initial")
        _, version = storage.read_versioned(key)
        wins = _race(12, lambda i, k=key, v=version: storage.replace_if(k, f"run-{i}".encode(), v))
        assert len(wins) == 1, wins
        assert storage.read_bytes(key) == f"run-{wins[0]}".encode()


_RACER = """
import sys
from i2v.local_storage import LocalStorage

storage, me, rounds = LocalStorage(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()  # released together with the other racers
for i in range(rounds):
    if storage.write_if_absent(f"claims/{i}.json", me.encode()):
        print(f"claims/{i}.json", flush=True)
    if storage.replace_if(f"cas/{i}.json", me.encode(), sys.argv[4]):
        print(f"cas/{i}.json", flush=True)
"""


def test_local_racing_processes_create_and_replace_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    rounds = 40
    for i in range(rounds):
        storage.write_bytes(f"cas/{i}.json", b"initial")
    version = storage.read_versioned("cas/0.json")[1]
    assert version is not None
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(storage.root), f"proc-{n}", str(rounds), version],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for n in range(3)
    ]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    won: dict[str, list[str]] = {}
    for n, racer in enumerate(racers):
        out, _ = racer.communicate(timeout=120)
        assert racer.returncode == 0
        for key in out.split():
            won.setdefault(key, []).append(f"proc-{n}")
    for i in range(rounds):
        for key in (f"claims/{i}.json", f"cas/{i}.json"):
            assert len(won.get(key, [])) == 1, (key, won.get(key))
            assert storage.read_bytes(key) == won[key][0].encode()


def test_local_conditional_writes_share_the_folder_lock(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    storage.write_bytes("claims/b.json", b"old")
    _, version = storage.read_versioned("claims/b.json")
    results: list[bool] = []
    calls = [
        lambda: results.append(storage.write_if_absent("claims/a.json", b"a") is not None),
        lambda: results.append(storage.replace_if("claims/b.json", b"new", version) is not None),
    ]
    threads = [threading.Thread(target=call) for call in calls]
    with folder_lock(storage.root / "claims"):  # as another process mid-replace would
        for t in threads:
            t.start()
        time.sleep(0.3)
        assert results == []
        assert storage.read_bytes("claims/a.json") is None
        assert storage.read_bytes("claims/b.json") == b"old"
    for t in threads:
        t.join(timeout=10)
    assert results == [True, True]
    assert storage.read_bytes("claims/b.json") == b"new"


def test_local_failed_create_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "out")

    def broken_link(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", broken_link)
    with pytest.raises(StorageError, match="No space left on device"):
        storage.write_if_absent("claims/a.json", b"x")
    monkeypatch.undo()
    assert storage.list() == []
    assert [p.name for p in (tmp_path / "out" / "claims").iterdir()] == [LOCK_NAME]


def test_s3_conditional_writes_use_the_prefix_type_and_etag(s3_bucket: str, s3: Any) -> None:
    storage = open_storage(f"s3://{s3_bucket}/runs/demo")
    assert storage.write_if_absent("_state/a.json", b"{}", content_type="application/json")
    head = s3.head_object(Bucket=s3_bucket, Key="runs/demo/_state/a.json")
    assert head["ContentType"] == "application/json"
    assert storage.read_versioned("_state/a.json") == (b"{}", head["ETag"])
    assert storage.replace_if("_state/a.json", b"[]", head["ETag"], content_type="text/plain")
    assert s3.head_object(Bucket=s3_bucket, Key="runs/demo/_state/a.json")["ContentType"] == (
        "text/plain"
    )


# ------------------------------------------------------------------------------ local


def test_local_forms_and_lazy_creation(tmp_path: Path) -> None:
    root = tmp_path / "out" / "demo"
    storage = open_storage(str(root))
    assert isinstance(storage, LocalStorage)
    assert not root.exists()  # created on first write, not on open
    assert storage.uri == str(root)
    assert storage.key_uri("videos/a.mp4") == str(root / "videos" / "a.mp4")
    assert storage.key_uri("runs/r1/") == str(root / "runs" / "r1")
    assert storage.presign_get("videos/a.mp4") is None
    storage.write_bytes("videos/a.mp4", b"x")
    assert (root / "videos" / "a.mp4").read_bytes() == b"x"


def test_local_relative_root_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage("out/demo")
    assert storage.uri == str(tmp_path / "out" / "demo")
    assert os.path.isabs(storage.key_uri("a.txt"))


def test_local_write_leaves_no_temp_and_respects_umask(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    old = os.umask(0o022)
    try:
        storage.write_bytes("_state/a.json", b"{}")
    finally:
        os.umask(old)
    assert sorted(p.name for p in (tmp_path / "out" / "_state").iterdir()) == ["a.json"]
    assert (tmp_path / "out" / "_state" / "a.json").stat().st_mode & 0o777 == 0o644


def test_local_failed_write_keeps_old_content_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "out")
    storage.write_bytes("a.json", b"old")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="No space left on device"):
        storage.write_bytes("a.json", b"new")
    monkeypatch.undo()
    assert storage.read_bytes("a.json") == b"old"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.json"]


def test_local_put_file_is_a_rename_within_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    staging = storage.staging_dir()
    assert staging == tmp_path / "out" / ".staging"
    assert staging.stat().st_dev == storage.root.stat().st_dev
    staged = staging / "v.part"
    staged.write_bytes(b"video")
    inode = staged.stat().st_ino
    storage.put_file("videos/v.mp4", staged)
    assert not staged.exists()
    assert (storage.root / "videos" / "v.mp4").stat().st_ino == inode  # moved, not copied


def test_local_destination_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        open_storage(f)


# ------------------------------------------------------------------------------ s3


def test_s3_forms(s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}/runs/demo/")
    assert isinstance(storage, S3Storage)
    assert storage.uri == f"s3://{s3_bucket}/runs/demo"
    assert storage.key_uri("videos/a.mp4") == f"s3://{s3_bucket}/runs/demo/videos/a.mp4"
    assert storage.key_uri("runs/r1/") == f"s3://{s3_bucket}/runs/demo/runs/r1/"
    root = open_storage(f"s3://{s3_bucket}")
    assert root.uri == f"s3://{s3_bucket}"
    assert root.key_uri("a.mp4") == f"s3://{s3_bucket}/a.mp4"


def test_s3_keys_land_under_the_prefix(s3_bucket: str, s3: Any) -> None:
    storage = open_storage(f"s3://{s3_bucket}/runs/demo")
    storage.write_bytes("videos/a.mp4", b"x", content_type="video/mp4")
    head = s3.head_object(Bucket=s3_bucket, Key="runs/demo/videos/a.mp4")
    assert head["ContentType"] == "video/mp4"


def test_s3_big_put_file_goes_multipart(s3_bucket: str, s3: Any, tmp_path: Path) -> None:
    storage = open_storage(f"s3://{s3_bucket}/out")
    staged = storage.staging_dir() / "big.mp4.part"
    block = os.urandom(MiB)
    with open(staged, "wb") as f:
        for _ in range(20):
            f.write(block)
    storage.put_file("videos/big.mp4", staged, content_type="video/mp4")

    head = s3.head_object(Bucket=s3_bucket, Key="out/videos/big.mp4")
    assert head["ContentLength"] == 20 * MiB
    assert head["ContentType"] == "video/mp4"
    assert head["ETag"].strip('"').endswith("-3")  # 8 MiB parts: 8 + 8 + 4
    assert staged.exists()  # S3 leaves the staged file for the caller to remove
    assert storage.size("videos/big.mp4") == 20 * MiB


def test_s3_big_transfers_take_turns_small_ones_do_not(
    s3_bucket: str, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(f"s3://{s3_bucket}/out")
    assert isinstance(storage, S3Storage)
    busy: dict[str, int] = {"now": 0, "peak": 0}
    lock = threading.Lock()
    real_upload = storage.client.upload_file

    def counted(*args: Any, **kwargs: Any) -> None:  # the real upload, with a head count
        with lock:
            busy["now"] += 1
            busy["peak"] = max(busy["peak"], busy["now"])
        try:
            time.sleep(0.2)  # overlap the uploads if nothing keeps them apart
            real_upload(*args, **kwargs)
        finally:
            with lock:
                busy["now"] -= 1

    monkeypatch.setattr(storage.client, "upload_file", counted)

    def land_all(size: int, n: int) -> int:
        busy["peak"] = 0
        files = []
        for i in range(n):
            path = tmp_path / f"{size}-{i}.mp4"
            path.write_bytes(os.urandom(size))
            files.append(path)
        threads = [
            threading.Thread(target=storage.put_file, args=(f"videos/{p.name}", p)) for p in files
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return busy["peak"]

    more = BIG_TRANSFERS_AT_ONCE + 2
    assert land_all(9 * MiB, more) == BIG_TRANSFERS_AT_ONCE
    assert land_all(1 * MiB, more) == more
    assert len(storage.list("videos/")) == 2 * more

    fetched = tmp_path / "back.mp4"
    storage.get_file("videos/9437184-0.mp4", fetched)
    assert fetched.read_bytes() == (tmp_path / "9437184-0.mp4").read_bytes()
    with pytest.raises(StorageError, match="does not exist"):
        storage.get_file("videos/nope.mp4", fetched)


def test_s3_presign_get_serves_the_bytes(s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}/out")
    storage.write_bytes("videos/a.mp4", b"presigned payload")
    url = storage.presign_get("videos/a.mp4", expires_s=60)
    assert url is not None and "Signature" in url
    assert httpx.get(url).content == b"presigned payload"


def test_s3_list_follows_every_page(s3_bucket: str, s3: Any) -> None:
    storage = S3Storage(s3_bucket, "p", s3_client=s3)
    storage.list_page_size = 3  # so 10 keys take 4 ListObjectsV2 calls
    calls: list[int] = []
    s3.meta.events.register("before-send.s3.ListObjectsV2", lambda **_: calls.append(1))
    for i in range(10):
        s3.put_object(Bucket=s3_bucket, Key=f"p/k/{i:02d}", Body=b"")
    assert storage.list("k/") == [f"k/{i:02d}" for i in range(10)]
    assert len(calls) == 4


def test_s3_missing_bucket_is_a_storage_error_naming_the_uri(
    s3_endpoint: str, tmp_path: Path
) -> None:
    storage = open_storage("s3://no-such-bucket-i2v/out")
    staged = tmp_path / "v.mp4"
    staged.write_bytes(b"x")
    calls = [
        lambda: storage.write_bytes("a.json", b"x"),
        lambda: storage.read_bytes("a.json"),
        lambda: storage.exists("a.json"),
        lambda: storage.size("a.json"),
        lambda: storage.list(),
        lambda: storage.delete("a.json"),
        lambda: storage.put_file("v.mp4", staged),
        lambda: storage.read_versioned("a.json"),
        lambda: storage.write_if_absent("a.json", b"x"),
        lambda: storage.replace_if("a.json", b"x", '"0"'),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="no-such-bucket-i2v") as info:
            call()
        assert "does not exist" in str(info.value)


def test_make_s3_client_uses_the_endpoint_from_the_environment(s3_endpoint: str) -> None:
    client = make_s3_client()
    assert client.meta.endpoint_url == s3_endpoint  # boto3 reads AWS_ENDPOINT_URL itself
    # botocore stores max_attempts=N retries as N + 1 attempts in all.
    assert client.meta.config.retries == {
        "mode": "standard",
        "total_max_attempts": BOTO_ATTEMPTS + 1,
    }
    assert client.meta.config.max_pool_connections == 64
    assert make_s3_client(boto3.Session()).meta.endpoint_url == s3_endpoint


# ------------------------------------------------------------------------------ open_storage


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("gs://bucket/x", "unsupported destination"),
        ("http://example.com/out", "unsupported destination"),
        ("", "empty"),
    ],
)
def test_open_storage_refuses_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_storage(uri)


def test_split_s3_uri() -> None:
    assert split_s3_uri("s3://b/k/x.png") == ("b", "k/x.png")
    assert split_s3_uri("s3://b") == ("b", "")
    assert split_s3_uri("s3://b/a b?c#d") == ("b", "a b?c#d")  # keys are literal
    with pytest.raises(ConfigError):
        split_s3_uri("/local/path")


# ------------------------------------------------------------------------------ read_location


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    streamed: list[int] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/files/a.png")
            self.end_headers()
        elif self.path.startswith("/files/") and self.path[7:] in self.files:
            body = self.files[self.path[7:]]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/endless":
            # No Content-Length: the client only learns the size by reading.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            try:
                while sent < 512 * MiB:
                    self.wfile.write(b"\0" * 65536)
                    sent += 65536
            except OSError:
                pass
            self.streamed.append(sent)
        elif self.path == "/boom":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A picture server on loopback, which this worker's allowance lets it reach."""
    monkeypatch.setenv("I2V_PRIVATE_HOSTS", "127.0.0.1")
    _Handler.files = {"a.png": b"picture bytes", "big.png": b"x" * 5000}
    _Handler.streamed = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_read_location_local(tmp_path: Path) -> None:
    f = tmp_path / "a.png"
    f.write_bytes(b"0123456789")
    assert read_location(str(f)) == b"0123456789"
    assert read_location(f.as_uri()) == b"0123456789"
    assert read_location(str(f), max_bytes=10) == b"0123456789"
    with pytest.raises(InputError, match=r"is 10 bytes; the limit is 9"):
        read_location(str(f), max_bytes=9)
    with pytest.raises(InputError, match=exact(f"image file not found: {tmp_path / 'nope.png'}")):
        read_location(str(tmp_path / "nope.png"))
    with pytest.raises(InputError, match="folder"):
        read_location(str(tmp_path))


def test_read_location_s3(s3_bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=s3_bucket, Key="pics/a.png", Body=b"0123456789")
    s3.put_object(Bucket=s3_bucket, Key="pics/empty.png", Body=b"")
    uri = f"s3://{s3_bucket}/pics/a.png"
    assert read_location(uri) == b"0123456789"
    assert read_location(uri, s3_client=s3, max_bytes=10) == b"0123456789"
    assert read_location(f"s3://{s3_bucket}/pics/empty.png", max_bytes=10) == b""
    with pytest.raises(InputError, match=exact(f"image not found: s3://{s3_bucket}/pics/b.png")):
        read_location(f"s3://{s3_bucket}/pics/b.png")
    with pytest.raises(InputError, match=exact("image not found: s3://no-such-bucket-i2v/a.png")):
        read_location("s3://no-such-bucket-i2v/a.png")


def test_read_location_s3_asks_only_for_the_allowed_bytes(s3_bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=s3_bucket, Key="big.png", Body=b"x" * MiB)
    ranges: list[str | None] = []
    s3.meta.events.register(
        "before-send.s3.GetObject", lambda request, **_: ranges.append(request.headers["Range"])
    )
    with pytest.raises(InputError, match=r"is 1048576 bytes; the limit is 1000"):
        read_location(f"s3://{s3_bucket}/big.png", s3_client=s3, max_bytes=1000)
    assert ranges in ([b"bytes=0-1000"], ["bytes=0-1000"])


def test_read_location_http(http_server: str) -> None:
    assert read_location(f"{http_server}/files/a.png") == b"picture bytes"
    assert read_location(f"{http_server}/redirect") == b"picture bytes"
    with pytest.raises(InputError, match=r"image not found: .*/files/nope.png \(HTTP 404\)"):
        read_location(f"{http_server}/files/nope.png")
    with pytest.raises(InputError, match=r"is 5000 bytes; the limit is 4999"):
        read_location(f"{http_server}/files/big.png", max_bytes=4999)
    with pytest.raises(StorageError, match="HTTP 503"):
        read_location(f"{http_server}/boom")


def test_read_location_http_stops_reading_past_the_limit(http_server: str) -> None:
    started = time.monotonic()
    with pytest.raises(InputError, match="larger than the limit of 100000 bytes"):
        read_location(f"{http_server}/endless", max_bytes=100_000)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while not _Handler.streamed and time.monotonic() < deadline:
        time.sleep(0.01)
    # The server saw the connection drop long before its 512 MiB were sent.
    assert _Handler.streamed and _Handler.streamed[0] < 64 * MiB


def test_read_location_refuses_other_schemes() -> None:
    with pytest.raises(InputError, match="unsupported image location"):
        read_location("gs://bucket/a.png")


def test_presign_location_fetches_the_object(s3_bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=s3_bucket, Key="pics/a b.png", Body=b"presigned picture")
    url = presign_location(f"s3://{s3_bucket}/pics/a b.png", expires_s=120)
    assert url.startswith("http://127.0.0.1:")
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"presigned picture"
    with pytest.raises(InputError, match="only s3://"):
        presign_location("https://example.com/a.png")
    with pytest.raises(InputError, match="names no object"):
        presign_location(f"s3://{s3_bucket}")


def test_default_client_is_shared_until_the_environment_changes(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_s3_client() is default_s3_client()
    assert default_s3_client().meta.endpoint_url == s3_endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert default_s3_client().meta.endpoint_url == "http://127.0.0.1:9"
