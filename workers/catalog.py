"""Every worker's replica of the catalog: the ``items`` table's changelog, read in bulk.

Recommendations need every item of a platform on the worker that answers, while the
``items`` table holds only this worker's partitions. Each listing is written once, to
``items``, and every worker follows that table's changelog with one group-less consumer
(the topic is the source of truth, so nothing is committed), applying records in batches of
up to ``MAX_RECORDS``. A worker's own listings go into the replica as they are processed.
"""

from __future__ import annotations

from typing import Any

from metaguide.kafka.client import follow_topic, kafka_client_options
from workers.context import WorkerContext

__all__ = ["follow_items"]

MAX_RECORDS = 2000
# a fetch waits for this much or the wait: chunks while listings stream in (fewer fetches)
FETCH_MIN_BYTES = 64 * 1024
FETCH_MAX_WAIT_MS = 200


async def follow_items(ctx: WorkerContext, items: Any, catalog: dict[bytes, Any]) -> None:
    """Apply the items changelog to ``catalog`` forever; adds ``"catalog"`` to
    ``ctx.caught_up`` once it has read up to the end offsets seen at its start."""

    async def apply(records: list[Any]) -> None:
        for record in records:
            if record.key is None:
                continue
            if record.value is None:
                catalog.pop(record.key, None)  # a tombstone: the item was removed
            else:
                catalog[record.key] = record.value  # the encoded Item, decoded when read

    def caught_up() -> None:
        ctx.caught_up.add("catalog")

    changelog = items.changelog_topic
    await changelog.maybe_declare()
    await follow_topic(
        ctx.settings.broker_url.removeprefix("kafka://"),
        changelog.get_topic_name(),
        ctx.settings.partitions,
        apply,
        caught_up,
        max_records=MAX_RECORDS,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        **kafka_client_options(ctx.settings),
    )
