"""Fetch wait: how long the embedded broker holds a fetch, and a wait that follows the load.

Kafka answers a fetch as soon as there is data; Tansu holds every fetch for its whole
``fetch_max_wait_ms``, data or not, and Faust fixes that wait at 1.5 s when it builds its
aiokafka consumer. So with the embedded broker the worker's consumers wait
``EMBEDDED_FETCH_MAX_WAIT_MS``, and while the encoder is saturated (a full batch waiting)
``EMBEDDED_BUSY_FETCH_MAX_WAIT_MS``, which costs the broker fewer fetches. aiokafka reads the
wait from a private attribute of its fetcher at each request; there is no public setter.

Upstream: no Faust or aiokafka issue; Faust hard-codes the wait in ``_create_worker_consumer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "EMBEDDED_BUSY_FETCH_MAX_WAIT_MS",
    "EMBEDDED_FETCH_MAX_WAIT_MS",
    "RELIES_ON",
    "FetchPacer",
    "set_fetch_wait",
]

EMBEDDED_FETCH_MAX_WAIT_MS = 50
EMBEDDED_BUSY_FETCH_MAX_WAIT_MS = 240  # under 250 ms: Tansu then polls each partition once

RELIES_ON = (
    "aiokafka.consumer.consumer.AIOKafkaConsumer._fetcher",
    "aiokafka.consumer.fetcher.Fetcher._fetch_max_wait_ms",
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._create_worker_consumer"
    "(self, transport)",
)


def set_fetch_wait(consumer: Any, wait_ms: int) -> None:
    """An aiokafka consumer's fetch wait from its next request on (no-op before it starts).

    Safe from another thread: one int attribute, read when the next request is built."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None:
        fetcher._fetch_max_wait_ms = wait_ms


class FetchPacer:
    """``busy_ms`` while ``saturated()`` says the model is the bottleneck, else ``idle_ms``;
    ``tick`` hands the wait for the load now to each target."""

    def __init__(
        self,
        saturated: Callable[[], bool],
        targets: list[Callable[[int], None]],
        idle_ms: int = EMBEDDED_FETCH_MAX_WAIT_MS,
        busy_ms: int = EMBEDDED_BUSY_FETCH_MAX_WAIT_MS,
    ) -> None:
        self.saturated = saturated
        self.targets = targets
        self.idle_ms = idle_ms
        self.busy_ms = busy_ms

    def tick(self) -> int:
        """Give every target the wait for the load now; return that wait."""
        wait_ms = self.busy_ms if self.saturated() else self.idle_ms
        for set_wait in self.targets:
            set_wait(wait_ms)
        return wait_ms


class FetchWaitThread:
    """Mixin for Faust's consumer thread: its aiokafka consumer starts with the app's
    ``fetch_max_wait_ms`` instead of Faust's fixed 1.5 s."""

    consumer: Any

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)  # type: ignore[misc]
        wait_ms = getattr(self.consumer.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms  # read by aiokafka at start()
        return consumer
