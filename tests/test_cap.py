"""The provider cap across runs: a Prefect global concurrency limit on the real engine,
leased per run instead of one server round trip per row."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import options_for, write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(240)]


async def _limit(name: str, limit: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit)
        )


async def _active_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


def test_two_runs_share_the_cap_exactly_and_lease_slots_not_rows(
    make_simulator: Any, pictures: Path, tmp_path: Path, caplog: Any, capsys: Any
) -> None:
    from flows.batch import i2v_batch

    sim = make_simulator(latency_s=0.3)
    name = f"cap-{tmp_path.name[-12:]}".lower().replace("_", "-")
    asyncio.run(_limit(name, 3))
    options = options_for(sim, concurrency=3, global_concurrency_limit=name)
    first = write_manifest(
        pictures,
        [{"id": f"a{i}", "image": "coffee.png", "prompt": f"pan {i}"} for i in range(12)],
        "a.csv",
    )
    second = write_manifest(
        pictures,
        [{"id": f"b{i}", "image": "astronaut.png", "prompt": f"tilt {i}"} for i in range(12)],
        "b.csv",
    )

    async def both() -> tuple[Any, Any]:
        return await asyncio.gather(
            i2v_batch(str(first), str(tmp_path / "a"), options),
            i2v_batch(str(second), str(tmp_path / "b"), options),
        )

    a, b = asyncio.run(both())
    assert a.counts["landed"] == 12 and b.counts["landed"] == 12
    assert sim.stats.max_in_flight <= 3, "both runs together never passed the cap"
    logged = caplog.text + capsys.readouterr().err
    leases = [int(n) for n in re.findall(r"(\d+) slot leases \(at most", logged)]
    assert len(leases) == 2 and sum(leases) < 24, f"{leases}: slots are reused, not per row"
    assert asyncio.run(_active_slots(name)) == 0, "every lease was given back"


def test_a_run_leases_as_many_slots_as_rows_wait_and_never_more(tmp_path: Path) -> None:
    """Rows that reach the cap together share leased slots at once (never one at a
    time), never more than the limit, and every lease goes back at the end."""
    from prefect import flow

    from flows.provider_cap import LeasedCap

    name = f"cap-{tmp_path.name[-12:]}".lower().replace("_", "-") + "-x"
    asyncio.run(_limit(name, 4))
    active = peak = 0

    @flow
    async def rows() -> LeasedCap:
        cap = LeasedCap(name, want=4)

        async def row() -> None:
            nonlocal active, peak
            async with cap.slot():
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.2)
                active -= 1

        await asyncio.gather(*(row() for _ in range(12)))
        await cap.aclose()
        return cap

    cap = asyncio.run(rows())
    assert peak == 4, f"at most {peak} rows ran at once under a limit of 4"
    assert cap.acquired < 12 and cap.peak_held == 4
    assert asyncio.run(_active_slots(name)) == 0


def test_a_runs_tail_gives_its_idle_blocks_back_before_its_last_row_lands(
    tmp_path: Path,
) -> None:
    """Slots are leased in blocks of at most BLOCK_MAX: once a block's rows are done and
    no row waits, the block goes back while the run's slow rows still hold theirs, so
    the next run (a fan-out's next shard) need not wait for the slowest row."""
    from prefect import flow

    from flows.provider_cap import LeasedCap

    name = f"cap-{tmp_path.name[-12:]}".lower().replace("_", "-") + "-t"
    asyncio.run(_limit(name, 20))
    seen_mid_tail: list[int] = []

    @flow
    async def rows() -> LeasedCap:
        cap = LeasedCap(name, want=20)
        assert cap.BLOCK_MAX == 10

        async def row(slow: bool) -> None:
            async with cap.slot():
                await asyncio.sleep(5.0 if slow else 0.2)

        async def look() -> None:
            await asyncio.sleep(3.0)  # the quick rows are done, the slow ones are not
            seen_mid_tail.append(await _active_slots(name))

        await asyncio.gather(*(row(slow=i >= 10) for i in range(20)), look())
        await cap.aclose()
        return cap

    cap = asyncio.run(rows())
    assert cap.peak_held == 20 and cap.acquired == 2
    assert seen_mid_tail == [10], f"held {seen_mid_tail} slots while 10 rows ran"
    assert asyncio.run(_active_slots(name)) == 0


class _BusyFirst:
    """A real HTTP hop in front of the Prefect API that answers the first `busy`
    increment-with-lease requests 503, as a long-lived server on SQLite does while a
    run's first writes hold its database; everything else is passed through."""

    def __init__(self, upstream: str, busy: int) -> None:
        self.upstream, self.busy = upstream.rstrip("/"), busy
        self.increments: list[tuple[float, int, int]] = []  # (monotonic, slots, status)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import json
        import time

        import httpx

        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        path = scope["path"].removeprefix("/api")
        if path.endswith("/increment-with-lease"):
            slots = json.loads(body)["slots"]
            if self.busy > 0:
                self.busy -= 1
                self.increments.append((time.monotonic(), slots, 503))
                await _reply(send, 503, b'{"exception_message":"Service Unavailable"}', [])
                return
            self.increments.append((time.monotonic(), slots, 200))
        query = scope["query_string"].decode()
        url = f"{self.upstream}{path}" + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"host",)]
        async with httpx.AsyncClient() as client:
            answer = await client.request(scope["method"], url, content=body, headers=headers)
        kept = [
            (k.encode(), v.encode())
            for k, v in answer.headers.items()
            if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
        ]
        await _reply(send, answer.status_code, answer.content, kept)


async def _reply(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    if not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_a_busy_answer_is_asked_again_at_once_for_the_same_slots(tmp_path: Path) -> None:
    """A 503 while leasing costs the rows a moment, not the Prefect client's 2 s wait
    before its retry, and asks for the same slots again (a busy server is not a full
    limit: nothing is halved)."""
    import threading

    import uvicorn
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.provider_cap import LeasedCap
    from tests.helpers import free_port

    name = f"cap-{tmp_path.name[-12:]}".lower().replace("_", "-") + "-busy"
    asyncio.run(_limit(name, 4))
    hop = _BusyFirst(str(PREFECT_API_URL.value()), busy=2)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(hop, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    ran = 0

    @flow
    async def rows() -> LeasedCap:
        cap = LeasedCap(name, want=4)

        async def row() -> None:
            nonlocal ran
            async with cap.slot():
                ran += 1

        await asyncio.gather(*(row() for _ in range(4)))
        await cap.aclose()
        return cap

    try:
        while not server.started:
            threading.Event().wait(0.02)
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            asyncio.run(rows())
    finally:
        server.should_exit = True
        thread.join(10)
    assert ran == 4
    busy = [i for i in hop.increments if i[2] == 503]
    granted = [i for i in hop.increments if i[2] == 200]
    assert len(busy) == 2 and granted, hop.increments
    first, then = hop.increments[0], hop.increments[len(busy)]
    assert then[1] == first[1], "a busy answer is not a full limit: the same slots again"
    # Prefect's own retry waits 2 s (+/- jitter) after each 503; ours 0.1 s.
    assert then[0] - first[0] < 1.0, hop.increments
    assert asyncio.run(_active_slots(name)) == 0
