"""Save an embedded broker's contents to a folder, and load them into a fresh one.

The embedded broker keeps every record in memory and forgets them when it stops, while a
worker's state lives in its topics (the tables' changelogs, the catalogue, the snapshots'
announcements) and its consumer group's committed offsets. ``metaguide serve --embedded``
saves both when it stops cleanly and loads them before its worker starts again, so a local
worker comes back with what it learned, as a worker restarted against a cluster does.

Folder layout: ``records.bin`` (every record: topic index, partition, offset, timestamp, key,
value, length-prefixed) and ``manifest.json`` (format, topics with their partition counts,
the groups' committed offsets, the record count). Both are written to temporary names and
renamed, manifest last, so a folder holds a whole save or the previous one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metaguide.errors import BrokerError
from metaguide.kafka.client import group_less_consumer

__all__ = ["FORMAT", "load_broker", "save_broker", "saved"]

FORMAT = "metaguide.broker-dump.v1"
MANIFEST = "manifest.json"
RECORDS = "records.bin"
_HEAD = struct.Struct(">IIqqii")  # topic index, partition, offset, timestamp, key len, value len


def saved(folder: str | Path) -> bool:
    """Whether ``folder`` holds a save."""
    return (Path(folder) / MANIFEST).is_file()


def _pack(topic: int, record: Any) -> bytes:
    key, value = record.key, record.value
    head = _HEAD.pack(
        topic,
        record.partition,
        record.offset,
        record.timestamp,
        -1 if key is None else len(key),
        -1 if value is None else len(value),
    )
    return head + (key or b"") + (value or b"")


def _unpack(data: bytes) -> Iterator[tuple[int, int, int, int, bytes | None, bytes | None]]:
    at = 0
    while at < len(data):
        topic, partition, offset, ts, key_len, value_len = _HEAD.unpack_from(data, at)
        at += _HEAD.size
        key = None if key_len < 0 else data[at : at + key_len]
        at += max(key_len, 0)
        value = None if value_len < 0 else data[at : at + value_len]
        at += max(value_len, 0)
        yield topic, partition, offset, ts, key, value


async def _partitions(bootstrap: str, **client_options: Any) -> dict[str, int]:
    """Each topic's partition count, from a metadata request for every topic."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    return {
        t["topic"]: len(t["partitions"])
        for t in described
        if not t["topic"].startswith("__") and t["partitions"]
    }


async def save_broker(
    bootstrap: str, folder: str | Path, groups: list[str], **client_options: Any
) -> dict[str, Any]:
    """Every topic's records and the ``groups``' committed offsets, written to ``folder``;
    returns the manifest."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    topics = await _partitions(bootstrap, **client_options)
    names = sorted(topics)
    index = {topic: i for i, topic in enumerate(names)}
    tps = [TopicPartition(t, p) for t in names for p in range(topics[t])]
    # every partition at once: the embedded broker holds each fetch for its whole wait
    consumer = group_less_consumer(bootstrap, fetch_max_wait_ms=50, **client_options)
    await consumer.start()
    count = 0
    tmp = out / f"{RECORDS}.tmp"
    try:
        with tmp.open("wb") as fh:
            if tps:
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                end = await consumer.end_offsets(tps)
                pending = {tp for tp in tps if end[tp] > 0}
                while pending:
                    batch = await consumer.getmany(*pending, timeout_ms=500)
                    for tp, records in batch.items():
                        for record in records:
                            fh.write(_pack(index[tp.topic], record))
                            count += 1
                    for tp in list(pending):
                        if await consumer.position(tp) >= end[tp]:
                            pending.discard(tp)
    finally:
        await consumer.stop()
    offsets: dict[str, dict[str, dict[str, int]]] = {}
    every = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    try:
        for group in groups:
            # one request per group, naming the partitions (the embedded broker cannot list
            # a group's offsets without them)
            answer = await admin.list_consumer_group_offsets(group, partitions=every)
            for tp, meta in answer.items():
                if meta.offset >= 0:
                    offsets.setdefault(group, {}).setdefault(tp.topic, {})[str(tp.partition)] = (
                        meta.offset
                    )
    finally:
        await admin.close()
    manifest = {"format": FORMAT, "topics": topics, "groups": offsets, "records": count}
    tmp.replace(out / RECORDS)
    tmp_manifest = out / f"{MANIFEST}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp_manifest.replace(out / MANIFEST)
    return manifest


async def load_broker(bootstrap: str, folder: str | Path, **client_options: Any) -> dict[str, Any]:
    """Load a save into an empty broker: topics, records (at their offsets), committed
    offsets. :class:`BrokerError` when the save is unreadable or the broker gives the
    records other offsets (it was not empty)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.structs import OffsetAndMetadata

    src = Path(folder)
    try:
        manifest = json.loads((src / MANIFEST).read_text())
        data = (src / RECORDS).read_bytes()
    except (OSError, ValueError) as exc:
        raise BrokerError(f"cannot read the saved broker state in {src}: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BrokerError(f"{src / MANIFEST}: format {manifest.get('format')!r}, want {FORMAT}")
    names = sorted(manifest["topics"])
    if not names:
        return manifest
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(t, num_partitions=n, replication_factor=1)
                for t, n in manifest["topics"].items()
            ]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, acks="all", **client_options
    )
    await producer.start()
    try:
        sends = []
        for topic, partition, offset, ts, key, value in _unpack(data):
            future = await producer.send(
                names[topic], value=value, key=key, partition=partition, timestamp_ms=ts
            )
            sends.append((names[topic], partition, offset, future))
        for topic, partition, offset, future in sends:
            got = (await future).offset
            if got != offset:
                raise BrokerError(
                    f"{topic}[{partition}]: a saved record at offset {offset} landed at {got};"
                    " the broker was not empty"
                )
    finally:
        await producer.stop()
    for group, by_topic in manifest["groups"].items():
        member = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **client_options
        )
        await member.start()
        try:
            commit = {
                TopicPartition(topic, int(p)): OffsetAndMetadata(offset, "")
                for topic, parts in by_topic.items()
                for p, offset in parts.items()
            }
            member.assign(list(commit))
            await member.commit(commit)
        finally:
            await member.stop()
    return manifest
