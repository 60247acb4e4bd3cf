"""Kafka's default partitioner, so a message sent by partition lands where its key's state is."""

from __future__ import annotations

import functools

from aiokafka.partitioner import murmur2

__all__ = ["key_partition"]


@functools.lru_cache(maxsize=1 << 16)
def key_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (Java client and aiokafka): murmur2 of the key bytes.

    Cached: aiokafka's murmur2 is pure Python, and the click path asks twice per click,
    mostly for the same users and items."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
