"""Shared fixtures: the embedded broker (one per session), the real encoder, worker factories."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metaguide.waiting import wait_until

__all__ = ["committed_offsets", "load_schema", "read_topic", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "schemas"
TIERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its folder's tier (``-m unit`` is the quick check)."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(TIERS[tier])


def load_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.v1.json").read_text())


@pytest.fixture(scope="session")
def broker() -> Iterator[Any]:
    from metaguide.kafka.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def encoder() -> Any:
    from metaguide.embedding.encoder import TransformerEncoder

    return TransformerEncoder(device="cpu")


@pytest.fixture
def worker_settings(broker: Any, tmp_path: Path) -> Callable[..., Any]:
    """Settings for a worker on the session broker, with topics and group unique to the test."""
    from metaguide.config import Settings
    from metaguide.kafka.broker import free_port

    run = uuid.uuid4().hex[:8]

    def make(**overrides: Any) -> Any:
        values: dict[str, Any] = dict(
            broker_url=broker.url,
            broker_profile="embedded",
            app_id=f"t-{run}",
            topic_prefix=f"t{run}.",
            state_dir=str(tmp_path / "state"),
            web_port=free_port(),
            metrics_port=free_port(),
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def start_worker(encoder: Any) -> AsyncIterator[Callable[..., Any]]:
    """Start workers in this event loop; every one still running is stopped at the end."""
    from workers.app import create_worker

    started: list[Any] = []

    async def start(settings: Any) -> Any:
        worker = create_worker(settings, encoder=encoder)
        await worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.app.started:
            await worker.stop()


async def read_topic(
    bootstrap: str, topic: str, count: int, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Read ``count`` JSON records from the start of a topic (fails on timeout)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(records)} of {count} records from {topic}")
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                records.extend(json.loads(m.value) for m in messages)
    finally:
        await consumer.stop()
    return records


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """A consumer group's committed offset of each partition of a topic (0 when none), as
    the broker has it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.topics()  # a metadata update
            partitions = consumer.partitions_for_topic(topic) or set()
        return {p: (await consumer.committed(TopicPartition(topic, p))) or 0 for p in partitions}
    finally:
        await consumer.stop()
