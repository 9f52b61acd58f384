"""Micro-batching: rows share a call, rows that come later join it, each row is settled
on its own."""

from __future__ import annotations

import asyncio

import pytest

from i2v.batching import Batch, MicroBatcher, settle_each


def recording_batcher(
    batches: list[list[int]],
    *,
    delay_s: float = 0.0,
    max_size: int = 50,
    accept_s: float = 2.0,
    idle_s: float = 0.5,
) -> MicroBatcher[int, int]:
    """A batcher whose step returns n * 10 after `delay_s * n`; records each batch's rows."""

    async def run(batch: Batch[int, int]) -> None:
        rows: list[int] = []
        batches.append(rows)

        async def step(n: int) -> int:
            rows.append(n)
            await asyncio.sleep(delay_s * n)
            if n < 0:
                raise ValueError(f"row {n} is bad")
            return n * 10

        await settle_each(batch, step)

    return MicroBatcher(run, max_size=max_size, accept_s=accept_s, idle_s=idle_s)


async def test_rows_arriving_together_share_one_batch_and_fast_rows_do_not_wait() -> None:
    batches: list[list[int]] = []
    batcher = recording_batcher(batches, delay_s=0.02, idle_s=0.05)
    finished_at: dict[int, float] = {}
    loop = asyncio.get_running_loop()

    async def row(n: int) -> int:
        result = await batcher(n)
        finished_at[n] = loop.time()
        return result

    assert await asyncio.gather(row(1), row(5)) == [10, 50]
    assert batches == [[1, 5]]
    # Row 1 got its answer long before row 5 finished: no waiting for the batch.
    assert finished_at[5] - finished_at[1] >= 0.06


async def test_a_row_that_comes_while_the_batch_runs_joins_it() -> None:
    batches: list[list[int]] = []
    batcher = recording_batcher(batches, delay_s=0.05, idle_s=1.0, accept_s=5.0)
    first = asyncio.ensure_future(batcher(2))
    await asyncio.sleep(0.05)  # row 2's step is running now
    assert batches == [[2]]
    assert await batcher(3) == 30
    assert await first == 20
    assert batches == [[2, 3]]
    assert batcher.batches == 1


async def test_a_quiet_spell_closes_the_batch_and_the_next_row_opens_another() -> None:
    batches: list[list[int]] = []
    batcher = recording_batcher(batches, idle_s=0.05, accept_s=5.0)
    assert await batcher(1) == 10
    await asyncio.sleep(0.15)  # longer than idle_s: the batch stopped taking rows
    assert await batcher(2) == 20
    assert batches == [[1], [2]]


async def test_accept_s_bounds_a_batch_even_while_rows_keep_coming() -> None:
    batches: list[list[int]] = []
    batcher = recording_batcher(batches, idle_s=1.0, accept_s=0.1)
    rows = []
    for n in range(6):
        rows.append(asyncio.ensure_future(batcher(n)))
        await asyncio.sleep(0.04)
    assert await asyncio.gather(*rows) == [n * 10 for n in range(6)]
    assert len(batches) >= 2
    assert sorted(n for b in batches for n in b) == list(range(6))
    assert all(len(b) <= 3 for b in batches)  # 0.1 s of rows every 0.04 s


async def test_max_size_splits_batches_and_errors_stay_with_their_row() -> None:
    batches: list[list[int]] = []
    batcher = recording_batcher(batches, max_size=4)
    outcomes = await asyncio.gather(
        *(batcher(n) for n in [0, 1, -3, 3, 4, 5, 6, 7, 8, 9]), return_exceptions=True
    )
    assert [len(b) for b in batches] == [4, 4, 2]
    assert isinstance(outcomes[2], ValueError)
    assert [o for i, o in enumerate(outcomes) if i != 2] == [0, 10, 30, 40, 50, 60, 70, 80, 90]


async def test_a_crashed_batch_fails_its_rows_even_late_ones_instead_of_hanging() -> None:
    started = asyncio.Event()

    async def run(batch: Batch[int, int]) -> None:
        started.set()
        await asyncio.sleep(0.05)
        raise RuntimeError("engine crashed")

    batcher: MicroBatcher[int, int] = MicroBatcher(run, idle_s=1.0)
    first = asyncio.ensure_future(batcher(1))
    await started.wait()
    late = asyncio.ensure_future(batcher(2))  # joins the batch that is about to crash
    for row in (first, late):
        with pytest.raises(RuntimeError, match="engine crashed"):
            await asyncio.wait_for(row, timeout=2)
    assert batcher.batches == 1


async def test_a_batch_that_never_reads_its_rows_settles_them_with_an_error() -> None:
    async def run(batch: Batch[int, int]) -> None:
        return None

    batcher: MicroBatcher[int, int] = MicroBatcher(run)
    with pytest.raises(RuntimeError, match="without settling"):
        await asyncio.wait_for(batcher(1), timeout=2)
