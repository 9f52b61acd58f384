"""The simulated Atlas Cloud API as an ASGI app (Starlette).

Same paths, JSON shapes and statuses as the real API (see ATLAS_API.md), plus `/_sim/*`
endpoints for media, outputs, stats and live configuration. Job state is computed from
the clock when asked: no background loop, so a thousand idle jobs cost nothing.
"""

from __future__ import annotations

import base64
import binascii
import colorsys
import contextlib
import dataclasses
import hashlib
import io
import ipaddress
import json
import mimetypes
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
from PIL import Image, ImageDraw
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from i2v.models import DEFAULT_MODEL, MODELS, ModelSpec
from i2v.simulator.config import SimulatorConfig
from i2v.simulator.render import cached_render, parse_motion

OUTPUT_CHUNK = 256 * 1024
MAX_BODY_BYTES = 50 * 1024 * 1024  # the real API answers 413 above 50 MB
MAX_IMAGE_BYTES = 20 * 1024 * 1024
_MAX_DRAIN_BYTES = 256 * 1024 * 1024
MIN_SHORT_SIDE = 300  # the short side must be OVER this
MAX_ASPECT = 2.5  # 2:5 .. 5:2
MODERATION_ERROR_CODE = 1039
FALLBACK_DURATION_S = 6  # for models without a duration input (i2v-pro, t2v-pro)
_ZEROS = bytes(OUTPUT_CHUNK)
_INLINE_LIMIT = 256 * 1024  # bigger bodies are parsed off the event loop
T = TypeVar("T")
_CONTROL_PATHS = ("/_sim/stats", "/_sim/config", "/_sim/reset")


class ApiError(Exception):
    """An error answer: `{"code": status, "msg": msg}` with that HTTP status."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


class DownloadCut(Exception):
    """Raised mid-stream on purpose (`download_failures`): the server drops the connection."""


def error_response(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"code": status, "msg": msg}, status_code=status)


def _ok(data: Any) -> JSONResponse:
    return JSONResponse({"code": 200, "msg": "success", "data": data})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SimulatorStats:
    """What the simulator saw; thread-safe, served as JSON by `GET /_sim/stats`.

    `generate_posts` and `polls` count every such request (rejected ones too);
    `uploads` counts stored files; `downloads` counts output streams started.
    `submissions_per_input` maps one input (picture sha, prompt, duration, model) to the
    number of jobs created for it: a value above 1 means that input was paid twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ends: list[float] = []  # monotonic end times of jobs created, for in_flight
        self.uploads = 0
        self.generate_posts = 0
        self.jobs_created = 0
        self.polls = 0
        self.downloads = 0
        self.submissions_per_input: dict[str, int] = {}
        self.max_in_flight = 0
        self.responses_by_status: dict[int, int] = {}

    def reset(self) -> None:
        """Zero the counters; jobs still processing stay in flight."""
        with self._lock:
            self.uploads = self.generate_posts = self.jobs_created = 0
            self.polls = self.downloads = 0
            self.submissions_per_input = {}
            self.responses_by_status = {}
            self.max_in_flight = self._in_flight_locked()

    def _in_flight_locked(self) -> int:
        now = time.monotonic()
        self._ends = [e for e in self._ends if e > now]
        return len(self._ends)

    @property
    def in_flight(self) -> int:
        """Jobs processing now (stuck jobs forever)."""
        with self._lock:
            return self._in_flight_locked()

    @property
    def distinct_inputs(self) -> int:
        """Distinct (picture sha, prompt, duration, model) among the jobs created."""
        with self._lock:
            return len(self.submissions_per_input)

    def add(self, counter: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + n)

    def record_status(self, status: int) -> None:
        with self._lock:
            self.responses_by_status[status] = self.responses_by_status.get(status, 0) + 1

    def record_job(self, input_key: str, ends_at: float) -> None:
        """A job was created; it counts as in flight until `ends_at` (monotonic)."""
        with self._lock:
            self.jobs_created += 1
            self.submissions_per_input[input_key] = self.submissions_per_input.get(input_key, 0) + 1
            self._ends.append(ends_at)
            self.max_in_flight = max(self.max_in_flight, self._in_flight_locked())

    def snapshot(self) -> dict[str, Any]:
        """All counters as plain JSON-ready values."""
        with self._lock:
            return {
                "uploads": self.uploads,
                "generate_posts": self.generate_posts,
                "jobs_created": self.jobs_created,
                "polls": self.polls,
                "downloads": self.downloads,
                "distinct_inputs": len(self.submissions_per_input),
                "submissions_per_input": dict(self.submissions_per_input),
                "in_flight": self._in_flight_locked(),
                "max_in_flight": self.max_in_flight,
                "responses_by_status": dict(self.responses_by_status),
            }


@dataclass(frozen=True)
class _Media:
    sha: str
    file_name: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Job:
    """One prediction; its status follows from the clock."""

    id: str
    model: str
    prompt: str
    duration_s: int
    image_sha: str
    motion: str
    width: int
    fps: int
    created: float  # time.monotonic()
    created_wall: float  # time.time()
    latency_s: float
    outcome: Literal["completed", "failed", "stuck"]

    @property
    def ends_at(self) -> float:
        return float("inf") if self.outcome == "stuck" else self.created + self.latency_s

    def status(self, now: float) -> str:
        return "processing" if now < self.ends_at else self.outcome


async def _off_loop_if_large(size: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), in a worker thread when the input is big enough to stall the event loop
    (a 27 MB base64 body), inline otherwise (a thread hop costs more than a small parse)."""
    if size > _INLINE_LIMIT:
        return await anyio.to_thread.run_sync(fn, *args)
    return fn(*args)


def _picture_problem(data: bytes) -> str | None:
    """Why a picture is refused by the model's image rules, or None when it is fine."""
    if len(data) > MAX_IMAGE_BYTES:
        return f"image is {len(data)} bytes; the limit is 20 MB"
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if fmt not in ("JPEG", "PNG"):
                return f"image must be JPG or PNG, got {fmt or 'unknown format'}"
            im.load()  # a full decode: truncated files fail here, not in the model
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"image could not be decoded as JPG or PNG: {exc}"
    if min(w, h) <= MIN_SHORT_SIDE:
        return f"image is {w}x{h}; its short side must be over {MIN_SHORT_SIDE} px"
    if max(w, h) / min(w, h) > MAX_ASPECT:
        return f"image is {w}x{h}; its aspect ratio must be between 2:5 and 5:2"
    return None


def _synthesize_picture(prompt: str) -> bytes:
    """A 640x360 PNG derived from the prompt, for text-to-video models."""
    digest = hashlib.sha256(prompt.encode()).digest()
    w, h = 640, 360
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    hue = digest[0] / 255
    for y in range(h):
        r, g, b = colorsys.hsv_to_rgb((hue + 0.3 * y / h) % 1.0, 0.6, 0.35 + 0.5 * y / h)
        draw.line([(0, y), (w, y)], fill=(int(r * 255), int(g * 255), int(b * 255)))
    # Shapes give the camera something to move over.
    for i in range(8):
        x, y, r = (
            digest[3 * i + 1] * w // 256,
            digest[3 * i + 2] * h // 256,
            15 + digest[3 * i + 3] // 4,
        )
        fill = tuple(int(c * 255) for c in colorsys.hsv_to_rgb(digest[i + 20] / 255, 0.8, 0.9))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _parse_multipart_file(
    body: bytes, content_type: str, field: str = "file"
) -> tuple[str, str, bytes]:
    """(file name, content type, bytes) of one multipart/form-data field.

    Small on purpose: python-multipart is not a dependency of this project.
    """
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/form-data") or not m:
        raise ApiError(400, f"send the file as multipart/form-data in the field {field!r}")
    delimiter = b"--" + m.group(1).encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name_m = re.search(r'(?:^|;)\s*name="([^"]*)"', disposition)
        if not name_m or name_m.group(1) != field:
            continue
        file_m = re.search(r'filename="([^"]*)"', disposition)
        file_name = (file_m.group(1) if file_m else "") or "upload"
        part_type = headers.get("content-type") or (
            mimetypes.guess_type(file_name)[0] or "application/octet-stream"
        )
        return file_name, part_type, data.removesuffix(b"\r\n")
    raise ApiError(400, f"multipart field {field!r} is missing")


def _is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bearer_problem(scope: Scope, api_key: str | None) -> str | None:
    """Why the request's Authorization header is refused, or None. Never echoes the key."""
    header = ""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return "missing API key: send the header 'Authorization: Bearer <key>'"
    if api_key is not None and token != api_key:
        return "invalid API key"
    return None


class Simulator:
    """State of one simulated Atlas Cloud account, and the ASGI app serving it."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.stats = SimulatorStats()
        self.jobs: dict[str, Job] = {}
        self._blobs: dict[str, bytes] = {}  # sha256 -> picture bytes (uploads, fetches)
        self._media: dict[str, _Media] = {}  # upload token -> media
        self._picture_checks: dict[str, str | None] = {}  # sha256 -> problem (None: fine)
        self._accepted_jobs = 0  # for balance_jobs; not reset with the stats
        self._rng = random.Random(self.config.seed)
        self._rng_seed = self.config.seed
        self._http: httpx.AsyncClient | None = None
        self.router = Starlette(
            routes=[
                Route("/api/v1/model/uploadMedia", self._upload, methods=["POST"]),
                Route("/api/v1/model/generateVideo", self._generate, methods=["POST"]),
                Route("/api/v1/model/prediction/{id}", self._prediction, methods=["GET"]),
                Route("/api/v1/models", self._models, methods=["GET"]),
                Route("/_sim/media/{token}", self._media_file, methods=["GET"]),
                Route("/_sim/outputs/{id}.mp4", self._output, methods=["GET"]),
                Route("/_sim/stats", self._stats, methods=["GET"]),
                Route("/_sim/config", self._config, methods=["GET", "POST"]),
                Route("/_sim/reset", self._reset, methods=["POST"]),
            ],
            exception_handlers={ApiError: self._on_api_error, HTTPException: self._on_http_error},
            lifespan=self._lifespan,
        )

    # ---- ASGI entry: request id, status accounting, auth, rate limit, then routing ----

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        request_id = uuid.uuid4().hex
        counted = not path.startswith(_CONTROL_PATHS)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
                if counted:
                    self.stats.record_status(message["status"])
            await send(message)

        if path.startswith("/api/"):
            if method == "POST" and path == "/api/v1/model/generateVideo":
                self.stats.add("generate_posts")
            elif method == "GET" and path.startswith("/api/v1/model/prediction/"):
                self.stats.add("polls")
            # Like the real API, auth runs before routing: a wrong path with no key is 401.
            if path.rstrip("/") != "/api/v1/models":
                problem = _bearer_problem(scope, self.config.api_key)
                if problem:
                    await error_response(401, problem)(scope, receive, send_with_id)
                    return
            if self._roll(self.config.rate_429):
                await error_response(429, "rate limit exceeded, retry later")(
                    scope, receive, send_with_id
                )
                return
        await self.router(scope, receive, send_with_id)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _on_api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.msg)

    async def _on_http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail))

    def _random(self) -> random.Random:
        """The RNG, re-seeded when the `seed` knob changed since it was last used."""
        if self.config.seed != self._rng_seed:
            self._rng = random.Random(self.config.seed)
            self._rng_seed = self.config.seed
        return self._rng

    def _roll(self, probability: float) -> bool:
        if probability <= 0:
            return False
        if probability >= 1:
            return True
        return self._random().random() < probability

    def _maybe_5xx(self) -> None:
        if self._roll(self.config.rate_5xx):
            status = self._random().choice((500, 503))
            raise ApiError(
                status, "internal server error" if status == 500 else "service unavailable"
            )

    @staticmethod
    def _base_url(request: Request) -> str:
        # The Host the client used: output URLs work whichever loopback name it chose.
        return str(request.base_url).rstrip("/")

    @staticmethod
    async def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > limit + _MAX_DRAIN_BYTES:
                break
        # An oversized body is read to its end (up to a cap) before answering 413: a
        # client still writing would otherwise see a reset instead of the answer.
        if size > limit:
            raise ApiError(413, "request body is larger than 50 MB; send the image as a URL")
        return b"".join(chunks)

    # ---- /api/v1 ----

    def finish_stuck(self) -> int:
        """Let every stuck job complete now (tests of resuming a timed-out prediction)."""
        now = time.monotonic()
        n = 0
        for job_id, job in list(self.jobs.items()):
            if job.outcome == "stuck":
                self.jobs[job_id] = dataclasses.replace(
                    job, outcome="completed", latency_s=max(0.0, now - job.created)
                )
                n += 1
        return n

    async def _upload(self, request: Request) -> Response:
        body = await self._read_body(request)
        file_name, content_type, data = await anyio.to_thread.run_sync(
            _parse_multipart_file, body, request.headers.get("content-type", "")
        )
        if not data:
            raise ApiError(400, "the uploaded file is empty")
        sha = (await _off_loop_if_large(len(data), hashlib.sha256, data)).hexdigest()
        self._blobs.setdefault(sha, data)
        token = uuid.uuid4().hex
        self._media[token] = _Media(sha, file_name, content_type, len(data))
        self.stats.add("uploads")
        return _ok(
            {
                "download_url": f"{self._base_url(request)}/_sim/media/{token}",
                "file_name": file_name,
                "content_type": content_type,
                "size": len(data),
            }
        )

    def _spec(self, model: Any) -> ModelSpec:
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model is required")
        if model not in self.config.known_models:
            raise ApiError(404, f"model {model!r} not found")
        # A model added through the knob but absent from the table acts like the default.
        return MODELS.get(model) or dataclasses.replace(MODELS[DEFAULT_MODEL], name=model)

    @staticmethod
    def _check_inputs(spec: ModelSpec, payload: Mapping[str, Any]) -> tuple[str, int]:
        """(prompt, duration in seconds) after checking every input against the model."""
        allowed = {"model", "prompt", "webhook_url", *spec.options}
        if spec.needs_image:
            allowed.add("image")
        if spec.durations is not None:
            allowed.add("duration")
        extra = sorted(set(payload) - allowed)
        if extra:
            names = ", ".join(repr(k) for k in extra)
            raise ApiError(400, f"{names} not an input of this model ({spec.name})")
        prompt = payload.get("prompt")
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string")
        if len(prompt) > spec.max_prompt_chars:
            raise ApiError(
                400, f"prompt is {len(prompt)} characters; at most {spec.max_prompt_chars}"
            )
        if not spec.needs_image and not prompt.strip():
            raise ApiError(400, "prompt is required")
        duration = FALLBACK_DURATION_S
        if spec.durations is not None:
            raw = payload.get("duration", spec.default_duration)
            if isinstance(raw, bool) or not isinstance(raw, int) or raw not in spec.durations:
                allowed_d = " or ".join(str(d) for d in spec.durations)
                raise ApiError(400, f"duration must be {allowed_d} (seconds), got {raw!r}")
            duration = raw
        for option in spec.options:
            if option in payload and not isinstance(payload[option], bool):
                raise ApiError(400, f"{option} must be true or false")
        webhook = payload.get("webhook_url")
        if webhook is not None and not isinstance(webhook, str):
            raise ApiError(400, "webhook_url must be a string")
        if spec.needs_image:
            image = payload.get("image")
            if not isinstance(image, str) or not image.strip():
                raise ApiError(400, "image is required: an https URL or a data: URI")
        return prompt, duration

    async def _resolve_image(self, image: str) -> bytes:
        """The picture bytes behind an `image` input (data URI, own upload, loopback URL)."""
        if image.startswith("data:"):
            header, sep, payload = image.partition(",")
            if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
                raise ApiError(400, "image data URI must look like data:image/...;base64,...")
            if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
                raise ApiError(400, "image is larger than 20 MB")
            try:
                return await _off_loop_if_large(len(payload), base64.b64decode, payload)
            except (binascii.Error, ValueError):
                raise ApiError(400, "image data URI is not valid base64") from None
        parts = urlsplit(image)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(400, "image must be an http(s) URL or a data:image/...;base64 URI")
        if not _is_loopback_host(parts.hostname):
            raise ApiError(
                400, f"simulator only fetches loopback URLs; refused host {parts.hostname!r}"
            )
        own = re.fullmatch(r"/_sim/media/([0-9a-f]+)", parts.path)
        if own and own.group(1) in self._media:
            return self._blobs[self._media[own.group(1)].sha]
        return await self._fetch(image)

    async def _fetch(self, url: str) -> bytes:
        if self._http is None:
            # trust_env=False: a proxy from the environment must never see these fetches.
            self._http = httpx.AsyncClient(timeout=30.0, trust_env=False)
        try:
            async with self._http.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise ApiError(400, f"could not fetch image: HTTP {resp.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise ApiError(400, "image is larger than 20 MB")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise ApiError(400, f"could not fetch image: {type(exc).__name__}") from None

    async def _picture(self, data: bytes) -> str:
        """The sha256 of an accepted picture, stored for rendering; 400 when refused."""
        sha = (await _off_loop_if_large(len(data), hashlib.sha256, data)).hexdigest()
        if sha not in self._picture_checks:
            self._picture_checks[sha] = await anyio.to_thread.run_sync(_picture_problem, data)
        problem = self._picture_checks[sha]
        if problem:
            raise ApiError(400, problem)
        self._blobs.setdefault(sha, data)
        return sha

    async def _generate(self, request: Request) -> Response:
        body = await self._read_body(request)
        try:
            payload = await _off_loop_if_large(len(body), json.loads, body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "request body must be a JSON object") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "request body must be a JSON object")
        spec = self._spec(payload.get("model"))
        prompt, duration = self._check_inputs(spec, payload)
        if spec.needs_image:
            data = await self._resolve_image(payload["image"].strip())
        else:
            data = await anyio.to_thread.run_sync(_synthesize_picture, prompt)
        sha = await self._picture(data)

        # From here to the job's creation nothing awaits: the balance and concurrency
        # checks and the creation are one atomic step on the event loop.
        cfg = self.config
        if cfg.balance_jobs is not None and self._accepted_jobs >= cfg.balance_jobs:
            raise ApiError(402, "insufficient balance: top up your account")
        if cfg.max_concurrent is not None and self.stats.in_flight >= cfg.max_concurrent:
            raise ApiError(429, f"too many concurrent tasks (limit {cfg.max_concurrent})")
        lowered = prompt.lower()
        outcome: Literal["completed", "failed", "stuck"] = "completed"
        if cfg.moderation_trigger and cfg.moderation_trigger.lower() in lowered:
            outcome = "failed"
        elif cfg.stuck_trigger and cfg.stuck_trigger.lower() in lowered:
            outcome = "stuck"
        latency = cfg.latency_s
        if cfg.latency_jitter_s > 0:
            latency += self._random().uniform(-cfg.latency_jitter_s, cfg.latency_jitter_s)
        job = Job(
            id=uuid.uuid4().hex,
            model=spec.name,
            prompt=prompt,
            duration_s=duration,
            image_sha=sha,
            motion=parse_motion(prompt),
            width=cfg.width,
            fps=cfg.fps,
            created=time.monotonic(),
            created_wall=time.time(),
            latency_s=max(0.0, latency),
            outcome=outcome,
        )
        self.jobs[job.id] = job
        self._accepted_jobs += 1
        prompt_sha = hashlib.sha256(prompt.encode()).hexdigest()
        self.stats.record_job(f"{sha[:16]}:{prompt_sha[:16]}:{duration}:{spec.name}", job.ends_at)

        if cfg.generate_delay_s > 0:
            await anyio.sleep(cfg.generate_delay_s)  # the job exists; only the answer is late
        base = self._base_url(request)
        data_out: dict[str, Any] = {
            "id": job.id,
            "model": job.model,
            "status": "processing",
            "outputs": None if cfg.outputs_as_string else [],
            "urls": {"get": f"{base}/api/v1/model/prediction/{job.id}"},
            "created_at": _iso(job.created_wall),
        }
        if cfg.top_level_id:
            return JSONResponse({"code": 200, "msg": "success", **data_out})
        return _ok(data_out)

    async def _prediction(self, request: Request) -> Response:
        self._maybe_5xx()
        job = self.jobs.get(request.path_params["id"])
        now = time.monotonic()
        # Just after creation the real API may not know the id yet: same 404 as unknown.
        if job is None or now - job.created < self.config.not_visible_s:
            raise ApiError(404, "prediction not found")
        status = job.status(now)
        done = status != "processing"
        url = f"{self._base_url(request)}/_sim/outputs/{job.id}.mp4"
        outputs: Any = [url] if status == "completed" else []
        if self.config.outputs_as_string:
            outputs = url if status == "completed" else None
        failed = status == "failed"
        return _ok(
            {
                "id": job.id,
                "model": job.model,
                "status": status,
                "outputs": outputs,
                "error": (
                    "the input was rejected by content moderation (sensitive content)"
                    if failed
                    else None
                ),
                "error_code": MODERATION_ERROR_CODE if failed else None,
                "metrics": {"predict_time": round(job.latency_s if done else now - job.created, 3)},
                "created_at": _iso(job.created_wall),
                "completed_at": _iso(job.created_wall + job.latency_s) if done else None,
            }
        )

    async def _models(self, request: Request) -> Response:
        entries = []
        for name in self.config.known_models:
            spec = MODELS.get(name) or dataclasses.replace(MODELS[DEFAULT_MODEL], name=name)
            entries.append(
                {
                    "model": name,
                    "type": "video",
                    "input": "image" if spec.needs_image else "text",
                    "durations": list(spec.durations) if spec.durations else None,
                }
            )
        return _ok(entries)

    # ---- /_sim ----

    async def _media_file(self, request: Request) -> Response:
        media = self._media.get(request.path_params["token"])
        if media is None:
            raise ApiError(404, "media not found")
        return Response(self._blobs[media.sha], media_type=media.content_type)

    async def _output(self, request: Request) -> Response:
        self._maybe_5xx()
        job = self.jobs.get(request.path_params["id"])
        if job is None or job.status(time.monotonic()) != "completed":
            raise ApiError(404, "output not found")
        video = await anyio.to_thread.run_sync(
            partial(
                cached_render,
                self._blobs[job.image_sha],
                image_sha=job.image_sha,
                motion=job.motion,
                duration_s=job.duration_s,
                width=job.width,
                fps=job.fps,
            )
        )
        cfg = self.config
        total = len(video)
        if cfg.pad_output_to_bytes >= total + 8:
            total = cfg.pad_output_to_bytes
        if request.method == "HEAD":  # size only: not a download, no failure used up
            return Response(headers={"content-length": str(total)}, media_type="video/mp4")
        cut_at: int | None = None
        if cfg.download_failures > 0:
            cfg.download_failures -= 1
            cut_at = max(1, min(total // 2, 512 * 1024))
        self.stats.add("downloads")
        return StreamingResponse(
            _stream_video(video, total, cut_at),
            media_type="video/mp4",
            headers={"content-length": str(total)},
        )

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(self.stats.snapshot())

    async def _config(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ApiError(400, "send a JSON object of knobs") from None
            if not isinstance(changes, dict):
                raise ApiError(400, "send a JSON object of knobs")
            try:
                self.config.update(changes)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
        return JSONResponse(self.config.as_dict())

    async def _reset(self, request: Request) -> Response:
        self.stats.reset()
        return JSONResponse({"code": 200, "msg": "success"})


def _free_box_header(size: int) -> bytes:
    """Header of a top-level ISO-BMFF 'free' box of `size` bytes in total."""
    if size < 2**32:
        return size.to_bytes(4, "big") + b"free"
    return (1).to_bytes(4, "big") + b"free" + size.to_bytes(8, "big")  # 64-bit largesize


async def _stream_video(video: bytes, total: int, cut_at: int | None) -> AsyncIterator[bytes]:
    """The mp4 in OUTPUT_CHUNK pieces, padded to `total` with a trailing 'free' box made on
    the fly (300 MiB never sits in memory), cut off after `cut_at` bytes when set."""
    limit = total if cut_at is None else cut_at
    sent = 0

    def pieces() -> Any:
        for i in range(0, len(video), OUTPUT_CHUNK):
            yield video[i : i + OUTPUT_CHUNK]
        pad = total - len(video)
        if pad > 0:
            header = _free_box_header(pad)
            yield header
            remaining = pad - len(header)
            while remaining > 0:
                n = min(remaining, OUTPUT_CHUNK)
                yield _ZEROS if n == OUTPUT_CHUNK else _ZEROS[:n]
                remaining -= n

    for piece in pieces():
        if sent + len(piece) >= limit:
            yield piece[: limit - sent]
            sent = limit
            break
        sent += len(piece)
        yield piece
    if cut_at is not None:
        raise DownloadCut(f"download cut after {cut_at} of {total} bytes (download_failures)")
