"""End offsets on the embedded broker: read from the last batch, not from ListOffsets alone."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from workers.corrections.end_offsets import true_end_offsets


async def test_the_end_offset_is_one_past_the_last_record_of_a_batched_partition(
    broker: Any,
) -> None:
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    await producer.start()
    try:
        for size in (10, 5):  # two batches in partition 0; partition 1 stays empty
            sends = [
                await producer.send(topic, value=f"{size}-{i}".encode(), partition=0)
                for i in range(size)
            ]
            await asyncio.gather(*sends)
    finally:
        await producer.stop()
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    await consumer.start()
    try:
        reported = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()

    ends = await true_end_offsets(broker.bootstrap, reported)

    assert ends[tps[0]] == 15  # Tansu's ListOffsets says 11: the last batch's base + 1
    assert ends[tps[0]] >= reported[tps[0]]
    assert ends[tps[1]] == reported[tps[1]] == 0
