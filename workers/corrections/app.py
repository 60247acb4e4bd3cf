"""The worker's Faust app, with every correction of this folder applied."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.objects import cached_property

from workers.corrections.end_offsets import EndOffsetsThread
from workers.corrections.fetch_only_read import FetchOnlyReadConsumer
from workers.corrections.fetch_wait import FetchWaitThread
from workers.corrections.flow_control import KeepingFlowControl
from workers.corrections.handover import DirectHandoverConsumer
from workers.corrections.producer import DirectProducerApp
from workers.corrections.seek import SeekClearingConsumer

__all__ = ["RELIES_ON", "App", "BatchHandler", "CorrectedConsumer"]

# (topic partition, the messages one fetch brought of it, in offset order)
BatchHandler = Callable[[Any, list[Any]], Awaitable[None]]

RELIES_ON = (
    "faust.app.base.App._new_transport(self)",
    "faust.transport.drivers.aiokafka.Consumer._new_consumer_thread(self)",
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread.__init__",
)


class CorrectedConsumerThread(
    FetchWaitThread, EndOffsetsThread, faust_aiokafka.AIOKafkaConsumerThread
):
    """Faust's aiokafka consumer thread: the app's fetch wait, true end offsets."""


class CorrectedConsumer(
    SeekClearingConsumer, DirectHandoverConsumer, FetchOnlyReadConsumer, faust_aiokafka.Consumer
):
    """Faust's aiokafka consumer with the seek, hand-over and fetch corrections."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return CorrectedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class App(DirectProducerApp, faust.App):
    """The worker's Faust app.

    ``fetch_max_wait_ms`` (None: Faust's 1.5 s) is its consumer's fetch wait; with
    ``read_end_offsets`` (the embedded broker) tables recover up to the true end offsets.
    """

    def __init__(
        self,
        *args: Any,
        fetch_max_wait_ms: int | None = None,
        read_end_offsets: bool = False,
        **kwargs: Any,
    ) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.read_end_offsets = read_end_offsets
        self.batch_handlers: dict[str, BatchHandler] = {}
        super().__init__(*args, **kwargs)

    def handle_in_batches(self, topic: Any, handler: BatchHandler) -> None:
        """Subscribe to ``topic`` and hand what each fetch brings of a partition of it to
        ``handler(tp, messages)`` (workers/corrections/handover.py), instead of a stream."""
        self.batch_handlers[topic.get_topic_name()] = handler
        self.topics.add(topic)

    @cached_property
    def flow_control(self) -> KeepingFlowControl:
        return KeepingFlowControl(self)

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        if transport.Consumer is faust_aiokafka.Consumer:
            transport.Consumer = CorrectedConsumer  # type: ignore[misc]
        return transport
