"""The app's producer, handed out and used directly.

- Every send awaits ``App.maybe_start_producer``, which Faust guards against concurrent starts
  with mode's stampede wrapper: three loop turns per send. Once the producer has started,
  :class:`DirectProducerApp` returns it directly (mode caches its wrapper in the instance
  under the method's name, which would hide the override; the entry is dropped).
- The worker sends its outputs through aiokafka's producer itself (:func:`aiokafka_producer`):
  Faust's ``Topic.send`` adds a future, sensors and callbacks per record. Faust flushes that
  same producer before each commit, so an offset is still committed after its outputs.
- aiokafka's producer fetches metadata for every topic until it is first asked about one,
  then only for those it was asked about; Faust's table writes pick their partition without
  asking, so their changelogs dropped out and a pending batch waited forever (a stop hung on
  its final flush). :func:`track_topics` asks about every topic the worker writes.

Upstream: no issue found for either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["RELIES_ON", "DirectProducerApp", "aiokafka_producer", "track_topics"]

RELIES_ON = (
    "faust.app.base.App.maybe_start_producer(self)",
    "faust.app.base.App.in_transaction",
    "faust.transport.drivers.aiokafka.Producer._ensure_producer(self)",
    "aiokafka.client.AIOKafkaClient.add_topic(self, topic)",
)


class DirectProducerApp:
    """Mixin for Faust's app: the started producer without the stampede guard."""

    _producer_started = False

    async def maybe_start_producer(self) -> Any:
        app: Any = self
        if self._producer_started and not app.in_transaction:
            return app.producer
        producer = await super().maybe_start_producer()  # type: ignore[misc]
        app.__dict__.pop("maybe_start_producer", None)
        self._producer_started = True
        return producer


def aiokafka_producer(app: Any) -> Any:
    """The aiokafka producer under a Faust app's producer (started)."""
    return app.producer._ensure_producer()


async def track_topics(app: Any, names: Iterable[str]) -> None:
    """Keep these topics in the app's producer metadata."""
    client = aiokafka_producer(app).client
    for name in names:
        await client.add_topic(name)
