"""The simulated Atlas Cloud API as an ASGI app (Starlette).

Same paths, JSON shapes and statuses as the real API (see ATLAS_API.md), plus `/_sim/*`
endpoints for media, outputs, stats and live configuration. Job state is computed from
the clock when asked: no background loop, so a thousand idle jobs cost nothing.

What it accepts is `inputs`, what it checks before the API sees a request `gate`, its
predictions `jobs`, the pictures it holds `media`, its answers `pages`, its video
streams `outputs`, its counters `stats`; the knobs (`config`) also make it answer as
untidily as the real service can (HTML pages, purged ids, other status names).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from i2v.simulator.billing import (
    available_usd,
    balance_response,
    price_of,
    totals,
    usage_response,
)
from i2v.simulator.catalog import input_schema_document, listing_entry
from i2v.simulator.config import SimulatorConfig
from i2v.simulator.gate import bearer_problem, blocked_agent, header
from i2v.simulator.inputs import (
    ApiError,
    check_inputs,
    model_spec,
    parse_multipart_file,
    read_body,
    synthesize_picture,
)
from i2v.simulator.jobs import Job, accepted_data, defect_of, prediction_data
from i2v.simulator.media import MediaStore, off_loop_if_large
from i2v.simulator.outputs import corrupt_mp4, stream_video
from i2v.simulator.pages import cloudflare_block, error_response, interstitial, ok
from i2v.simulator.render import STILL, cached_render, parse_motion
from i2v.simulator.stats import SimulatorStats
from i2v.simulator.zoo import ZOO, check_zoo_body

_CONTROL_PATHS = ("/_sim/stats", "/_sim/config", "/_sim/reset")


class Simulator:
    """State of one simulated Atlas Cloud account, and the ASGI app serving it."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.stats = SimulatorStats()
        self.jobs: dict[str, Job] = {}
        self.media = MediaStore()
        self._accepted_jobs = 0  # for balance_jobs; not reset with the stats
        self._html_polls: dict[str, int] = {}  # job id -> HTML pages served (html_poll_answers)
        self._rng = random.Random(self.config.seed)
        self._rng_seed = self.config.seed
        self.router = Starlette(
            routes=[
                Route("/api/v1/model/uploadMedia", self._upload, methods=["POST"]),
                Route("/api/v1/model/generateVideo", self._generate, methods=["POST"]),
                Route("/api/v1/model/prediction/{id}", self._prediction, methods=["GET"]),
                Route("/api/v1/models", self._models, methods=["GET"]),
                Route("/_sim/schemas/{name:path}", self._schema, methods=["GET"]),
                Route("/_sim/media/{token}", self._media_file, methods=["GET"]),
                Route("/_sim/outputs/{id}.mp4", self._output, methods=["GET"]),
                Route("/public/v1/balance", self._balance, methods=["GET"]),
                Route("/public/v1/model-usage", self._usage, methods=["GET"]),
                Route("/public/v1/model-costs", self._costs, methods=["GET"]),
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
            # Cloudflare answers before the API sees the request: before auth.
            if blocked_agent(scope, self.config.blocked_user_agents):
                host = urlsplit(f"//{header(scope, b'host')}").hostname or "the API"
                await cloudflare_block(host)(scope, receive, send_with_id)
                return
            # Like the real API, auth runs before routing: a wrong path with no key is 401.
            if path.rstrip("/") != "/api/v1/models":
                problem = bearer_problem(scope, self.config.api_key)
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
        await self.media.aclose()

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
        body = await read_body(request)
        file_name, content_type, data = await anyio.to_thread.run_sync(
            parse_multipart_file, body, request.headers.get("content-type", "")
        )
        if not data:
            raise ApiError(400, "the uploaded file is empty")
        token = await self.media.add_upload(data, file_name, content_type)
        self.stats.add("uploads")
        return ok(
            {
                "download_url": f"{self._base_url(request)}/_sim/media/{token}",
                "file_name": file_name,
                "content_type": content_type,
                "size": len(data),
            }
        )

    async def _generate(self, request: Request) -> Response:
        body = await read_body(request)
        try:
            payload = await off_loop_if_large(len(body), json.loads, body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "request body must be a JSON object") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "request body must be a JSON object")
        spec = model_spec(payload.get("model"), self.config.known_models)
        zoo = ZOO.get(spec.name)
        if zoo is not None:
            try:
                prompt, duration, pictures = check_zoo_body(zoo, payload)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
            for extra in pictures[1:]:  # an end frame or more references: checked too
                await self.media.accept_picture(await self.media.resolve_image(extra))
            data = await self.media.resolve_image(pictures[0])
        else:
            prompt, duration = check_inputs(spec, payload)
            if spec.needs_image:
                data = await self.media.resolve_image(payload["image"].strip())
            else:
                data = await anyio.to_thread.run_sync(synthesize_picture, prompt)
        sha = await self.media.accept_picture(data)

        # From here to the job's creation nothing awaits: the balance and concurrency
        # checks and the creation are one atomic step on the event loop.
        cfg = self.config
        if cfg.balance_jobs is not None and self._accepted_jobs >= cfg.balance_jobs:
            raise ApiError(cfg.balance_status, "insufficient balance: top up your account")
        left = available_usd(self.jobs, cfg, time.monotonic())
        if left is not None and left + 1e-9 < price_of(cfg, spec.name, duration):
            raise ApiError(402, f"insufficient balance (${left:.2f} left): top up your account")
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
            no_output=outcome == "completed" and self._roll(cfg.completed_without_output_rate),
            defect=defect_of(cfg, lowered),
        )
        self.jobs[job.id] = job
        self._accepted_jobs += 1
        prompt_sha = hashlib.sha256(prompt.encode()).hexdigest()
        self.stats.record_job(f"{sha[:16]}:{prompt_sha[:16]}:{duration}:{spec.name}", job.ends_at)

        if cfg.generate_delay_s > 0:
            await anyio.sleep(cfg.generate_delay_s)  # the job exists; only the answer is late
        data_out = accepted_data(job, self._base_url(request), cfg)
        if cfg.top_level_id:
            return JSONResponse({"code": 200, "msg": "success", **data_out})
        return ok(data_out)

    async def _prediction(self, request: Request) -> Response:
        self._maybe_5xx()
        cfg = self.config
        job = self.jobs.get(request.path_params["id"])
        now = time.monotonic()
        if job is not None and self._html_polls.get(job.id, 0) < cfg.html_poll_answers:
            self._html_polls[job.id] = self._html_polls.get(job.id, 0) + 1
            return interstitial()
        # Just after creation the real API may not know the id yet, and after its
        # retention it has forgotten it: the same 404 as an unknown id.
        if (
            job is None
            or now - job.created < cfg.not_visible_s
            or (cfg.retention_s is not None and now - job.created > cfg.retention_s)
        ):
            raise ApiError(404, "prediction not found")
        return ok(prediction_data(job, now, self._base_url(request), cfg))

    async def _models(self, request: Request) -> Response:
        base = self._base_url(request)
        prices = self.config.catalog_prices
        return ok(
            [
                listing_entry(name, base, prices.get(name), index=i)
                for i, name in enumerate(self.config.known_models)
            ]
        )

    async def _schema(self, request: Request) -> Response:
        name = request.path_params["name"].removesuffix(".json")
        if name not in self.config.known_models:
            raise ApiError(404, f"no schema for model {name!r}")
        try:
            document = input_schema_document(name, self.config.schema_drift)
        except ValueError as exc:
            raise ApiError(500, str(exc)) from None
        return JSONResponse(document)

    # ---- /_sim ----

    async def _media_file(self, request: Request) -> Response:
        found = self.media.upload(request.path_params["token"])
        if found is None:
            raise ApiError(404, "media not found")
        data, content_type = found
        return Response(data, media_type=content_type)

    async def _output(self, request: Request) -> Response:
        self._maybe_5xx()
        job = self.jobs.get(request.path_params["id"])
        if job is None or job.no_output or job.status(time.monotonic()) != "completed":
            raise ApiError(404, "output not found")
        if self.config.outputs_expired:  # a CDN's presigned URL past its expiry
            return Response(
                "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                status_code=403,
                media_type="application/xml",
            )
        cfg = self.config
        video = await anyio.to_thread.run_sync(
            partial(
                cached_render,
                self.media.blob(job.image_sha),
                image_sha=job.image_sha,
                motion=STILL if job.defect == "frozen" else job.motion,
                duration_s=cfg.short_output_s if job.defect == "short" else job.duration_s,
                width=job.width,
                fps=job.fps,
            )
        )
        if job.defect == "corrupt":
            video = corrupt_mp4(video)
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
            stream_video(video, total, cut_at),
            media_type="video/mp4",
            headers={"content-length": str(total)},
        )

    async def _balance(self, request: Request) -> Response:
        return balance_response(request, self.jobs, self.config)

    async def _usage(self, request: Request) -> Response:
        return usage_response(request, self.jobs, self.config, costs=False)

    async def _costs(self, request: Request) -> Response:
        return usage_response(request, self.jobs, self.config, costs=True)

    async def _stats(self, request: Request) -> Response:
        billed = totals(self.jobs, self.config, time.monotonic())
        return JSONResponse({**self.stats.snapshot(), **{f"{k}_usd": v for k, v in billed.items()}})

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
