"""The click path and the recommendation API of a worker.

clicks (keyed by user_id)
  -> click router (workers/router.py, stateless, in a process of its own: a plain aiokafka
     consumer and producer): decode + validate (bad -> dead letters), batched reads; clicks
     are packed per item partition and sent to ``clicks-by-item`` (one message per
     partition per batch)
  -> join agent, in the item's partition: looks the item's base embedding up in the item
     table, updates the items' decayed popularity, packs (user, embedding, action) per user
     partition and sends them to ``user-updates``;
     a click whose item is not known yet waits for its listing (the pack is not acked), up
     to ``click_wait_s``, then goes to the dead-letter topic with reason ``item_not_found``
  -> user agent, in the user's partition: folds each click into the user's prototypes
     (idempotent by event id) and counts purchases and repeat purchases per item; a changed
     profile is changelogged at most once per ``profile_write_interval_s`` (write-behind,
     as Kafka Streams' record cache does), and packs are acked after that write.

Packing is what makes the path fast: Faust's and aiokafka's per-message and per-write costs
dominate a click's own work, so every internal message carries a batch
and every table key is written once per pack. Item statistics are not one record per item
but one summary per (platform, partition), written once per pack: the most popular items of
an item partition, the purchase and repeat counts of a user partition. A pack's partition
is computed with Kafka's default partitioner (murmur2 of the key), the one producers use for
the input topics, so a pack lands where its items' (or users') state lives.

The API (``GET /recommendations/{platform}/{user_id}?k=10``) is routed by Faust to the worker
that owns the user's partition of ``user-updates``, which holds the user's profile. Candidates
and their statistics come from every worker's replica of the ``items`` changelog
(``catalog``, workers/catalog.py) and the global table ``platform-summaries`` (every
partition's summaries, published by its owner).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from aiokafka import TopicPartition
from faust.types import EventT, StreamT

from metaguide.errors import SchemaViolation
from metaguide.events import (
    check_key,
    check_platform,
    check_user_id,
    dead_letter_record,
    decode_json,
    decode_recommendation_request,
    encode_json,
    parse_k,
    vector_from_b64,
)
from metaguide.recommend import (
    Catalog,
    RecommendConfig,
    bump_popularity,
    popularity_at,
    recommend,
    user_weight,
)
from metaguide.snapshots import BASE_MODEL_VERSION
from metaguide.users import UserProfile, user_key
from workers.batches import EventBatches
from workers.catalog import follow_items
from workers.flow import EMBEDDED_FETCH_MAX_WAIT_MS
from workers.router import (
    ACTION,
    EVENT_ID,
    ITEM_ID,
    PACK_KEY,
    PLATFORM,
    RAW,
    SRC_OFFSET,
    SRC_PARTITION,
    TS,
    USER_ID,
    RouterProcess,
    chunks,
    key_partition,
)

if TYPE_CHECKING:
    from workers.app import Worker

__all__ = ["ClickPath", "key_partition"]

log = logging.getLogger("metaguide.clicks")

# rows of a user-updates pack: the first six of a clicks-by-item pack's (workers/router.py);
# the pack carries each item's fp16 embedding once, in "embs"
VECTOR_CACHE_SIZE = 10_000  # decoded item embeddings the user agent keeps: about 25 MB
SUMMARY_MAX_ITEMS = 5000  # per platform and partition: the most popular / most purchased


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
    users: Any
    catalog: dict[bytes, Any]
    summaries: Any  # partitioned: this worker's own partition summaries
    platform_summaries: Any  # global: every partition's summaries, for scoring
    waiting: dict[str, list[_Waiting]] = field(default_factory=lambda: defaultdict(list))
    catalog_refresh_s: float = 1.0
    router: RouterProcess | None = None

    # in memory, by partition then platform: item -> (popularity, as of) in item partitions,
    # item -> (purchases, repeats) in user partitions; rebuilt from ``summaries`` when needed
    _popularity: dict[int, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    _purchases: dict[int, dict[str, dict[str, tuple[int, int]]]] = field(default_factory=dict)
    _catalogs: dict[str, _CachedCatalog] = field(default_factory=dict)
    _vectors: dict[str, np.ndarray] = field(default_factory=dict)
    # profiles changed since the last write (key -> partition), purchase summaries to
    # publish with them, and the packs to ack after that write (workers: write_profiles)
    _dirty_profiles: dict[bytes, int] = field(default_factory=dict)
    _dirty_purchases: set[tuple[int, str]] = field(default_factory=set)
    _unwritten: list[tuple[StreamT, EventT]] = field(default_factory=list)
    _written_at: float = 0.0

    @property
    def partitions(self) -> int:
        return self.worker.settings.partitions

    # -- click router ------------------------------------------------------------------------

    def router_report(self, report: dict[str, Any]) -> None:
        """Count what the router process says it delivered (workers/router.py)."""
        metrics = self.worker.metrics
        topic = self.topics["clicks"].get_topic_name()
        metrics.events_consumed.labels(topic).inc(report["consumed"])
        for action, n in report["actions"].items():
            metrics.clicks.labels(action).inc(n)
        for reason, n in report["dead_letters"].items():
            metrics.dead_letter(topic, reason, n)

    def router_lag(self) -> dict[TopicPartition, int]:
        """The click router's lag by partition of the clicks topic, as it last reported it."""
        if self.router is None:
            return {}
        topic = self.topics["clicks"].get_topic_name()
        return {TopicPartition(topic, p): n for p, n in self.router.lag.items()}

    # -- join agent --------------------------------------------------------------------------

    async def join_packs(self, stream: StreamT, events: list[EventT]) -> None:
        """Join a batch of packs (from any of this worker's item partitions) with the
        embeddings of their items. A pack is acked once each of its clicks is done."""
        packs = [_PackAck(stream, event) for event in events]
        items = self.worker.items.data  # the table's store: a dict, read without Faust's sensors
        ready: dict[int, list[tuple[list[Any], dict[str, Any]]]] = defaultdict(list)
        now = time.monotonic()
        for pack in packs:
            message = pack.event.message
            try:
                rows = decode_json(message.value or b"")["clicks"]
            except (ValueError, KeyError, TypeError) as exc:
                await self.worker.dead_letter(message, "bad_pack", repr(exc))
                continue
            for row in rows:
                item = items.get(row[ITEM_ID].encode())
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
                    ready[message.partition].append((row, item))
        await self._apply_joined(ready)
        self.worker.metrics.joins_waiting.set(sum(len(w) for w in self.waiting.values()))
        for pack in packs:
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
        await self._apply_joined({partition: ready})
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
        self._popularity.clear()
        self._purchases.clear()
        self.worker.metrics.joins_waiting.set(0)

    async def _apply_joined(self, ready: dict[int, list[tuple[list[Any], dict[str, Any]]]]) -> None:
        """Popularity of the joined items (one summary per item partition), then the joined
        clicks to their users' partitions (one pack per user partition)."""
        updates: dict[int, list[list[Any]]] = defaultdict(list)
        embeddings: dict[str, str] = {}
        weights = self.config.profile.action_weights
        half_life = self.config.popularity_half_life_s
        partitions = self.partitions
        joined = 0
        for partition, pairs in ready.items():
            popularity = self._partition_summary("pop", partition, self._popularity)
            touched: set[str] = set()
            for row, item in pairs:
                platform = row[PLATFORM]
                items = popularity.setdefault(platform, {})
                items[row[ITEM_ID]] = bump_popularity(
                    items.get(row[ITEM_ID]), weights[row[ACTION]], row[TS], half_life
                )
                touched.add(platform)
                user_partition = key_partition(row[USER_ID].encode(), partitions)
                updates[user_partition].append(row[:6])
                embeddings[row[ITEM_ID]] = item["emb"]
            for platform in touched:
                entries = popularity[platform]
                clock = max(t for _, t in entries.values())
                now = {i: popularity_at(e, clock, half_life) for i, e in entries.items()}
                top = heapq.nlargest(SUMMARY_MAX_ITEMS, now.items(), key=lambda kv: kv[1])
                self._publish("pop", platform, partition, {"clock": clock, "items": dict(top)})
            joined += len(pairs)
        for user_partition, rows in updates.items():
            await self._send_packs(
                "user_updates",
                user_partition,
                (
                    {"updates": chunk, "embs": {r[ITEM_ID]: embeddings[r[ITEM_ID]] for r in chunk}}
                    for chunk in chunks(rows)
                ),
            )
        self.worker.metrics.clicks_joined.inc(joined)

    def _partition_summary(
        self, kind: str, partition: int, cache: dict[int, dict[str, dict[str, Any]]]
    ) -> dict[str, dict[str, Any]]:
        """One partition's in-memory summary by platform; after a start or a rebalance it is
        read back from the recovered ``summaries`` table, then kept up to date here."""
        summary = cache.get(partition)
        if summary is None:
            summary = {}
            for record in list(self.summaries.values()):
                if record["kind"] != kind or record["partition"] != partition:
                    continue
                if kind == "pop":
                    clock = record["clock"]
                    summary[record["platform"]] = {
                        i: (v, clock) for i, v in record["items"].items()
                    }
                else:
                    summary[record["platform"]] = {
                        i: (n, r) for i, (n, r) in record["items"].items()
                    }
            cache[partition] = summary
        return summary

    def _publish(self, kind: str, platform: str, partition: int, record: dict[str, Any]) -> None:
        """Write a partition summary to the owner's table and to the global replica.

        Changelogged in ``partition``, so the partition's next owner recovers it.
        """
        record |= {"kind": kind, "platform": platform, "partition": partition}
        key = f"{kind}\x1f{platform}\x1f{partition}".encode()
        write_in_partition(self.summaries, partition, key, record)
        write_in_partition(self.platform_summaries, partition, key, record)

    async def _send_packs(
        self, topic: str, partition: int, packs: Iterable[dict[str, Any]]
    ) -> None:
        """Packs to one partition of an internal topic, straight through aiokafka
        (:meth:`Worker.produce`: Faust flushes that producer before each commit)."""
        name = self.topics[topic].get_topic_name()
        for pack in packs:
            await self.worker.produce(name, PACK_KEY, encode_json(pack), partition)

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

    async def apply_user_packs(self, stream: StreamT, events: list[EventT]) -> tuple[int, int]:
        """Fold a batch of joined-click packs into the users' profiles; (applied, duplicates).

        Clicks apply at once (the API sees them); a changed profile is changelogged by
        :meth:`write_profiles` at most once per ``profile_write_interval_s``, and the batch is
        acked only after that write (at least once: a redelivered click is recognised by its
        event id in the written profile). Purchases and repeat purchases (an item already in
        the buyer's profile) are counted per item for the partition's summary, written with
        the profiles.
        """
        applied = duplicates = 0
        profile_config = self.config.profile
        for event in events:
            message = event.message
            partition = message.partition
            try:
                pack = decode_json(message.value or b"")
                rows, embs = pack["updates"], pack["embs"]
            except (ValueError, KeyError, TypeError) as exc:
                await self.worker.dead_letter(message, "bad_pack", repr(exc))
                continue
            purchases = self._partition_summary("rep", partition, self._purchases)
            for row in rows:
                key = user_key(row[PLATFORM], row[USER_ID]).encode()
                profile = self.profile(key)
                item_id = row[ITEM_ID]
                repeat = item_id in profile.bought
                if not profile.apply(
                    self._vector(embs[item_id]),
                    action=row[ACTION],
                    ts=row[TS],
                    event_id=row[EVENT_ID],
                    item_id=item_id,
                    config=profile_config,
                ):
                    duplicates += 1
                    continue
                applied += 1
                # (self._dirty_*, not locals: a timed write at an await above swaps them)
                if key not in self._dirty_profiles:
                    self._dirty_profiles[key] = partition
                    self.users.data[key] = profile  # new users: in the table from now on
                if row[ACTION] == "purchase":
                    counts = purchases.setdefault(row[PLATFORM], {})
                    n, r = counts.get(item_id, (0, 0))
                    counts[item_id] = (n + 1, r + int(repeat))
                    self._dirty_purchases.add((partition, row[PLATFORM]))
        self.worker.metrics.user_updates.inc(applied)
        if duplicates:
            self.worker.metrics.duplicates_skipped.labels(
                self.topics["user_updates"].get_topic_name()
            ).inc(duplicates)
        self._unwritten.extend((stream, event) for event in events)
        if time.monotonic() - self._written_at >= self.worker.settings.profile_write_interval_s:
            await self.write_profiles()
        return applied, duplicates

    async def write_profiles(self, *, ack: bool = True) -> None:
        """Changelog every profile changed since the last write (once each), then the
        purchase summaries, then ack the packs that changed them."""
        self._written_at = time.monotonic()
        if not (self._unwritten or self._dirty_profiles or self._dirty_purchases):
            return
        dirty, self._dirty_profiles = self._dirty_profiles, {}
        purchased, self._dirty_purchases = self._dirty_purchases, set()
        unwritten, self._unwritten = self._unwritten, []
        data = self.users.data
        for key, partition in dirty.items():
            profile = data.get(key)
            if isinstance(profile, UserProfile):  # not dropped by a rebalance meanwhile
                self.users.send_changelog(partition, key, encode_json(profile.to_state()))
        for partition, platform in purchased:
            counts = self._purchases.get(partition, {}).get(platform)
            if counts is not None:
                top = heapq.nlargest(SUMMARY_MAX_ITEMS, counts.items(), key=lambda kv: kv[1][0])
                self._publish("rep", platform, partition, {"items": {i: list(c) for i, c in top}})
        if ack:
            for stream, event in unwritten:
                await stream.ack(event)

    def profile(self, key: bytes) -> UserProfile:
        """A user's profile. The users table holds live profiles as objects (decoded once,
        not once per batch) and recovered ones as the JSON bytes of their changelog."""
        value = self.users.data.get(key)
        if isinstance(value, UserProfile):
            return value
        profile = UserProfile.from_state(decode_json(value) if value else None)
        if value:
            self.users.data[key] = profile  # the same state: nothing to changelog
        return profile

    def _vector(self, b64: str) -> np.ndarray:
        """An item embedding from its base64, decoded once while it is among the last
        ``VECTOR_CACHE_SIZE`` seen (keyed by the base64 itself: a changed embedding is a new
        key)."""
        vector = self._vectors.get(b64)
        if vector is None:
            vector = self._vectors[b64] = vector_from_b64(b64)
            if len(self._vectors) > VECTOR_CACHE_SIZE:
                del self._vectors[next(iter(self._vectors))]  # the oldest
        return vector

    # -- recommendations ---------------------------------------------------------------------

    def catalog_for(self, platform: str) -> _CachedCatalog | None:
        """The platform's candidates, rebuilt from the global tables at most once a second."""
        cached = self._catalogs.get(platform)
        if cached is not None and time.monotonic() - cached.built < self.catalog_refresh_s:
            return cached
        records = [r for r in list(self.platform_summaries.values()) if r["platform"] == platform]
        rows = []
        clock = 0.0
        for key, value in list(self.catalog.items()):
            if value["platform"] == platform:
                rows.append((key.decode(), vector_from_b64(value["emb"]), float(value["ts"])))
                clock = max(clock, float(value["ts"]))
        if not rows:
            return None
        clock = max([clock] + [r["clock"] for r in records if r["kind"] == "pop"])
        half_life = self.config.popularity_half_life_s
        popularity: dict[str, float] = defaultdict(float)
        purchases: dict[str, tuple[int, int]] = {}
        for record in records:
            if record["kind"] == "pop":
                for item_id, value in record["items"].items():
                    popularity[item_id] += popularity_at((value, record["clock"]), clock, half_life)
            else:
                for item_id, (n, r) in record["items"].items():
                    n0, r0 = purchases.get(item_id, (0, 0))
                    purchases[item_id] = (n0 + n, r0 + r)
        catalog = Catalog.build(rows, popularity, purchases, now=clock, config=self.config)
        cached = _CachedCatalog(time.monotonic(), clock, catalog)
        self._catalogs[platform] = cached
        return cached

    def recommend_for(self, platform: str, user_id: str, k: int) -> dict[str, Any]:
        """A user's top-k as a ``recommendation.v1`` record (served where the user lives)."""
        cached = self.catalog_for(platform)
        if cached is None:
            raise RequestError(404, "unknown_platform", f"no items are listed on {platform!r}")
        profile = self.profile(user_key(platform, user_id).encode())
        now = max(cached.clock, profile.last_ts)
        top = recommend(profile, cached.catalog, k, now=now, config=self.config)
        return {
            "schema": "recommendation.v1",
            "platform": platform,
            "user_id": user_id,
            "items": [{"item_id": i, "score": round(s, 6)} for i, s in top],
            # scored in base space: no snapshot's adapter takes part in recommendations yet
            "model_version": BASE_MODEL_VERSION,
            "clicks": profile.clicks,
            "user_weight": round(user_weight(profile.clicks, self.config), 4),
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


def write_in_partition(table: Any, partition: int, key: bytes, value: Any) -> None:
    """Set a table key and changelog it in ``partition``.

    A batch holds events of several partitions, so Faust's way (the partition of the event
    being processed) would be wrong for all but one; the partition is named instead.
    """
    table.data[key] = value
    table.send_changelog(partition, key, value)


def router_process(worker: Worker, path: ClickPath) -> RouterProcess:
    """The click router of a worker: its process reads and sends as this worker's Faust
    consumer and producer do (the embedded broker's timeouts and fetch wait, the producer's
    acks and linger)."""
    settings = worker.settings
    conf = worker.app.conf
    consumer: dict[str, Any] = {}
    if settings.broker_profile == "embedded":
        # Tansu holds a JoinGroup for about half the session timeout, and every fetch for
        # the whole fetch wait (workers/flow.py)
        consumer.update(
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS,
        )
    producer = {
        "acks": conf.producer_acks if conf.producer_acks != -1 else "all",
        "linger_ms": int(conf.producer_linger * 1000),
        "max_request_size": conf.producer_max_request_size,
        "compression_type": conf.producer_compression_type,
    }
    return RouterProcess(
        settings, consumer, producer, path.router_report, worker.metrics.router_restarts.inc
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

    def table(name: str, help: str, value_type: Any = None) -> Any:
        return app.Table(
            name, key_type=bytes, value_type=value_type, partitions=settings.partitions, help=help
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
        # in memory a UserProfile, on the changelog the JSON bytes of its state
        users=table(
            "users",
            "platform/user_id -> preference prototypes, recent ids, bought",
            value_type=bytes,
        ),
        catalog={},  # item_id -> the items table's value, every partition's (workers/catalog.py)
        summaries=table("summaries", "kind/platform/partition -> item popularity or purchases"),
        platform_summaries=global_table(
            "platform-summaries", "kind/platform/partition -> item popularity or purchases"
        ),
    )

    def batched(process: Callable[[StreamT, list[EventT]], Awaitable[Any]]) -> Any:
        """An agent body: per-event reads, processed in batches, acked by ``process``."""

        async def agent(stream: StreamT) -> None:
            manual = stream.noack()  # type: ignore[attr-defined]
            batches = EventBatches(
                lambda events: _guarded(worker, manual, events, process),
                max_size=settings.click_batch_size,
                max_latency_s=settings.click_batch_latency_s,
            )
            async for event in manual.events():
                await batches.add(event)

        return agent

    @app.task
    async def follow_catalog() -> None:
        await follow_items(worker, path.catalog)

    @app.task
    async def click_router() -> None:
        for name in ("clicks", "clicks_by_item", "dead_letters"):
            await topics[name].maybe_declare()  # before the router process sends or reads
        path.router = router_process(worker, path)
        await path.router.run()

    app.agent(topics["clicks_by_item"], name="click-join")(batched(path.join_packs))
    app.agent(topics["user_updates"], name="user-profiles")(batched(path.apply_user_packs))

    @app.agent(topics["recommendation_requests"], name="recommendation-requests")
    async def requests_agent(stream: StreamT) -> None:
        async for event in stream.events():
            await path.answer_request(event)

    @app.timer(interval=settings.profile_write_interval_s)
    async def write_profiles() -> None:
        await path.write_profiles()

    @app.timer(interval=1.0)
    async def expire_waiting_clicks() -> None:
        await path.expire_waiting()
        worker.metrics.users.set(len(path.users))

    app.on_partitions_revoked.connect(_forget(path))

    # user-updates is partitioned like clicks (by user id) and the user's profile lives with
    # its partition: Faust routes a request to the worker that owns that partition
    @app.page("/recommendations/{platform}/{user_id}")
    @app.topic_route(topic=topics["user_updates"], match_info="user_id")
    async def recommendations(view: Any, request: Any, platform: str, user_id: str) -> Any:
        status, body = path.http_recommendations(platform, user_id, request.query.get("k", "10"))
        return view.json(body, status=status)

    return path


async def _guarded(
    worker: Worker,
    stream: StreamT,
    events: list[EventT],
    process: Callable[[StreamT, list[EventT]], Awaitable[Any]],
) -> None:
    """Run a batch; if it fails as a whole, its events go to dead letters (not lost, and the
    agent lives on). A shutdown cancels it: nothing is acked, so it is all redelivered."""
    try:
        await process(stream, events)
    except Exception as exc:
        log.exception("a batch of %d events failed", len(events))
        for event in events:
            await worker.dead_letter(event.message, "processing_error", repr(exc))
            await stream.ack(event)


def _forget(path: ClickPath) -> Callable[..., Any]:
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        # the profiles changed so far are written; their packs are not acked but read again
        # (by this worker or the partition's new owner), and recognised by their event ids
        await path.write_profiles(ack=False)
        path.forget_waiting()

    return on_revoked
