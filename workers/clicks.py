"""The click path and the recommendation API of a worker.

clicks (keyed by user_id)
  -> click agent: decode + validate (bad -> dead letters), batched reads; clicks are packed
     per item partition and sent to ``clicks-by-item`` (one message per partition per batch)
  -> join agent, in the item's partition: looks the item's base embedding up in the item
     table, updates the item's statistics (decayed popularity, repeat purchases), packs
     (user, embedding, action) per user partition and sends them to ``user-updates``;
     a click whose item is not known yet waits for its listing (the pack is not acked), up
     to ``click_wait_s``, then goes to the dead-letter topic with reason ``item_not_found``
  -> user agent, in the user's partition: folds each click into the user's prototypes
     (idempotent by event id) and writes each touched profile once per pack.

Packing is what makes the path fast: with one record per changelog write on the embedded
broker, per-message and per-write costs dominate, so every internal message carries a batch
and every table key is written once per pack. A pack's partition is computed with Kafka's
default partitioner (murmur2 of the key), the one producers use for the input topics, so a
pack lands where its items' (or users') state lives.

The API (``GET /recommendations/{platform}/{user_id}?k=10``) is routed by Faust to the worker
that owns the user's partition of the clicks topic, which holds the user's profile. Candidates
and their popularity come from two global tables every worker reads: ``catalog`` (every item's
embedding) and ``popularity`` (each partition's most popular items, published by their owner).
"""

from __future__ import annotations

import base64
import heapq
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from aiokafka.partitioner import murmur2
from faust.types import EventT, StreamT

from metaguide.errors import SchemaViolation
from metaguide.events import (
    check_key,
    check_platform,
    check_user_id,
    dead_letter_record,
    decode_click,
    decode_recommendation_request,
    encode_json,
    parse_k,
)
from metaguide.recommend import (
    Catalog,
    RecommendConfig,
    popularity_at,
    recommend,
    record_item_click,
)
from metaguide.users import UserProfile, user_key

if TYPE_CHECKING:
    from workers.app import Worker

__all__ = ["ClickPath", "key_partition"]

log = logging.getLogger("metaguide.clicks")

PACK_KEY = b"pack"
# rows of a clicks-by-item pack
EVENT_ID, PLATFORM, USER_ID, ITEM_ID, ACTION, TS, SRC_PARTITION, SRC_OFFSET, RAW = range(9)
# rows of a user-updates pack: the first six as above, then the item's fp16 embedding
EMB = 6
POPULAR_PER_PARTITION = 1000


def key_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (Java client and aiokafka): murmur2 of the key bytes."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class _PackAck:
    """A clicks-by-item message, acked once each of its clicks is joined or dead-lettered."""

    stream: StreamT
    event: EventT
    outstanding: int = 1


@dataclass
class _Waiting:
    row: list[Any]
    since: float
    pack: _PackAck


@dataclass
class _CachedCatalog:
    built: float
    clock: float
    catalog: Catalog


class RequestError(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


@dataclass
class ClickPath:
    worker: Worker
    config: RecommendConfig
    topics: dict[str, Any]
    item_stats: Any
    users: Any
    catalog: Any
    popularity: Any
    waiting: dict[str, list[_Waiting]] = field(default_factory=lambda: defaultdict(list))
    catalog_refresh_s: float = 1.0
    _stats_index: dict[int, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    _catalogs: dict[str, _CachedCatalog] = field(default_factory=dict)

    @property
    def partitions(self) -> int:
        return self.worker.settings.partitions

    # -- click agent -------------------------------------------------------------------------

    async def route_clicks(self, stream: StreamT, events: list[EventT]) -> None:
        """Validate a batch of clicks and send them, packed, to their items' partitions."""
        packs: dict[int, list[list[Any]]] = defaultdict(list)
        actions: Counter[str] = Counter()
        for event in events:
            message = event.message
            try:
                click = decode_click(message.value)
                check_key(message.key, click.user_id, "user_id")
            except SchemaViolation as exc:
                await self.worker.dead_letter(message, exc.reason, exc.detail)
                continue
            actions[click.action] += 1
            row = [
                click.event_id,
                click.platform,
                click.user_id,
                click.item_id,
                click.action,
                click.ts,
                message.partition,
                message.offset,
                message.value.decode("utf-8"),  # type: ignore[union-attr]  # None: rejected
            ]
            packs[key_partition(click.item_id.encode(), self.partitions)].append(row)
        for partition, rows in packs.items():
            await self.topics["clicks_by_item"].send(
                key=PACK_KEY, value=encode_json({"clicks": rows}), partition=partition
            )
        for action, n in actions.items():
            self.worker.metrics.clicks.labels(action).inc(n)
        self.worker.metrics.events_consumed.labels(self.topics["clicks"].get_topic_name()).inc(
            len(events)
        )
        for event in events:
            await stream.ack(event)

    # -- join agent --------------------------------------------------------------------------

    async def join_pack(self, stream: StreamT, event: EventT) -> None:
        """Join one pack of clicks with the embeddings of this partition's items."""
        pack = _PackAck(stream, event)
        ready: list[tuple[list[Any], dict[str, Any]]] = []
        now = time.monotonic()
        for row in json.loads(event.value)["clicks"]:
            item = self.worker.items.get(row[ITEM_ID].encode())
            if item is None:
                pack.outstanding += 1
                self.waiting[row[ITEM_ID]].append(_Waiting(row, now, pack))
            elif item["platform"] != row[PLATFORM]:
                await self._dead_letter_click(
                    row,
                    "platform_mismatch",
                    f"item {row[ITEM_ID][:80]!r} is listed on {item['platform']!r}, "
                    f"the click is on {row[PLATFORM]!r}",
                )
            else:
                ready.append((row, item))
        await self._apply_joined(ready, event.message.partition)
        self.worker.metrics.joins_waiting.set(sum(len(w) for w in self.waiting.values()))
        await self._done(pack)

    async def release(self, item_id: str, item: dict[str, Any], partition: int) -> None:
        """The listing of ``item_id`` is stored: join the clicks that waited for it."""
        waiting = self.waiting.pop(item_id, None)
        if not waiting:
            return
        ready = []
        for w in waiting:
            if item["platform"] == w.row[PLATFORM]:
                ready.append((w.row, item))
            else:
                await self._dead_letter_click(
                    w.row, "platform_mismatch", f"item is listed on {item['platform']!r}"
                )
        await self._apply_joined(ready, partition)
        for w in waiting:
            await self._done(w.pack)
        self.worker.metrics.joins_waiting.set(sum(len(w) for w in self.waiting.values()))

    async def expire_waiting(self) -> None:
        """Dead-letter the clicks that waited longer than ``click_wait_s`` for their listing."""
        limit = time.monotonic() - self.worker.settings.click_wait_s
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
                    f"no listing for item {item_id[:80]!r} within "
                    f"{self.worker.settings.click_wait_s}s of the click",
                )
                await self._done(w.pack)
        self.worker.metrics.joins_waiting.set(sum(len(w) for w in self.waiting.values()))

    def forget_waiting(self) -> None:
        """On a rebalance: drop (without acking) what waits, so the new owner rereads it."""
        self.waiting.clear()
        self._stats_index.clear()
        self.worker.metrics.joins_waiting.set(0)

    async def _apply_joined(
        self, ready: list[tuple[list[Any], dict[str, Any]]], partition: int
    ) -> None:
        if not ready:
            return
        updated: dict[str, dict[str, Any]] = {}
        platform_of: dict[str, str] = {}
        updates: dict[int, list[list[Any]]] = defaultdict(list)
        for row, item in ready:
            item_id = row[ITEM_ID]
            previous = updated.get(item_id) or self.item_stats.get(item_id.encode())
            updated[item_id] = _item_click(previous, row, self.config)
            platform_of[item_id] = row[PLATFORM]
            user_partition = key_partition(row[USER_ID].encode(), self.partitions)
            updates[user_partition].append([*row[:6], item["emb"]])
        index = self._partition_index(partition)
        for item_id, state in updated.items():
            self.item_stats[item_id.encode()] = state
            index.setdefault(platform_of[item_id], {})[item_id] = state
        for platform in set(platform_of.values()):
            self._publish_popularity(platform, partition, index[platform])
        for user_partition, rows in updates.items():
            await self.topics["user_updates"].send(
                key=PACK_KEY, value=encode_json({"updates": rows}), partition=user_partition
            )
        self.worker.metrics.clicks_joined.inc(len(ready))

    def _partition_index(self, partition: int) -> dict[str, dict[str, dict[str, Any]]]:
        """This partition's item statistics by platform (rebuilt from the table after a start
        or a rebalance, then kept up to date by the writes)."""
        index = self._stats_index.get(partition)
        if index is None:
            index = {}
            for key, state in list(self.item_stats.items()):
                if key_partition(key, self.partitions) == partition:
                    platform = self._platform_of(key)
                    if platform is not None:
                        index.setdefault(platform, {})[key.decode()] = state
            self._stats_index[partition] = index
        return index

    def _platform_of(self, item_key: bytes) -> str | None:
        item = self.worker.items.get(item_key)
        return None if item is None else str(item["platform"])

    def _publish_popularity(
        self, platform: str, partition: int, stats: dict[str, dict[str, Any]]
    ) -> None:
        """The partition's most popular items, for every worker's candidate set."""
        clock = max(float(s["t"]) for s in stats.values())
        half_life = self.config.popularity_half_life_s
        top = heapq.nlargest(
            POPULAR_PER_PARTITION,
            stats.items(),
            key=lambda kv: popularity_at(kv[1], clock, half_life),
        )
        summary = {
            "platform": platform,
            "clock": clock,
            "items": {i: [popularity_at(s, clock, half_life), s["n"], s["r"]] for i, s in top},
        }
        self.popularity[f"{platform}\x1f{partition}".encode()] = summary

    async def _done(self, pack: _PackAck) -> None:
        pack.outstanding -= 1
        if pack.outstanding == 0:
            await pack.stream.ack(pack.event)

    async def _dead_letter_click(self, row: list[Any], reason: str, detail: str) -> None:
        topic = self.topics["clicks"].get_topic_name()
        record = dead_letter_record(
            source_topic=topic,
            partition=row[SRC_PARTITION],
            offset=row[SRC_OFFSET],
            key=row[USER_ID].encode(),
            value=row[RAW].encode(),
            reason=reason,
            detail=detail,
        )
        self.worker.metrics.dead_letter(topic, reason)
        log.warning(
            "dead letter from %s[%s]@%s: %s", topic, row[SRC_PARTITION], row[SRC_OFFSET], detail
        )
        await self.topics["dead_letters"].send(key=topic.encode(), value=encode_json(record))

    # -- user agent --------------------------------------------------------------------------

    def apply_user_pack(self, raw: bytes) -> tuple[int, int]:
        """Fold a pack of joined clicks into the users' profiles; (applied, duplicates)."""
        by_user: dict[bytes, list[list[Any]]] = defaultdict(list)
        for row in json.loads(raw)["updates"]:
            by_user[user_key(row[PLATFORM], row[USER_ID]).encode()].append(row)
        applied = duplicates = 0
        profile_config = self.config.profile
        for key, rows in by_user.items():
            profile = UserProfile.from_state(self.users.get(key))
            changed = False
            for row in rows:
                vector = np.frombuffer(base64.b64decode(row[EMB]), dtype=np.float16).astype(
                    np.float32
                )
                if profile.apply(
                    vector,
                    action=row[ACTION],
                    ts=row[TS],
                    event_id=row[EVENT_ID],
                    item_id=row[ITEM_ID],
                    config=profile_config,
                ):
                    applied += 1
                    changed = True
                else:
                    duplicates += 1
            if changed:
                self.users[key] = profile.to_state()
        self.worker.metrics.user_updates.inc(applied)
        if duplicates:
            self.worker.metrics.duplicates_skipped.labels(
                self.topics["user_updates"].get_topic_name()
            ).inc(duplicates)
        return applied, duplicates

    # -- recommendations ---------------------------------------------------------------------

    def catalog_for(self, platform: str) -> _CachedCatalog | None:
        """The platform's candidates, rebuilt from the global tables at most once a second."""
        cached = self._catalogs.get(platform)
        if cached is not None and time.monotonic() - cached.built < self.catalog_refresh_s:
            return cached
        stats: dict[str, dict[str, Any]] = {}
        clock = 0.0
        for value in list(self.popularity.values()):
            if value["platform"] != platform:
                continue
            clock = max(clock, float(value["clock"]))
            for item_id, (pop, n, r) in value["items"].items():
                stats[item_id] = {"pop": pop, "t": value["clock"], "n": n, "r": r}
        rows = []
        for key, value in list(self.catalog.items()):
            if value["platform"] == platform:
                emb = np.frombuffer(base64.b64decode(value["emb"]), dtype=np.float16).astype(
                    np.float32
                )
                rows.append((key.decode(), emb, float(value["ts"])))
                clock = max(clock, float(value["ts"]))
        if not rows:
            return None
        catalog = Catalog.build(rows, stats, now=clock, config=self.config)
        cached = _CachedCatalog(time.monotonic(), clock, catalog)
        self._catalogs[platform] = cached
        return cached

    def recommend_for(self, platform: str, user_id: str, k: int) -> dict[str, Any]:
        """A user's top-k as a ``recommendation.v1`` record (served where the user lives)."""
        cached = self.catalog_for(platform)
        if cached is None:
            raise RequestError(404, "unknown_platform", f"no items are listed on {platform!r}")
        profile = UserProfile.from_state(self.users.get(user_key(platform, user_id).encode()))
        now = max(cached.clock, profile.last_ts)
        top = recommend(profile, cached.catalog, k, now=now, config=self.config)
        clicks = profile.clicks
        weight = min(clicks / (clicks + self.config.blend_clicks), self.config.max_user_weight)
        return {
            "schema": "recommendation.v1",
            "platform": platform,
            "user_id": user_id,
            "items": [{"item_id": i, "score": round(s, 6)} for i, s in top],
            "model_version": self.worker.model_version,
            "clicks": clicks,
            "user_weight": round(weight, 4),
            "served_by": str(self.worker.app.conf.canonical_url).rstrip("/"),
            "ts": time.time(),
        }

    def http_recommendations(
        self, platform: str, user_id: str, k_raw: str
    ) -> tuple[int, dict[str, Any]]:
        """(status, body) for the HTTP view: 400 for bad input, 404 for an unknown platform."""
        started = time.perf_counter()
        try:
            try:
                check_platform(platform)
                check_user_id(user_id)
                k = parse_k(k_raw, self.worker.settings.recommend_max_k)
            except SchemaViolation as exc:
                raise RequestError(400, exc.reason, exc.detail) from None
            body = self.recommend_for(platform, user_id, k)
        except RequestError as exc:
            self.worker.metrics.recommendation_requests.labels("http", exc.reason).inc()
            return exc.status, {"error": exc.reason, "detail": exc.detail}
        self.worker.metrics.recommendation_requests.labels("http", "ok").inc()
        self.worker.metrics.recommendation_seconds.labels("http").observe(
            time.perf_counter() - started
        )
        return 200, body

    async def answer_request(self, event: EventT) -> None:
        """A request from the recommendation-requests topic, answered on ``recommendations``."""
        message = event.message
        started = time.perf_counter()
        try:
            request = decode_recommendation_request(
                message.value, self.worker.settings.recommend_max_k
            )
            check_key(message.key, request.user_id, "user_id")
        except SchemaViolation as exc:
            self.worker.metrics.recommendation_requests.labels("topic", exc.reason).inc()
            await self.worker.dead_letter(message, exc.reason, exc.detail)
            return
        try:
            body = self.recommend_for(request.platform, request.user_id, request.k)
        except RequestError as exc:
            self.worker.metrics.recommendation_requests.labels("topic", exc.reason).inc()
            await self.worker.dead_letter(message, exc.reason, exc.detail)
            return
        body["request_id"] = request.request_id
        await self.topics["recommendations"].send(
            key=request.user_id.encode(), value=encode_json(body)
        )
        self.worker.metrics.recommendation_requests.labels("topic", "ok").inc()
        self.worker.metrics.recommendation_seconds.labels("topic").observe(
            time.perf_counter() - started
        )


def _item_click(previous: Any, row: list[Any], config: RecommendConfig) -> dict[str, Any]:
    return record_item_click(
        previous, user_id=row[USER_ID], action=row[ACTION], ts=row[TS], config=config
    )


def recommend_config(settings: Any) -> RecommendConfig:
    return replace(RecommendConfig(), repeat_min_ratio=settings.repeat_min_ratio)


def register_click_path(worker: Worker, raw_topic: Callable[..., Any]) -> ClickPath:
    """Topics, tables, agents, timer and web view of the click path, on the worker's app."""
    app = worker.app
    settings = worker.settings
    topics = worker.topics
    topics.update(
        clicks=raw_topic("clicks"),
        clicks_by_item=raw_topic("clicks-by-item", internal=True),
        user_updates=raw_topic("user-updates", internal=True),
        recommendation_requests=raw_topic("recommendation-requests"),
        recommendations=raw_topic("recommendations"),
    )

    def table(name: str, help: str) -> Any:
        return app.Table(
            name, key_type=bytes, value_type=None, partitions=settings.partitions, help=help
        )

    def global_table(name: str, help: str) -> Any:
        return app.GlobalTable(
            name,
            key_type=bytes,
            value_type=None,
            partitions=settings.partitions,
            recovery_buffer_size=1,
            help=help,
        )

    path = ClickPath(
        worker=worker,
        config=recommend_config(settings),
        topics=topics,
        item_stats=table("item-stats", "item_id -> decayed popularity, purchases, repeats"),
        users=table("users", "platform/user_id -> preference prototypes, recent ids, bought"),
        catalog=global_table("catalog", "item_id -> platform, base embedding (fp16), listed ts"),
        popularity=global_table("popularity", "platform/partition -> most popular items"),
    )

    @app.agent(topics["clicks"], name="clicks")
    async def clicks_agent(stream: StreamT) -> None:
        async for events in stream.noack_take(  # type: ignore[attr-defined]
            settings.click_batch_size, within=settings.click_batch_latency_s
        ):
            await path.route_clicks(stream, events)

    @app.agent(topics["clicks_by_item"], name="click-join")
    async def join_agent(stream: StreamT) -> None:
        manual = stream.noack()  # type: ignore[attr-defined]
        async for event in manual.events():
            try:
                await path.join_pack(manual, event)
            except Exception as exc:
                log.exception("click pack failed")
                await worker.dead_letter(event.message, "processing_error", repr(exc))
                await manual.ack(event)

    @app.agent(topics["user_updates"], name="user-profiles")
    async def users_agent(stream: StreamT) -> None:
        async for event in stream.events():
            try:
                path.apply_user_pack(event.value)
            except Exception as exc:
                log.exception("user pack failed")
                await worker.dead_letter(event.message, "processing_error", repr(exc))

    @app.agent(topics["recommendation_requests"], name="recommendation-requests")
    async def requests_agent(stream: StreamT) -> None:
        async for event in stream.events():
            await path.answer_request(event)

    @app.timer(interval=1.0)
    async def expire_waiting_clicks() -> None:
        await path.expire_waiting()
        worker.metrics.users.set(len(path.users))

    app.on_partitions_revoked.connect(_forget(path))

    @app.page("/recommendations/{platform}/{user_id}")
    @app.topic_route(topic=topics["clicks"], match_info="user_id")
    async def recommendations(view: Any, request: Any, platform: str, user_id: str) -> Any:
        status, body = path.http_recommendations(platform, user_id, request.query.get("k", "10"))
        return view.json(body, status=status)

    return path


def _forget(path: ClickPath) -> Callable[..., Any]:
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        path.forget_waiting()

    return on_revoked
