"""KeepingFlowControl: resuming flow keeps what the stream buffers hold; clear() still clears."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from mode.utils.queues import FlowControlQueue

from workers.flow import KeepingFlowControl


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
