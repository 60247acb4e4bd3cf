"""What every path of a worker shares, without the worker itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faust

from metaguide.config import Settings
from metaguide.contracts.codec import encode_json
from metaguide.contracts.records import dead_letter_of
from metaguide.meta.snapshots import BASE_MODEL_VERSION, Snapshot
from metaguide.metrics import Metrics
from workers.corrections.producer import aiokafka_producer

__all__ = ["WorkerContext"]


@dataclass
class WorkerContext:
    """Settings, metrics, the app and its topics, the serving snapshot, readiness flags."""

    settings: Settings
    app: faust.App
    metrics: Metrics
    topics: dict[str, Any] = field(default_factory=dict)
    snapshot: Snapshot | None = None  # None: base embeddings, no adapter
    caught_up: set[str] = field(default_factory=set)  # followers read to their end once

    @property
    def model_version(self) -> str:
        snapshot = self.snapshot
        return BASE_MODEL_VERSION if snapshot is None else snapshot.version

    def topic_name(self, name: str) -> str:
        """The full name of one of the worker's topics (``listings``, ``dead_letters``...)."""
        return str(self.topics[name].get_topic_name())

    async def produce(
        self, topic: str, key: bytes, value: bytes, partition: int | None = None
    ) -> None:
        """Send one record straight through aiokafka (Faust flushes it before each commit)."""
        await aiokafka_producer(self.app).send(topic, value=value, key=key, partition=partition)

    async def produce_many(
        self, topic: str, partition: int, records: Sequence[tuple[bytes, bytes]]
    ) -> None:
        """Send records to one partition as aiokafka record batches: one future per batch,
        not one per record. Faust flushes them before each commit like any send."""
        producer = aiokafka_producer(self.app)
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                await producer.send_batch(batch, topic, partition=partition)
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record of {len(value)} bytes is over the batch size")
        if batch.record_count():
            await producer.send_batch(batch, topic, partition=partition)

    @property
    def stopping(self) -> bool:
        """The app is stopping: a step that fails now failed because its producer or consumer
        went away, not because of its events; left unacked, they are redelivered."""
        return bool(self.app.should_stop)

    async def dead_letter(self, message: Any, reason: str, detail: str) -> None:
        """Send a consumed message that cannot be processed to the dead-letter topic."""
        record = dead_letter_of(message, reason, detail)
        self.metrics.dead_letter(message.topic, reason)
        await self.topics["dead_letters"].send(
            key=message.topic.encode(), value=encode_json(record)
        )
