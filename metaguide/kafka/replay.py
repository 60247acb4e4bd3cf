"""Produce a data set's events to the topics of any broker (``metaguide replay``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

from metaguide.contracts.codec import encode_json

__all__ = ["produce_events"]


async def produce_events(
    bootstrap: str,
    topic: str,
    events: Iterable[dict[str, Any]],
    *,
    key_field: str,
    producer: AIOKafkaProducer | None = None,
    **client_options: Any,
) -> int:
    """Send events (JSON, keyed by ``event[key_field]``), pipelined; returns how many."""
    own = producer is None
    if producer is None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **client_options)
        await producer.start()
    sent = 0
    try:
        pending = []
        for event in events:
            pending.append(
                await producer.send(
                    topic, key=str(event[key_field]).encode(), value=encode_json(event)
                )
            )
            sent += 1
            if len(pending) >= 1000:
                for fut in pending:
                    await fut
                pending.clear()
        for fut in pending:
            await fut
    finally:
        if own:
            await producer.stop()
    return sent
