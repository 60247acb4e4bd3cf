"""The listing path: listings -> embedding -> items table -> prototypes or a classification.

Its unit of work is a batch: what one fetch brings of a ``listings`` partition (keyed by item
id) is handed over in one call (``App.handle_in_batches``, no Faust stream): decoded and
validated (bad ones to dead letters), its texts queued in the micro-batcher at once, its
items stored, its labelled listings sent to ``category-updates`` (keyed by platform/category,
so one owner folds each prototype) and its unlabelled ones classified, one matrix product
per platform and snapshot, their classifications sent as record batches per partition. The
batch's offsets are acked once its outputs are sent (Faust flushes them before it commits).
Batches of one partition are applied in their offset order, so a re-listing is never
overwritten by an older version.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from faust.types import StreamT

from metaguide.classify.centring import PlatformMeans
from metaguide.classify.feedback import ReviewBudget, confidence, review_priority
from metaguide.classify.labels import moves
from metaguide.classify.prototypes import CategoryPrototypes, prototype_key
from metaguide.contracts.codec import encode_json
from metaguide.contracts.events import ListingEvent, check_key, decode_listing
from metaguide.contracts.internal import CategoryUpdate, Item, NovelListing, item_record
from metaguide.contracts.records import classification_record, review_record
from metaguide.embedding.batching import MicroBatcher
from metaguide.errors import SchemaViolation
from metaguide.kafka.partitioner import key_partition
from metaguide.meta.snapshots import BASE_MODEL_VERSION
from workers.context import WorkerContext

__all__ = ["InFlight", "ListingPath", "register_listing_path"]

log = logging.getLogger("metaguide.listings")

# listings stored: (partition, [(item id, the item, the items table's value: it encoded)])
ItemsStored = Callable[[int, list[tuple[str, Item, bytes]]], Awaitable[None]]
Records = list[tuple[bytes, bytes]]


class InFlight:
    """At most ``limit`` listings between the consumer and their outputs: a batch (of at
    most ``limit``) waits for room for all of it. One caller acquires at a time: the
    consumer's drain loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._room = asyncio.Event()

    async def acquire(self, n: int) -> None:
        while self.count + n > self.limit and self.count:
            self._room.clear()
            await self._room.wait()
        self.count += n

    def release(self, n: int) -> None:
        self.count -= n
        self._room.set()


class ListingPath:
    """Embeds, stores, and learns from or classifies batches of listings."""

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
        self.on_items_stored: list[ItemsStored] = []
        self.in_flight = InFlight(ctx.settings.max_in_flight)
        self.review_budget = ReviewBudget(ctx.settings.review_budget_per_hour)
        self.tasks: set[asyncio.Task[None]] = set()
        self._last: dict[int, asyncio.Task[None]] = {}  # by partition: its latest step
        self._items_changelog = items.changelog_topic.get_topic_name()
        self._metric_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        # centring: every listing's embedding counts into its platform's mean, and the
        # platforms so configured are scored centred (metaguide/classify/centring.py)
        self.means = PlatformMeans()
        self._means_seeded = False
        self._centred_groups = ctx.settings.groups

    async def on_batch(self, tp: Any, messages: list[Any]) -> None:
        """What one fetch brought of a listings partition: tracked as Faust's streams track
        events, then processed in a task of its own once there is room in flight."""
        app = self.ctx.app
        generation = app.consumer_generation_id
        messages = [m for m in messages if m.generation_id == generation]  # else: refetched
        if not messages:
            return
        consumer = app.consumer
        for message in messages:
            consumer.track_message(message)
        self.ctx.metrics.events_consumed.labels(tp.topic).inc(len(messages))
        # chunks of a quarter of the limit: several in flight, so one is embedded while
        # another is stored and classified
        step = max(1, self.in_flight.limit // 4)
        for start in range(0, len(messages), step):
            chunk = messages[start : start + step]
            await self.in_flight.acquire(len(chunk))
            task = asyncio.ensure_future(self.process(tp, chunk, self._last.get(tp.partition)))
            self._track(tp.partition, task, len(chunk))

    def in_partition(
        self, partition: int, step: Callable[[], Awaitable[None]]
    ) -> asyncio.Task[None]:
        """Run ``step`` (a change to items of ``partition``: a label) once the partition's
        batches before it are applied; the batches after it wait for it. So the items of a
        partition are read and written by one sequence of steps."""

        async def after(previous: asyncio.Task[None] | None) -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await step()

        task = asyncio.ensure_future(after(self._last.get(partition)))
        self._track(partition, task, 0)
        return task

    def _track(self, partition: int, task: asyncio.Task[None], n: int) -> None:
        self._last[partition] = task
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, partition, n))

    def _finished(self, partition: int, n: int, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self._last.get(partition) is task:
            del self._last[partition]
        if n:
            self.in_flight.release(n)
        if not task.cancelled() and task.exception() is not None:
            log.error("a step of partition %d failed", partition, exc_info=task.exception())

    async def process(
        self, tp: Any, messages: list[Any], after: asyncio.Task[None] | None = None
    ) -> None:
        """Decode, embed, store, classify and ack one batch of a partition, once ``after``
        (the partition's batch before it) is done; every failure ends on dead letters."""
        ctx = self.ctx
        valid: list[tuple[Any, ListingEvent]] = []
        for message in messages:
            try:
                listing = decode_listing(message.value)
                check_key(message.key, listing.item_id, "item_id")
            except SchemaViolation as exc:
                await ctx.dead_letter(message, exc.reason, exc.detail)
            else:
                valid.append((message, listing))
        vectors = self.batcher.submit_many([listing.text for _, listing in valid])
        try:
            if vectors:
                await asyncio.wait(vectors)
            if after is not None:
                await asyncio.wait([after])
            await self._apply(tp.partition, valid, vectors)
        except asyncio.CancelledError:
            raise  # shutting down: not acked, so it is redelivered after the restart
        except Exception as exc:
            if ctx.stopping:
                log.info("a batch of %s left unacked for redelivery: stopping (%r)", tp, exc)
                return
            log.exception("a batch of %d listings of %s failed", len(messages), tp)
            detail = f"{type(exc).__name__}: {exc}"
            for message, _ in valid:
                await ctx.dead_letter(message, "processing_error", detail)
        consumer = ctx.app.consumer
        for message in messages:
            consumer.ack(message)

    async def _apply(
        self,
        partition: int,
        valid: list[tuple[Any, ListingEvent]],
        vectors: list[asyncio.Future[np.ndarray]],
    ) -> None:
        """Store the batch's items in order; send the moves of their embeddings between
        prototypes, the classifications and the changelog records of the items that move
        nothing, then those of the items that do (an item stored durably has had its moves
        delivered: see ``metaguide/classify/labels.py``)."""
        ctx = self.ctx
        store = self.items.data
        changelog: Records = []  # items that move nothing
        after_moves: Records = []  # items whose moves go first (and later versions of them)
        moved_keys: set[bytes] = set()
        stored: list[tuple[str, Item, bytes]] = []
        updates: list[CategoryUpdate] = []
        unlabelled: dict[str, list[tuple[ListingEvent, np.ndarray, str]]] = defaultdict(list)
        embedded: list[tuple[Any, ListingEvent, np.ndarray]] = []
        for (message, listing), future in zip(valid, vectors, strict=True):
            error = future.exception()
            if error is not None:  # the model failed on this text alone
                detail = f"{type(error).__name__}: {error}"
                await ctx.dead_letter(message, "encoder_error", detail)
            else:
                embedded.append((message, listing, future.result()))
        self._count_means(embedded)
        arrival_d2 = self._arrival_distances(embedded)
        for message, listing, vector in embedded:
            key = listing.item_id.encode()
            raw = store.get(key)
            before = None if raw is None else Item.decode(raw)
            category = listing.category
            if category is None and before is not None and before.platform == listing.platform:
                category = before.category  # a label belongs to the item, not the listing
            item = item_record(listing.platform, category, vector, listing.ts, listing.event_id)
            moved = moves(listing.item_id, before, item, arrival_d2.get(listing.event_id))
            raw = store[key] = item.encode()
            if moved or key in moved_keys:  # stored once its moves are delivered
                updates += moved
                moved_keys.add(key)
                after_moves.append((key, raw))
            else:
                changelog.append((key, raw))
            stored.append((listing.item_id, item, raw))
            if listing.category is None:
                unlabelled[listing.platform].append((listing, vector, message.topic))
        sends = self.send_moves(updates)  # to other partitions: side by side, each in order
        if unlabelled:
            sends += self._classify(unlabelled)
        if changelog:
            sends.append(self.store_items(partition, changelog))
        await asyncio.gather(*sends)
        if after_moves:
            await self.store_items(partition, after_moves)
        for hook in self.on_items_stored:
            await hook(partition, stored)

    def _count_means(self, embedded: list[tuple[Any, ListingEvent, np.ndarray]]) -> None:
        """Every embedded listing into its platform's running mean; the first time, the
        items this worker holds (its tables are recovered before any listing comes)."""
        if not self._means_seeded:
            self._means_seeded = True
            seeded = self.means.seed(Item.decode(raw) for raw in self.items.data.values())
            log.info("platform means seeded from %d stored items", seeded)
        by_platform: dict[str, list[np.ndarray]] = defaultdict(list)
        for _, listing, vector in embedded:
            by_platform[listing.platform].append(vector)
        for platform, rows in by_platform.items():
            self.means.add(platform, np.stack(rows))

    def _centred_group(self, platform: str) -> tuple[str, ...] | None:
        group = self._centred_groups.get(platform)
        if group is None and self.ctx.settings.centring == "platform":
            return (platform,)
        return group

    def _arrival_distances(
        self, embedded: list[tuple[Any, ListingEvent, np.ndarray]]
    ) -> dict[str, float]:
        """Each labelled listing's squared distance to its platform's nearest prototype as
        it arrives (novelty's calibration), one matrix product per platform."""
        by_platform: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)
        for _, listing, vector in embedded:
            if listing.category is not None:
                by_platform[listing.platform].append((listing.event_id, vector))
        out: dict[str, float] = {}
        for platform, rows in by_platform.items():
            d2 = self.prototypes.nearest_d2(platform, np.stack([v for _, v in rows]))
            out.update(zip([e for e, _ in rows], d2.tolist(), strict=True))
        return out

    def send_moves(self, updates: list[CategoryUpdate]) -> list[Awaitable[None]]:
        """The sends of category updates to their owners' partitions, one record batch each."""
        partitions = self.ctx.settings.partitions
        by_partition: dict[int, Records] = defaultdict(list)
        for update in updates:
            pkey = prototype_key(update.platform, update.category).encode()
            by_partition[key_partition(pkey, partitions)].append((pkey, update.encode()))
        topic = self.ctx.topic_name("category_updates")
        return [self.ctx.produce_many(topic, p, records) for p, records in by_partition.items()]

    async def store_items(self, partition: int, records: Records) -> None:
        """Send items' changelog records (their values already in the table's store)."""
        await self.ctx.produce_many(self._items_changelog, partition, records)

    def _classify(
        self, by_platform: dict[str, list[tuple[ListingEvent, np.ndarray, str]]]
    ) -> list[Awaitable[None]]:
        """One matrix product per platform, with the snapshot serving now (read once: each
        classification names the snapshot that scored it), and the novelty and review
        priority of each listing; returns the sends."""
        ctx = self.ctx
        settings = ctx.settings
        snapshot = ctx.snapshot
        version = BASE_MODEL_VERSION if snapshot is None else snapshot.version
        partitions = settings.partitions
        out: dict[int, Records] = defaultdict(list)
        reviews: dict[int, Records] = defaultdict(list)
        novel: list[NovelListing] = []
        now = time.time()
        for platform, rows in by_platform.items():
            adapter = None if snapshot is None else snapshot.adapter_for(platform)
            transform = None if adapter is None or adapter.is_identity() else adapter.apply
            heads = None if snapshot is None else snapshot.heads_for(platform)
            x = np.stack([v for _, v, _ in rows])
            group = self._centred_group(platform)
            if group is None:
                top = self.prototypes.nearest_many(platform, x, settings.top_k, transform, heads)
            else:  # the snapshot's adapter and heads are trained on uncentred embeddings
                means = {p: self.means.mean(p) for p in group}
                top = self.prototypes.nearest_centred(group, x, means, settings.top_k)
            novelty = self.prototypes.novelty_many(platform, x).tolist()
            support = self.prototypes.support(platform)
            margins = [confidence(top_k)[1] for top_k in top]
            priorities = [
                review_priority(m, support.get(t[0][0], 1) if t else 1, settings.review_few_weight)
                for m, t in zip(margins, top, strict=True)
            ]
            emitted, latency = self._listing_metrics(platform, rows[0][2])
            for i, ((listing, vector, _), top_k) in enumerate(zip(rows, top, strict=True)):
                key = listing.item_id.encode()
                is_novel = novelty[i] >= settings.novelty_threshold
                record = classification_record(
                    listing, top_k, version, margin=margins[i], novelty=novelty[i], novel=is_novel
                )
                out[key_partition(key, partitions)].append((key, encode_json(record)))
                latency.observe(max(0.0, now - listing.ts))
                if is_novel:
                    novel.append(NovelListing.of(listing, vector))
            emitted.inc(len(rows))
            for i in self.review_budget.offer(platform, priorities, time.monotonic()):
                listing, top_k = rows[i][0], top[i]
                record = review_record(
                    listing,
                    top_k,
                    version,
                    margin=margins[i],
                    novelty=novelty[i],
                    priority=priorities[i],
                )
                key = listing.item_id.encode()
                reviews[key_partition(key, partitions)].append((key, encode_json(record)))
                ctx.metrics.review_requests.labels(platform).inc()
        sends: list[Awaitable[None]] = []
        topic = ctx.topic_name("classifications")
        sends += [ctx.produce_many(topic, target, records) for target, records in out.items()]
        topic = ctx.topic_name("review_requests")
        sends += [ctx.produce_many(topic, target, records) for target, records in reviews.items()]
        if novel:
            sends.append(self._send_novel(novel))
        return sends

    async def _send_novel(self, novel: list[NovelListing]) -> None:
        """Novel listings to their platform's candidate-category owner."""
        partitions = self.ctx.settings.partitions
        by_partition: dict[int, Records] = defaultdict(list)
        for listing in novel:
            key = listing.platform.encode()
            by_partition[key_partition(key, partitions)].append((key, listing.encode()))
            self.ctx.metrics.novel_listings.labels(listing.platform).inc()
        topic = self.ctx.topic_name("novel_listings")
        await asyncio.gather(
            *(self.ctx.produce_many(topic, p, records) for p, records in by_partition.items())
        )

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

    def apply_category_update(self, raw: bytes, partition: int) -> None:
        """Fold one labelled embedding into its prototype (idempotent by event id), then
        publish the new state to every worker's replica through the replica's changelog.

        The owner's own replica is updated from that changelog too, like every other
        worker's: written locally as well, it went back to an older state for a moment
        whenever the echo of an earlier write arrived after a later one.
        """
        update = CategoryUpdate.decode(raw)
        count = self.prototype_owner.update_one(
            update.platform,
            update.category,
            update.embedding,
            update.event_id,
            update.sign,
            update.nearest_d2,
        )
        metrics = self.ctx.metrics
        if count is None:
            metrics.duplicates_skipped.labels(self.ctx.topic_name("category_updates")).inc()
            return
        key = prototype_key(update.platform, update.category)
        self.replica.send_changelog(partition, key.encode(), self.prototype_owner.store[key])
        metrics.prototype_updates.inc()


def register_listing_path(ctx: WorkerContext, path: ListingPath) -> None:
    """The listings topic handled in batches, and the category-updates agent."""
    app: Any = ctx.app
    app.handle_in_batches(ctx.topics["listings"], path.on_batch)

    @app.agent(ctx.topics["category_updates"], name="category-updates")
    async def category_updates_agent(stream: StreamT) -> None:
        async for event in stream.events():
            try:
                path.apply_category_update(event.value, event.message.partition)
            except Exception as exc:
                await ctx.dead_letter(event.message, "bad_category_update", repr(exc))
