"""The join agent: clicks meet their item's embedding in the item's partition.

A pack from the router is joined with the ``items`` table, each item's decayed popularity is
bumped (one summary per item partition), and the joined clicks go on to their users'
partitions of ``user-updates`` (one pack per user partition). A click whose item is not
listed yet waits (its pack unacked) until the listing arrives or ``click_wait_s`` passes,
then is dead-lettered as ``item_not_found``.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from faust.types import EventT, StreamT

from metaguide.contracts.codec import encode_json
from metaguide.contracts.internal import (
    PACK_KEY,
    Item,
    RoutedClick,
    chunks,
    decode_click_pack,
    encode_user_update_pack,
)
from metaguide.contracts.records import dead_letter_record
from metaguide.kafka.partitioner import key_partition
from metaguide.recommend.scoring import RecommendConfig, bump_popularity, popularity_at
from workers.clicks.summaries import SUMMARY_MAX_ITEMS, Summaries
from workers.context import WorkerContext

__all__ = ["ClickJoin"]

log = logging.getLogger("metaguide.clicks")

Joined = dict[int, list[tuple[RoutedClick, Item]]]  # by item partition


@dataclass
class _PackAck:
    """A clicks-by-item message, acked once each of its clicks is joined or dead-lettered."""

    stream: StreamT
    event: EventT
    outstanding: int = 1


@dataclass
class _Waiting:
    row: RoutedClick
    since: float
    pack: _PackAck


class ClickJoin:
    """Joins click packs with the items table of this worker's item partitions."""

    def __init__(
        self, ctx: WorkerContext, items: Any, summaries: Summaries, config: RecommendConfig
    ) -> None:
        self.ctx = ctx
        self.items = items
        self.summaries = summaries
        self.config = config
        self.waiting: dict[str, list[_Waiting]] = defaultdict(list)

    async def join_packs(self, stream: StreamT, events: list[EventT]) -> None:
        """Join a batch of packs (from any of this worker's item partitions) with the
        embeddings of their items. A pack is acked once each of its clicks is done."""
        packs = [_PackAck(stream, event) for event in events]
        items = self.items.data  # the table's store: a dict, read without Faust's sensors
        ready: Joined = defaultdict(list)
        now = time.monotonic()
        for pack in packs:
            message = pack.event.message
            try:
                rows = decode_click_pack(message.value)
            except (ValueError, KeyError, TypeError) as exc:
                await self.ctx.dead_letter(message, "bad_pack", repr(exc))
                continue
            for row in rows:
                raw = items.get(row.item_id.encode())
                if raw is None:
                    pack.outstanding += 1
                    self.waiting[row.item_id].append(_Waiting(row, now, pack))
                    continue
                item = Item.decode(raw)
                if item.platform != row.platform:
                    await self._dead_letter_click(
                        row,
                        "platform_mismatch",
                        f"item {row.item_id[:80]!r} is listed on {item.platform!r}, "
                        f"the click is on {row.platform!r}",
                    )
                else:
                    ready[message.partition].append((row, item))
        await self._apply_joined(ready)
        self._count_waiting()
        for pack in packs:
            await self._done(pack)

    async def release(self, item_id: str, item: Item, partition: int) -> None:
        """The listing of ``item_id`` is stored: join the clicks that waited for it."""
        waiting = self.waiting.pop(item_id, None)
        if not waiting:
            return
        ready = []
        for w in waiting:
            if item.platform == w.row.platform:
                ready.append((w.row, item))
            else:
                await self._dead_letter_click(
                    w.row, "platform_mismatch", f"item is listed on {item.platform!r}"
                )
        await self._apply_joined({partition: ready})
        for w in waiting:
            await self._done(w.pack)
        self._count_waiting()

    async def expire_waiting(self) -> None:
        """Dead-letter the clicks that waited longer than ``click_wait_s`` for their listing."""
        wait_s = self.ctx.settings.click_wait_s
        limit = time.monotonic() - wait_s
        for item_id in [i for i, ws in self.waiting.items() if ws[0].since < limit]:
            expired = [w for w in self.waiting[item_id] if w.since < limit]
            kept = [w for w in self.waiting[item_id] if w.since >= limit]
            if kept:
                self.waiting[item_id] = kept
            else:
                del self.waiting[item_id]
            for w in expired:
                await self._dead_letter_click(
                    w.row,
                    "item_not_found",
                    f"no listing for item {item_id[:80]!r} within {wait_s}s of the click",
                )
                await self._done(w.pack)
        self._count_waiting()

    def forget_waiting(self) -> None:
        """On a rebalance: drop (without acking) what waits, so the new owner rereads it."""
        self.waiting.clear()
        self._count_waiting()

    def _count_waiting(self) -> None:
        self.ctx.metrics.joins_waiting.set(sum(len(w) for w in self.waiting.values()))

    async def _apply_joined(self, ready: Joined) -> None:
        """Popularity of the joined items (one summary per item partition), then the joined
        clicks to their users' partitions (one pack per user partition)."""
        updates: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
        embeddings: dict[str, str] = {}
        weights = self.config.profile.action_weights
        half_life = self.config.popularity_half_life_s
        partitions = self.ctx.settings.partitions
        joined = 0
        for partition, pairs in ready.items():
            popularity = self.summaries.of_partition("pop", partition)
            touched: set[str] = set()
            for row, item in pairs:
                items = popularity.setdefault(row.platform, {})
                items[row.item_id] = bump_popularity(
                    items.get(row.item_id), weights[row.action], row.ts, half_life
                )
                touched.add(row.platform)
                user_partition = key_partition(row.user_id.encode(), partitions)
                updates[user_partition].append(row.joined())
                if row.item_id not in embeddings:
                    embeddings[row.item_id] = item.emb_b64()
            for platform in touched:
                entries = popularity[platform]
                clock = max(t for _, t in entries.values())
                now = {i: popularity_at(e, clock, half_life) for i, e in entries.items()}
                top = heapq.nlargest(SUMMARY_MAX_ITEMS, now.items(), key=lambda kv: kv[1])
                self.summaries.publish(
                    "pop", platform, partition, {"clock": clock, "items": dict(top)}
                )
            joined += len(pairs)
        topic = self.ctx.topic_name("user_updates")
        for user_partition, rows in updates.items():
            for chunk in chunks(rows):
                await self.ctx.produce(
                    topic, PACK_KEY, encode_user_update_pack(chunk, embeddings), user_partition
                )
        self.ctx.metrics.clicks_joined.inc(joined)

    async def _done(self, pack: _PackAck) -> None:
        pack.outstanding -= 1
        if pack.outstanding == 0:
            await pack.stream.ack(pack.event)

    async def _dead_letter_click(self, row: RoutedClick, reason: str, detail: str) -> None:
        topic = self.ctx.topic_name("clicks")
        record = dead_letter_record(
            source_topic=topic,
            partition=row.source_partition,
            offset=row.source_offset,
            key=row.user_id.encode(),
            value=row.raw.encode(),
            reason=reason,
            detail=detail,
        )
        self.ctx.metrics.dead_letter(topic, reason)
        log.warning(
            "dead letter from %s[%s]@%s: %s", topic, row.source_partition, row.source_offset, detail
        )
        await self.ctx.topics["dead_letters"].send(key=topic.encode(), value=encode_json(record))
