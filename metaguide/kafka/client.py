"""Kafka clients as the worker and the tools use them: security options, group-less
readers, lag."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = [
    "check_broker",
    "follow_topic",
    "group_less_consumer",
    "kafka_client_options",
    "lag_of",
    "read_to_end",
]


def kafka_client_options(settings: Any) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured security settings."""
    opts: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        opts["ssl_context"] = create_ssl_context(cafile=settings.ssl_cafile or None)
    if settings.security_protocol.startswith("SASL"):
        opts.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password.get_secret_value(),
        )
    return opts


async def read_to_end(bootstrap: str, topic: str, **client_options: Any) -> list[Any]:
    """Every record of a topic, from the beginning to the end offsets seen at the start
    ([] when the topic does not exist yet). A group-less consumer: commits nothing."""
    from aiokafka import TopicPartition

    consumer = group_less_consumer(bootstrap, **client_options)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return []
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []  # its metadata is not in yet
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        pending = {tp for tp in tps if end[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for msgs in batch.values():
                records.extend(msgs)
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
        return records
    finally:
        await consumer.stop()


async def follow_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    handle: Callable[[list[Any]], Awaitable[None]],
    caught_up: Callable[[], None],
    *,
    max_records: int | None = None,
    **client_options: Any,
) -> None:
    """Read a topic from its beginning, forever, with a group-less consumer (commits
    nothing): ``handle`` gets each fetched partition's records in order, and ``caught_up`` is
    called once every partition has been read to the end offsets seen at the start."""
    from aiokafka import TopicPartition

    consumer = group_less_consumer(bootstrap, **client_options)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        behind = {tp for tp in tps if end[tp] > 0}
        reported = False
        while True:
            if not behind and not reported:
                caught_up()
                reported = True
            batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
            for records in batch.values():
                await handle(records)
            for tp in list(behind):
                if await consumer.position(tp) >= end[tp]:
                    behind.discard(tp)
    finally:
        await consumer.stop()


async def lag_of(consumer: Any, tps: list[Any]) -> dict[Any, int]:
    """End offset minus committed offset (0 when nothing was committed and nothing written)."""
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    out = {}
    for tp in tps:
        committed = await consumer.committed(tp)
        out[tp] = max(0, ends[tp] - (committed or 0))
    return out


def group_less_consumer(bootstrap: str, **client_options: Any) -> Any:
    """An aiokafka consumer in no group: it reads where it is told and commits nothing."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **client_options
    )


def check_broker(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`BrokerError` saying what to do when nothing accepts a connection at any
    of ``bootstrap``'s addresses (``host:port``, comma-separated)."""
    import socket

    from metaguide.errors import BrokerError

    problems = []
    for address in (a.strip() for a in bootstrap.split(",") if a.strip()):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError) as exc:
            problems.append(f"{address}: {exc}")
    raise BrokerError(
        f"cannot reach a Kafka broker at {bootstrap} ({'; '.join(problems) or 'no address'}):"
        " is it running? Set METAGUIDE_BROKER_URL to its address, or try metaguide serve"
        " --embedded"
    )
