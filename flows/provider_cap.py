"""The provider cap: a run's share of a Prefect global concurrency limit, held as
leases, so all runs and workers sharing the server never exceed it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prefect.logging import get_run_logger

log = logging.getLogger("i2v.flows")


async def provider_cap(name: str | None, want: int) -> LeasedCap | None:
    """The run's share of the provider cap, a Prefect global concurrency limit named
    `name`, or None when there is none.

    The limit lives on the Prefect server, so every run and worker sharing the server
    shares the provider cap. When it does not exist we say so once and rely on the
    per-run `concurrency` alone.
    """
    if not name:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    try:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        logger.warning(
            "global concurrency limit %r does not exist: relying on this run's concurrency "
            "alone (create it with `prefect gcl create %s --limit N` to cap all runs)",
            name,
            name,
        )
        return None
    if not limit.active:
        logger.warning("global concurrency limit %r is inactive: not enforcing it", name)
        return None
    logger.info("provider cap: global concurrency limit %r (%d slots)", name, limit.limit)
    return LeasedCap(name, want=min(want, limit.limit))


# A Prefect server's answers while its database is busy (503 is SQLite's "database is
# locked"): the increment did not happen.
BUSY_ANSWERS = frozenset({429, 502, 503, 504})
INCREMENT_PATH = "/v2/concurrency_limits/increment-with-lease"


async def _increment_once(client: Any, name: str, slots: int, lease_s: float) -> Any:
    """One increment-with-lease request, not retried: (status code, response).

    The client's own methods wait 2 s before every retry, and a long-lived server on
    SQLite answers 503 at once while a run's first writes hold its database: a wave of
    rows waited 2.4 s for its slots (measured, N = 200). So the request goes through
    the client's httpx client without its retry wrapper; a server that wants a CSRF
    token (403), or a client without that attribute, gets the ordinary method.
    """
    import httpx

    body = {"names": [name], "slots": slots, "mode": "concurrency", "lease_duration": lease_s}
    http = getattr(client, "_client", None)
    if isinstance(http, httpx.AsyncClient):
        response = await httpx.AsyncClient.send(
            http, http.build_request("POST", INCREMENT_PATH, json=body)
        )
        if response.status_code != 403:
            return response.status_code, response
    try:
        response = await client.increment_concurrency_slots_with_lease(
            names=[name], slots=slots, mode="concurrency", lease_duration=lease_s
        )
    except httpx.HTTPStatusError as exc:
        return exc.response.status_code, exc.response
    return response.status_code, response


class LeasedCap:
    """The run's slots of a global concurrency limit, held as leases for its live window.

    One slot per row per server round trip (and a retry wait whenever the limit is
    full) made a capped run ten times slower. Here a run leases blocks of slots as its
    rows need them (one request for as many as are waiting, up to BLOCK_MAX, down to
    one while the limit is nearly full), hands them from row to row locally, renews the leases while
    it holds them, and gives a block back once none of its slots was needed for
    `LINGER_S` (so the tail frees the cap for other runs). The server counts every
    slot: all runs together never exceed the limit.
    """

    LEASE_S = 60.0  # the server's minimum lease
    RENEW_EVERY_S = 20.0
    LINGER_S = 0.5
    BUSY_RETRY_S = 0.1
    # A block is given back only once all its slots are idle: with one block of the
    # whole limit, a run's last rows held every slot until the last of them landed, and
    # the next run (a fan-out's next shard) waited for all of them.
    BLOCK_MAX = 10

    def __init__(self, name: str, *, want: int) -> None:
        self.name = name
        self.want = max(1, want)
        self._idle: list[tuple[Any, float]] = []  # one (lease id, idle since) per free slot
        self._blocks: dict[Any, int] = {}  # lease id -> slots it holds
        self._waiters = 0
        self._wake = asyncio.Condition()
        self._grower: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.acquired = 0  # leases taken from the server, for tests and the log
        self.peak_held = 0

    @property
    def held(self) -> int:
        return sum(self._blocks.values())

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        lease = await self._take()
        try:
            yield
        finally:
            async with self._wake:
                self._idle.append((lease, asyncio.get_running_loop().time()))
                self._wake.notify()

    async def _take(self) -> Any:
        async with self._wake:
            self._waiters += 1
            try:
                while not self._idle:
                    if self.held < self.want and self._grower is None:
                        self._grower = asyncio.ensure_future(self._grow())
                    await self._wake.wait()
                return self._idle.pop()[0]
            finally:
                self._waiters -= 1

    async def _grow(self) -> None:
        """Lease slots for the rows waiting now; wait as the server says while full."""
        from prefect.client.orchestration import get_client

        try:
            async with get_client() as client:
                while self._waiters and self.held < self.want:
                    await self._grow_once(client)
        finally:
            # Waiters that came while this grower was finishing saw it still running:
            # wake them so they look again (and start the next grower if need be).
            async with self._wake:
                self._grower = None
                self._wake.notify_all()

    async def _grow_once(self, client: Any) -> None:
        # All or nothing on the server: halve what is asked until it fits, so runs
        # sharing a nearly full limit still grow by what is free (one slot per retry
        # wait starved a fan-out's shards).
        slots = min(self._waiters, self.want - self.held, self.BLOCK_MAX)
        lease, full = await self._lease(client, slots, wait_if_full=slots == 1)
        while lease is None and full and slots > 1:
            slots //= 2
            lease, full = await self._lease(client, slots, wait_if_full=slots == 1)
        if lease is None:
            return
        async with self._wake:
            self._blocks[lease] = slots
            self.acquired += 1
            self.peak_held = max(self.peak_held, self.held)
            now = asyncio.get_running_loop().time()
            self._idle += [(lease, now)] * slots
            self._wake.notify_all()
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.ensure_future(self._keep())

    async def _lease(self, client: Any, slots: int, *, wait_if_full: bool) -> tuple[Any, bool]:
        """(lease id, False); or (None, True): the limit has not `slots` free (waited
        out first if asked); or (None, False): no answer, after a pause."""
        try:
            code, answer = await _increment_once(client, self.name, slots, self.LEASE_S)
        except Exception as exc:  # the server is away: rows wait for it, never past the cap
            log.warning("cannot lease a slot of %r (%s); retrying", self.name, exc)
            await asyncio.sleep(1.0)
            return None, False
        if code == 423:
            if wait_if_full:  # not even one slot: the server says when to look again
                wait = float(answer.headers.get("Retry-After", 1.0))
                await asyncio.sleep(min(max(wait, 0.05), 1.0))
            return None, True
        if code in BUSY_ANSWERS:  # nothing was leased: ask again in a moment
            await asyncio.sleep(self.BUSY_RETRY_S)
            return None, False
        if code >= 400:  # e.g. the limit was deleted: rows wait, never past the cap
            log.warning("cannot lease a slot of %r (HTTP %s); retrying", self.name, code)
            await asyncio.sleep(1.0)
            return None, False
        return answer.json()["lease_id"], False

    async def aclose(self) -> None:
        """Give every lease back now (the run is over): other runs need not wait for
        them to expire."""
        from prefect.client.orchestration import get_client

        for task in (self._grower, self._keeper):
            if task is not None:
                task.cancel()
        get_run_logger().info(
            "provider cap %r: %d slot leases (at most %d slots at once) served this run's rows",
            self.name,
            self.acquired,
            self.peak_held,
        )
        leases, self._blocks, self._idle = list(self._blocks), {}, []
        async with get_client() as client:
            for lease in leases:
                with contextlib.suppress(Exception):
                    await client.release_concurrency_slots_with_lease(lease_id=lease)

    async def _keep(self) -> None:
        """Renew held leases; give back the blocks no row needed for a while."""
        from prefect.client.orchestration import get_client

        renewed_at = asyncio.get_running_loop().time()
        async with get_client() as client:
            while self._blocks:
                await asyncio.sleep(self.LINGER_S)
                now = asyncio.get_running_loop().time()
                async with self._wake:
                    spare = [] if self._waiters else self._spare_blocks(now)
                    self._idle = [(lease, t) for lease, t in self._idle if lease not in spare]
                    for lease in spare:
                        del self._blocks[lease]
                for lease in spare:
                    with contextlib.suppress(Exception):
                        await client.release_concurrency_slots_with_lease(lease_id=lease)
                if now - renewed_at >= self.RENEW_EVERY_S:
                    renewed_at = now
                    for lease in list(self._blocks):
                        with contextlib.suppress(Exception):
                            await client.renew_concurrency_lease(
                                lease_id=lease, lease_duration=self.LEASE_S
                            )

    def _spare_blocks(self, now: float) -> list[Any]:
        """Leases whose every slot has been idle for `LINGER_S`."""
        idle: dict[Any, list[float]] = {}
        for lease, since in self._idle:
            idle.setdefault(lease, []).append(since)
        return [
            lease
            for lease, times in idle.items()
            if len(times) == self._blocks.get(lease) and now - max(times) >= self.LINGER_S
        ]
