"""End offsets read from the records (embedded broker only).

Tansu answers ListOffsets(latest) with the last record batch's base offset + 1, not one past
its last record. Faust's table recovery reads a changelog up to that offset, so it stopped
inside the last batch and lost the rest of it. :func:`true_end_offsets` fetches each
partition's last batch and takes the offset after its last record; :class:`EndOffsetsThread`
gives those to table recovery.

Upstream: a Tansu behaviour (no issue found); Faust's recovery trusts the broker's
high-water mark (compare faust-streaming/faust#155 and #597 on recovery end offsets).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition

from metaguide.kafka.client import group_less_consumer

__all__ = ["RELIES_ON", "EndOffsetsThread", "true_end_offsets"]

log = logging.getLogger("metaguide.corrections")

LAST_BATCH_TIMEOUT_S = 10.0

RELIES_ON = (
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._highwaters(self, partitions)",
)


async def true_end_offsets(
    bootstrap: str, reported: Mapping[Any, int | None], timeout_s: float = LAST_BATCH_TIMEOUT_S
) -> dict[Any, int | None]:
    """One past the last record of each partition, from ListOffsets(latest) answers that
    may point at the first record of the last batch (Tansu): the batch is fetched from there
    and its last offset taken. Partitions that are empty, or whose batch does not come
    within ``timeout_s`` (logged), keep the reported offset."""
    ends = dict(reported)
    starts = {
        TopicPartition(tp.topic, tp.partition): (tp, end)
        for tp, end in reported.items()
        if end is not None and end > 0
    }
    if not starts:
        return ends
    consumer = group_less_consumer(bootstrap)
    await consumer.start()
    try:
        consumer.assign(list(starts))
        for tp, (_, end) in starts.items():
            consumer.seek(tp, end - 1)
        pending = set(starts)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            fetched = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in fetched.items():
                if records:
                    key, end = starts[tp]
                    ends[key] = max(end, records[-1].offset + 1)
                    pending.discard(tp)
        if pending:
            log.warning(
                "no last batch within %ss for %s: kept their end offsets", timeout_s, pending
            )
    finally:
        await consumer.stop()
    return ends


class EndOffsetsThread:
    """Mixin for Faust's consumer thread: with the app's ``read_end_offsets``, table recovery
    reads each changelog up to :func:`true_end_offsets`."""

    consumer: Any

    async def _highwaters(self, partitions: Any) -> Mapping[Any, int]:
        reported = await super()._highwaters(partitions)  # type: ignore[misc]
        app = self.consumer.app
        if not getattr(app, "read_end_offsets", False):
            return reported
        url = app.conf.broker[0]
        return await true_end_offsets(f"{url.host}:{url.port}", reported)  # type: ignore[return-value]
