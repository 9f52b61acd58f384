"""Micro-batching: rows share a call, yet each row is settled on its own."""

from __future__ import annotations

import asyncio

import pytest

from i2v.batching import Entry, MicroBatcher, batch_label, settle_each


async def test_rows_arriving_together_share_one_batch_and_fast_rows_do_not_wait() -> None:
    batches: list[list[int]] = []
    finished_at: dict[int, float] = {}
    loop = asyncio.get_running_loop()

    async def run(entries: list[Entry[int, int]]) -> None:
        batches.append([e.item for e in entries])

        async def step(n: int) -> int:
            await asyncio.sleep(0.02 * n)
            return n * 10

        await settle_each(entries, step)

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=10, window_s=0.01)

    async def row(n: int) -> int:
        result = await batcher(n)
        finished_at[n] = loop.time()
        return result

    results = await asyncio.gather(*(row(n) for n in (1, 5)))
    assert results == [10, 50]
    assert batches == [[1, 5]]
    # Row 1 got its answer long before row 5 finished: no waiting for the batch.
    assert finished_at[5] - finished_at[1] >= 0.06


async def test_max_size_splits_batches_and_errors_stay_with_their_row() -> None:
    sizes: list[int] = []

    async def run(entries: list[Entry[int, int]]) -> None:
        sizes.append(len(entries))

        async def step(n: int) -> int:
            if n == 3:
                raise ValueError("row 3 is bad")
            return n

        await settle_each(entries, step)

    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=4, window_s=0.05)
    outcomes = await asyncio.gather(*(batcher(n) for n in range(10)), return_exceptions=True)
    assert sizes == [4, 4, 2]
    assert isinstance(outcomes[3], ValueError)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]


async def test_a_crashed_batch_fails_its_rows_instead_of_hanging() -> None:
    async def run(entries: list[Entry[int, int]]) -> None:
        raise RuntimeError("engine crashed")

    batcher: MicroBatcher[int, int] = MicroBatcher(run, window_s=0.0)
    with pytest.raises(RuntimeError, match="engine crashed"):
        await asyncio.wait_for(batcher(1), timeout=2)


def test_batch_label() -> None:
    assert batch_label(["a"]) == "a"
    assert batch_label(["a", "b", "c"]) == "a+2"
    assert batch_label([]) == "empty"
