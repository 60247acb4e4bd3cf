"""Batches of a stream's events, cut by size and by a latency budget, acked by the caller.

Faust's ``noack_take`` loses an event now and then under load (one
event buffered twice and its neighbour never, so its offset was never acked and the
partition's commits stalled), so this is a small replacement on top of plain per-event
iteration: the agent adds each event; a batch is processed when it is full (in the agent's
loop, which is the backpressure) or when its oldest event has waited ``max_latency_s``
(from a timer task). One batch is processed at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["EventBatches"]


class EventBatches:
    def __init__(
        self,
        process: Callable[[list[Any]], Awaitable[None]],
        *,
        max_size: int,
        max_latency_s: float,
    ) -> None:
        self.process = process
        self.max_size = max_size
        self.max_latency_s = max_latency_s
        self._buffer: list[Any] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def add(self, event: Any) -> None:
        self._buffer.append(event)
        if len(self._buffer) >= self.max_size:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.max_latency_s, self._flush_soon
            )

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def flush(self) -> None:
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch, self._buffer = self._buffer, []
            if batch:
                await self.process(batch)
