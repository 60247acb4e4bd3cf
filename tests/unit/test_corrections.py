"""The corrections to Faust, each on its own (workers/corrections/).

KeepingFlowControl: resuming flow keeps what the stream buffers hold; clear() still clears.
The drain loop's hand-over: run at once when it does not wait, raced against a suspend of flow
when it does."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from mode import Service
from mode.utils.queues import FlowControlQueue

from metaguide.waiting import wait_until
from workers.corrections.app import App
from workers.corrections.fetch_wait import FetchPacer, set_fetch_wait
from workers.corrections.flow_control import KeepingFlowControl
from workers.corrections.handover import DirectHandoverConsumer


async def test_resume_keeps_buffered_events_and_clear_drops_them() -> None:
    flow = KeepingFlowControl(SimpleNamespace(loop=asyncio.get_running_loop()))
    queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    for offset in (7, 8, 9):
        queue.put_nowait(offset)
    assert not flow.is_active()  # starts suspended, as Faust's does

    flow.resume()
    assert flow.is_active()
    assert [queue.get_nowait() for _ in range(3)] == [7, 8, 9]
    await asyncio.wait_for(flow.acquire(), 1)  # producers into the buffers go on

    queue.put_nowait(10)
    flow.suspend()
    assert not flow.is_active()
    flow.clear()  # what Faust does on a rebalance, before seeking to committed offsets
    assert queue.empty()


def _drain_loop_stand_in() -> SimpleNamespace:
    """What ``_hand_over`` uses of the consumer: mode's ``wait_first`` and the suspend event."""
    return SimpleNamespace(wait_first=Service().wait_first, suspend_flow=asyncio.Event())


async def test_a_hand_over_that_does_not_wait_finishes_without_yielding_to_the_loop() -> None:
    delivered: list[int] = []

    async def put(offset: int) -> None:
        delivered.append(offset)  # room in the buffer: nothing to wait for

    step = DirectHandoverConsumer._hand_over(_drain_loop_stand_in(), put(7))  # type: ignore[arg-type]
    with pytest.raises(StopIteration):
        step.send(None)  # done in its first step: no task, no loop turn
    assert delivered == [7]


async def test_a_hand_over_that_waits_is_driven_to_its_end() -> None:
    room = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()
    delivered: list[int] = []

    async def put(offset: int) -> None:
        waiting.set()
        delivered.append(await room + offset)

    consumer = _drain_loop_stand_in()
    task = asyncio.ensure_future(DirectHandoverConsumer._hand_over(consumer, put(7)))  # type: ignore[arg-type]
    await asyncio.wait_for(waiting.wait(), 1)
    assert not task.done() and delivered == []
    room.set_result(100)
    await asyncio.wait_for(task, 1)
    assert delivered == [107]


async def test_a_waiting_hand_over_is_cancelled_when_flow_is_suspended() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()
    seen: list[str] = []

    async def put() -> None:
        waiting.set()
        try:
            await never
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    consumer = _drain_loop_stand_in()
    task = asyncio.ensure_future(DirectHandoverConsumer._hand_over(consumer, put()))  # type: ignore[arg-type]
    await asyncio.wait_for(waiting.wait(), 1)
    consumer.suspend_flow.set()  # a rebalance: the event is fetched again after the seek
    await asyncio.wait_for(task, 1)
    assert seen == ["cancelled"]


async def test_an_error_after_a_wait_reaches_the_drain_loop() -> None:
    room = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()

    async def put() -> None:
        waiting.set()
        await room
        raise ValueError("undecodable")

    consumer = _drain_loop_stand_in()
    task = asyncio.ensure_future(DirectHandoverConsumer._hand_over(consumer, put()))  # type: ignore[arg-type]
    await asyncio.wait_for(waiting.wait(), 1)
    room.set_result(None)
    with pytest.raises(ValueError, match="undecodable"):
        await asyncio.wait_for(task, 1)


async def test_the_started_producer_is_handed_out_without_a_loop_turn() -> None:
    app = App("flow-unit", broker="kafka://127.0.0.1:1")
    starts: list[int] = []
    started = asyncio.Event()  # held until all three first callers are waiting on the start

    async def maybe_start() -> bool:
        starts.append(1)
        await started.wait()
        return True

    app.producer.maybe_start = maybe_start  # type: ignore[method-assign]
    callers = asyncio.gather(*(app.maybe_start_producer() for _ in range(3)))
    await wait_until(lambda: bool(starts), 1, "the producer's start")
    started.set()
    first = await asyncio.wait_for(callers, 1)
    assert first == [app.producer] * 3
    assert len(starts) == 1  # concurrent first callers share one start (Faust's stampede guard)

    for _ in range(3):  # every send asks for the producer: no loop turn once it has started
        step = app.maybe_start_producer().__await__()
        with pytest.raises(StopIteration) as done:
            next(step)
        assert done.value.value is app.producer
    assert len(starts) == 1


def test_the_fetch_wait_follows_the_load() -> None:
    load = {"saturated": False}
    faust_consumer = SimpleNamespace(_fetcher=SimpleNamespace(_fetch_max_wait_ms=1500))
    unstarted = SimpleNamespace()  # no fetcher yet: nothing to set
    router: list[int] = []
    pacer = FetchPacer(
        lambda: load["saturated"],
        [
            lambda ms: set_fetch_wait(faust_consumer, ms),
            lambda ms: set_fetch_wait(unstarted, ms),
            router.append,
        ],
        idle_ms=50,
        busy_ms=240,
    )
    assert pacer.tick() == 50
    assert faust_consumer._fetcher._fetch_max_wait_ms == 50
    load["saturated"] = True
    assert pacer.tick() == 240
    assert faust_consumer._fetcher._fetch_max_wait_ms == 240
    assert not hasattr(unstarted, "_fetcher")
    load["saturated"] = False
    pacer.tick()
    assert faust_consumer._fetcher._fetch_max_wait_ms == 50
    assert router == [50, 240, 50]
