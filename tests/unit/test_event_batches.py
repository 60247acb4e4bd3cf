"""The click path's batcher: cut by size in the caller's loop, by latency from a timer."""

from __future__ import annotations

import asyncio

from metaguide.waiting import wait_until
from workers.batches import EventBatches


async def test_full_batches_are_cut_by_size_and_keep_order() -> None:
    seen: list[list[int]] = []

    async def process(batch: list[int]) -> None:
        seen.append(batch)

    batches = EventBatches(process, max_size=3, max_latency_s=60)
    for n in range(7):
        await batches.add(n)
    assert seen == [[0, 1, 2], [3, 4, 5]]  # the 7th waits for more or for its latency
    await batches.flush()
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_partial_batch_is_cut_by_its_latency_budget() -> None:
    seen: list[list[str]] = []

    async def process(batch: list[str]) -> None:
        seen.append(batch)

    batches = EventBatches(process, max_size=100, max_latency_s=0.02)
    await batches.add("a")
    await batches.add("b")
    await wait_until(lambda: bool(seen), 5, "the latency cut")
    assert seen == [["a", "b"]]


async def test_one_batch_at_a_time() -> None:
    running = 0
    most = 0
    done: list[int] = []

    async def process(batch: list[int]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        loop.call_soon(turn.set_result, None)
        await turn  # let the other flushes run meanwhile
        running -= 1
        done.extend(batch)

    batches = EventBatches(process, max_size=2, max_latency_s=0.001)
    await asyncio.gather(*(batches.add(n) for n in range(9)), batches.flush())
    await wait_until(lambda: len(done) == 9, 5, "every item processed")
    assert most == 1 and sorted(done) == list(range(9))
