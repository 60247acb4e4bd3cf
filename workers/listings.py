"""The listing path: listings -> embedding -> items table -> prototypes or a classification.

``listings`` (keyed by item id): decode and validate (bad ones to dead letters), embed in the
micro-batcher, store the item; a labelled listing goes to ``category-updates`` (keyed by
platform/category, so one owner folds each prototype), an unlabelled one is classified
against the prototypes (one matrix product per micro-batch and platform) and its
classification goes to ``classifications``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from faust.types import EventT, StreamT

from metaguide.classify.prototypes import CategoryPrototypes, prototype_key
from metaguide.contracts.codec import encode_json
from metaguide.contracts.events import ListingEvent, check_key, decode_listing
from metaguide.contracts.internal import CategoryUpdate, item_record
from metaguide.contracts.records import classification_record
from metaguide.embedding.batching import MicroBatcher, TickBatcher
from metaguide.errors import SchemaViolation
from metaguide.meta.snapshots import BASE_MODEL_VERSION, Snapshot
from workers.context import WorkerContext

__all__ = ["ListingPath", "register_listing_path"]

log = logging.getLogger("metaguide.listings")

# the listing's item was stored: (item id, the items table's value, partition)
ItemStored = Callable[[str, dict[str, Any], int], Awaitable[None]]


class ListingPath:
    """Embeds, stores, and learns from or classifies listings."""

    def __init__(
        self,
        ctx: WorkerContext,
        batcher: MicroBatcher,
        items: Any,
        prototypes: CategoryPrototypes,
        prototype_owner: CategoryPrototypes,
        replica: Any,
    ) -> None:
        self.ctx = ctx
        self.batcher = batcher
        self.items = items
        self.prototypes = prototypes  # every worker's replica, for scoring
        self.prototype_owner = prototype_owner  # the sums of the categories this worker owns
        self.replica = replica  # the GlobalTable behind ``prototypes``
        self.on_item_stored: ItemStored | None = None
        self._items_changelog = items.changelog_topic.get_topic_name()
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        # the listings of one micro-batch are classified together, by platform and snapshot
        # (keyed by the snapshot's identity: the requests hold it, so it stays alive)
        self._classifier: TickBatcher[tuple[str, int], list[tuple[str, float]]]
        self._classifier = TickBatcher(self._classify_many)

    def _classify_many(
        self, key: tuple[str, int], requests: list[tuple[np.ndarray, Snapshot | None]]
    ) -> list[list[tuple[str, float]]]:
        platform, snapshot = key[0], requests[0][1]
        transform = None if snapshot is None else snapshot.adapter_for(platform).apply
        vectors = np.stack([vector for vector, _ in requests])
        return self.prototypes.nearest_many(platform, vectors, self.ctx.settings.top_k, transform)

    async def write_item(self, key: bytes, item: dict[str, Any], partition: int) -> None:
        """Set an item in the items table and changelog it in ``partition`` (the listing's),
        the record sent straight through aiokafka like the table's own write would be."""
        self.items.data[key] = item
        await self.ctx.produce(self._items_changelog, key, encode_json(item), partition)

    def _listing_metrics(self, platform: str, topic: str) -> tuple[Any, Any]:
        """A platform's classification counter and a topic's latency histogram, looked up
        once (a labelled child's lookup costs as much as its update)."""
        key = (platform, topic)
        children = self._metric_children.get(key)
        if children is None:
            metrics = self.ctx.metrics
            children = (
                metrics.classifications.labels(platform),
                metrics.event_latency.labels(topic),
            )
            self._metric_children[key] = children
        return children

    async def handle_listing(self, listing: ListingEvent, message: Any) -> None:
        """Embed one valid listing, store it, then learn from it or classify it."""
        ctx = self.ctx
        try:
            vector = await self.batcher.embed_one(listing.text)
        except Exception as exc:  # the encoder failed for this batch: this event is not lost
            await ctx.dead_letter(message, "encoder_error", f"{type(exc).__name__}: {exc}")
            return
        # the items table is partitioned like the listings topic (same key, same partitions)
        item = item_record(listing.platform, listing.category, vector, listing.ts)
        await self.write_item(listing.item_id.encode(), item, message.partition)
        if self.on_item_stored is not None:
            await self.on_item_stored(listing.item_id, item, message.partition)
        if listing.category is not None:
            update = CategoryUpdate(listing.event_id, listing.platform, listing.category, vector)
            await ctx.topics["category_updates"].send(
                key=prototype_key(listing.platform, listing.category).encode(),
                value=update.encode(),
            )
            return
        snapshot = ctx.snapshot  # read once: this listing is classified by one snapshot
        version = BASE_MODEL_VERSION if snapshot is None else snapshot.version
        top_k = await self._classifier.submit((listing.platform, id(snapshot)), (vector, snapshot))
        record = classification_record(listing, top_k, version)
        await ctx.produce(
            ctx.topic_name("classifications"), listing.item_id.encode(), encode_json(record)
        )
        emitted, latency = self._listing_metrics(listing.platform, message.topic)
        emitted.inc()
        latency.observe(max(0.0, time.time() - listing.ts))

    async def process(
        self, stream: StreamT, event: EventT, after: asyncio.Task[None] | None = None
    ) -> None:
        """Decode, handle and ack one listing once ``after`` (the one of the same item
        before it) is done; every failure ends on the dead-letter topic."""
        if after is not None:
            await asyncio.wait([after])
        message = event.message
        try:
            listing = decode_listing(message.value)
            check_key(message.key, listing.item_id, "item_id")
        except SchemaViolation as exc:
            await self.ctx.dead_letter(message, exc.reason, exc.detail)
        else:
            try:
                await self.handle_listing(listing, message)
            except asyncio.CancelledError:
                raise  # shutting down: not acked, so it is redelivered after the restart
            except Exception as exc:
                log.exception(
                    "listing at %s[%s]@%s failed", message.topic, message.partition, message.offset
                )
                await self.ctx.dead_letter(
                    message, "processing_error", f"{type(exc).__name__}: {exc}"
                )
        await stream.ack(event)

    def apply_category_update(self, raw: bytes, partition: int) -> None:
        """Fold one labelled embedding into its prototype (idempotent by event id), then
        publish the new state to every worker's replica through the replica's changelog.

        The owner's own replica is updated from that changelog too, like every other
        worker's: written locally as well, it went back to an older state for a moment
        whenever the echo of an earlier write arrived after a later one.
        """
        update = CategoryUpdate.decode(raw)
        count = self.prototype_owner.update_one(
            update.platform, update.category, update.embedding, event_id=update.event_id
        )
        metrics = self.ctx.metrics
        if count is None:
            metrics.duplicates_skipped.labels(self.ctx.topic_name("category_updates")).inc()
            return
        key = prototype_key(update.platform, update.category)
        self.replica.send_changelog(partition, key.encode(), self.prototype_owner.store[key])
        metrics.prototype_updates.inc()


def register_listing_path(ctx: WorkerContext, path: ListingPath, tasks: set[Any]) -> None:
    """The listings and category-updates agents on the worker's app."""
    app = ctx.app
    consumed = ctx.metrics.events_consumed.labels(ctx.topic_name("listings"))
    in_flight = asyncio.Semaphore(ctx.settings.max_in_flight)
    # Listings are processed side by side and their batches may finish in any order, so a
    # listing waits for the one of the same item before it: the items table and the
    # classifications keep the topic's order.
    latest: dict[bytes, asyncio.Task[None]] = {}

    def finished(key: bytes, task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        in_flight.release()
        if latest.get(key) is task:
            del latest[key]

    @app.agent(ctx.topics["listings"], name="listings")
    async def listings_agent(stream: StreamT) -> None:
        manual = stream.noack()  # type: ignore[attr-defined]
        async for event in manual.events():
            consumed.inc()
            await in_flight.acquire()
            key = event.message.key
            task = asyncio.ensure_future(path.process(manual, event, after=latest.get(key)))
            latest[key] = task
            tasks.add(task)
            task.add_done_callback(functools.partial(finished, key))

    @app.agent(ctx.topics["category_updates"], name="category-updates")
    async def category_updates_agent(stream: StreamT) -> None:
        async for event in stream.events():
            try:
                path.apply_category_update(event.value, event.message.partition)
            except Exception as exc:
                await ctx.dead_letter(event.message, "bad_category_update", repr(exc))
