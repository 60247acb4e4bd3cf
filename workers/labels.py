"""The label path: labels and corrections from merchants, reviewers and rules.

labels (keyed by item id, partitioned like listings) -> the item's partition: its stored base
embedding is taken out of its previous category's prototype (if it had one) and added to the
new one (``metaguide/classify/labels.py``), through ``category-updates`` like a labelled
listing's, so the category owners fold it and the trainer reads it; the item's label is
stored. A label runs in its partition's sequence of listing batches
(``ListingPath.in_partition``): an item is never changed by two steps at once.

A bulk label (``item_ids``: a candidate category named at once) and a label read from a
partition that is not its item's are sent on to their items' partitions, one label per item
(each with an id derived from the bulk label's, so a redelivered bulk label repeats them).
A label whose item is not listed yet waits, unacked, for its listing, at most
``label_wait_s``; then it is dead-lettered as ``item_not_found``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from faust.types import EventT, StreamT

from metaguide.classify.labels import moves, relabelled
from metaguide.contracts.codec import encode_json
from metaguide.contracts.events import LabelEvent, check_key, decode_label
from metaguide.contracts.internal import Item
from metaguide.errors import SchemaViolation
from metaguide.kafka.partitioner import key_partition
from workers.context import WorkerContext
from workers.listings import ListingPath

__all__ = ["LabelPath", "register_label_path"]

log = logging.getLogger("metaguide.labels")

MAX_PENDING = 1000  # label steps queued in their partitions before the agent waits


@dataclass
class _Waiting:
    label: LabelEvent
    event: EventT
    since: float


def item_label_id(event_id: str, item_id: str) -> str:
    """The id of one item's share of a bulk label: the same on every redelivery."""
    digest = hashlib.blake2b(item_id.encode(), digest_size=8).hexdigest()
    return f"{event_id[:96]}/{digest}"


def single_label(label: LabelEvent, item_id: str, event_id: str) -> bytes:
    """One item's label event (``schemas/label.v1.json``)."""
    record: dict[str, Any] = {
        "schema": "label.v1",
        "event_id": event_id,
        "platform": label.platform,
        "item_id": item_id,
        "category": label.category,
        "source": label.source,
        "ts": label.ts,
    }
    if label.review_id is not None:
        record["review_id"] = label.review_id
    return encode_json(record)


class LabelPath:
    """Applies label events to the items of this worker's partitions."""

    def __init__(self, ctx: WorkerContext, listings: ListingPath) -> None:
        self.ctx = ctx
        self.listings = listings
        self.waiting: dict[str, list[_Waiting]] = defaultdict(list)
        self.pending: set[asyncio.Task[None]] = set()
        self.stream: StreamT | None = None

    async def on_event(self, stream: StreamT, event: EventT) -> None:
        """One label event: applied in its item's partition, or sent on there."""
        self.stream = stream
        message = event.message
        try:
            label = decode_label(message.value)
            if not label.bulk:
                check_key(message.key, label.item_ids[0], "item_id")
        except SchemaViolation as exc:
            await self.ctx.dead_letter(message, exc.reason, exc.detail)
            await stream.ack(event)
            return
        partitions = self.ctx.settings.partitions
        if label.bulk or key_partition(label.item_ids[0].encode(), partitions) != message.partition:
            await self._send_on(label)
            await stream.ack(event)
            return
        while len(self.pending) >= MAX_PENDING:
            await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)
        task = self.listings.in_partition(
            message.partition, lambda: self._label(label, event, message.partition)
        )
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _send_on(self, label: LabelEvent) -> None:
        """Each item's label to its item's partition (a bulk label, or a misrouted one)."""
        partitions = self.ctx.settings.partitions
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for item_id in label.item_ids:
            event_id = item_label_id(label.event_id, item_id) if label.bulk else label.event_id
            key = item_id.encode()
            by_partition[key_partition(key, partitions)].append(
                (key, single_label(label, item_id, event_id))
            )
        topic = self.ctx.topic_name("labels")
        await asyncio.gather(
            *(self.ctx.produce_many(topic, p, rows) for p, rows in by_partition.items())
        )

    async def _label(self, label: LabelEvent, event: EventT, partition: int) -> None:
        """In the partition's sequence: apply the label, or wait for the item's listing."""
        item_id = label.item_ids[0]
        try:
            if item_id.encode() in self.listings.items.data:
                await self._apply(label, event, partition)
            else:
                self.waiting[item_id].append(_Waiting(label, event, time.monotonic()))
                self._count_waiting()
                return
        except Exception as exc:
            if self.ctx.stopping:
                return  # not acked: redelivered after the restart
            log.exception("label %s failed", label.event_id)
            await self.ctx.dead_letter(event.message, "processing_error", repr(exc))
        await self._ack(event)

    async def _apply(self, label: LabelEvent, event: EventT, partition: int) -> None:
        ctx = self.ctx
        item_id = label.item_ids[0]
        key = item_id.encode()
        store = self.listings.items.data
        before = Item.decode(store[key])
        if before.platform != label.platform:
            detail = f"item {item_id[:80]!r} is listed on {before.platform!r}"
            await ctx.dead_letter(event.message, "platform_mismatch", detail)
            return
        if before.src == label.event_id:  # delivered again after it was stored
            ctx.metrics.duplicates_skipped.labels(event.message.topic).inc()
            return
        ctx.metrics.labels_applied.labels(label.source).inc()
        if label.review_id is not None:
            ctx.metrics.reviews_answered.inc()
        if before.category == label.category:
            return  # a confirmation: nothing moves
        if before.category is not None and label.category is not None:
            ctx.metrics.label_corrections.inc()
        after = relabelled(before, label.category, label.event_id)
        raw = store[key] = after.encode()
        await asyncio.gather(*self.listings.send_moves(moves(item_id, before, after)))
        await self.listings.store_items(partition, [(key, raw)])

    async def items_stored(self, partition: int, stored: list[tuple[str, Item, bytes]]) -> None:
        """Listings were stored (in their partition's sequence): the labels that waited for
        them are applied now."""
        for item_id, _, _ in stored:
            waiting = self.waiting.pop(item_id, None)
            for w in waiting or ():
                try:
                    await self._apply(w.label, w.event, partition)
                except Exception as exc:
                    if self.ctx.stopping:
                        return  # not acked: redelivered after the restart
                    log.exception("label %s failed", w.label.event_id)
                    await self.ctx.dead_letter(w.event.message, "processing_error", repr(exc))
                await self._ack(w.event)
            if waiting:
                self._count_waiting()

    async def expire_waiting(self) -> None:
        """Dead-letter the labels that waited longer than ``label_wait_s`` for a listing."""
        wait_s = self.ctx.settings.label_wait_s
        limit = time.monotonic() - wait_s
        expired = []
        for item_id in [i for i, ws in self.waiting.items() if ws[0].since < limit]:
            expired += [w for w in self.waiting[item_id] if w.since < limit]
            kept = [w for w in self.waiting[item_id] if w.since >= limit]
            if kept:
                self.waiting[item_id] = kept
            else:
                del self.waiting[item_id]
        self._count_waiting()
        for w in expired:
            detail = f"no listing for item {w.label.item_ids[0][:80]!r} within {wait_s}s"
            await self.ctx.dead_letter(w.event.message, "item_not_found", detail)
            await self._ack(w.event)

    def forget_waiting(self) -> None:
        """On a rebalance: drop (without acking) what waits, so the new owner rereads it."""
        self.waiting.clear()
        self._count_waiting()

    async def _ack(self, event: EventT) -> None:
        if self.stream is not None:
            await self.stream.ack(event)

    def _count_waiting(self) -> None:
        self.ctx.metrics.labels_waiting.set(sum(len(w) for w in self.waiting.values()))


def register_label_path(ctx: WorkerContext, listings: ListingPath) -> LabelPath:
    """The labels agent (manual acks: a label is acked once applied or dead-lettered) and
    its timer."""
    app: Any = ctx.app
    path = LabelPath(ctx, listings)
    listings.on_items_stored.append(path.items_stored)

    @app.agent(ctx.topics["labels"], name="labels")
    async def labels_agent(stream: StreamT) -> None:
        manual = stream.noack()  # type: ignore[attr-defined]
        async for event in manual.events():
            await path.on_event(manual, event)

    @app.timer(interval=1.0)
    async def expire_waiting_labels() -> None:
        await path.expire_waiting()

    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        path.forget_waiting()

    app.on_partitions_revoked.connect(on_revoked)
    return path
