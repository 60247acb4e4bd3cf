"""How events flow from the broker into the agents: two corrections.

1. Fetch wait. Kafka answers a fetch as soon as there is data; the embedded broker (Tansu)
   holds it for the whole ``fetch_max_wait_ms``: measured, a record was received 0.72 s after
   it was produced (p50; 1.47 s max) with Faust's 1.5 s, 0.015 s with 0.1 s. The worker's own
   aiokafka consumers (the click router) wait ``EMBEDDED_FETCH_MAX_WAIT_MS`` with the
   embedded broker. Faust's consumer keeps its 1.5 s: with 50 ms, listing latency at 5/s fell
   from p50 0.466 s to 0.079 s, but a restarted worker fetched more events before its seek
   back to the committed offsets and the commit stall described below came in 5 of 5 runs.
   So each hop through a Faust agent on the embedded broker still costs about 0.75 s at
   light load.

2. Flow control that keeps the events already fetched when Faust resumes flow.

Faust clears every stream buffer each time it resumes flow (``FlowControlEvent.resume``),
trusting that it has just sought each partition back to its committed offset, so that the
cleared events are fetched again. At the end of table recovery that is not so: it seeks,
then the fetcher buffers the next events, then it resumes flow (with a recovery buffer of 1,
once more) and clears them. The consumer's position and read offset are past them, so they
are not fetched again: they are not processed until the worker restarts, and their
partition commits no further, so its lag only grows. Measured here: a worker started on a
backlog of 1,500 listings lost 8 to 361 of them in about one start in two.

:class:`KeepingFlowControl` resumes flow without clearing, and
:class:`SeekClearingConsumer` clears the buffers where they do hold events that will be
fetched again: just before the seek back to the committed offsets. On a rebalance Faust
still clears them itself, and a stream skips any event of an older consumer generation.

Left open: after such a start, a partition's commits sometimes stop advancing (Faust's
acked-offset bookkeeping finds a gap at the committed offset) until the next restart, which
then processes that partition's events again from there: no loss, but duplicates and a lag
that grows. Seen in about 1 start in 4 in the backlog test, also before these corrections.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

__all__ = ["EMBEDDED_FETCH_MAX_WAIT_MS", "App", "KeepingFlowControl", "SeekClearingConsumer"]

EMBEDDED_FETCH_MAX_WAIT_MS = 50


class KeepingFlowControl(FlowControlEvent):
    """A FlowControlEvent whose ``resume`` does not clear the stream buffers."""

    def __init__(self, app: Any) -> None:
        super().__init__(loop=app.loop)

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()


class SeekClearingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer that clears the stream buffers when it seeks back to the
    committed offsets (they hold events it is about to fetch again), not when flow resumes."""

    async def perform_seek(self) -> None:
        self.app.flow_control.clear()
        await super().perform_seek()


class App(faust.App):
    """The worker's Faust app: :class:`KeepingFlowControl` and, with Faust's aiokafka driver,
    :class:`SeekClearingConsumer`."""

    @cached_property
    def flow_control(self) -> KeepingFlowControl:
        return KeepingFlowControl(self)

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        if transport.Consumer is faust_aiokafka.Consumer:
            transport.Consumer = SeekClearingConsumer  # type: ignore[misc]
        return transport
