"""The click path of a worker: its tables, agents, timers and web view.

clicks (keyed by user_id)
  -> router process (workers/clicks/router.py): validate, pack by item partition
  -> ``clicks-by-item`` -> join agent (workers/clicks/join.py), in the item's partition
  -> ``user-updates`` -> profile agent (workers/clicks/profiles.py), in the user's partition
  -> recommendations over HTTP or the ``recommendation-requests`` topic
     (workers/clicks/api.py), answered where the user's profile lives.

Every internal message carries a batch and every table key is written once per pack: Faust's
and aiokafka's per-message costs are larger than a click's own work.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import TopicPartition
from faust.types import EventT, StreamT

from metaguide.config import Settings
from metaguide.contracts.internal import Item
from metaguide.recommend.profiles import UserProfile
from metaguide.recommend.scoring import RecommendConfig
from workers.batches import EventBatches
from workers.catalog import follow_items
from workers.clicks.api import Recommender
from workers.clicks.join import ClickJoin
from workers.clicks.profiles import UserProfiles
from workers.clicks.router import RouterProcess
from workers.clicks.summaries import Summaries
from workers.context import WorkerContext
from workers.corrections.fetch_wait import EMBEDDED_FETCH_MAX_WAIT_MS
from workers.tables import global_table, table

__all__ = ["ClickPath", "recommend_config", "register_click_path"]

log = logging.getLogger("metaguide.clicks")


@dataclass
class ClickPath:
    """The click path's parts, as the rest of the worker (and its tests) see them."""

    ctx: WorkerContext
    join: ClickJoin
    profiles: UserProfiles
    api: Recommender
    catalog: dict[bytes, Any]  # item_id -> the items table's value, every partition's
    router: RouterProcess | None = None

    @property
    def waiting(self) -> dict[str, Any]:
        """Clicks waiting for their item's listing, by item id."""
        return self.join.waiting

    @property
    def summaries(self) -> Any:
        """The summaries table of this worker's partitions."""
        return self.join.summaries.owned

    def profile(self, key: bytes) -> UserProfile:
        return self.profiles.profile(key)

    async def items_stored(self, partition: int, stored: list[tuple[str, Item, bytes]]) -> None:
        """Listings were stored: recommendation candidates at once, and the clicks that
        waited for them are joined."""
        catalog, waiting = self.catalog, self.join.waiting
        for item_id, item, raw in stored:
            catalog[item_id.encode()] = raw
            if item_id in waiting:
                await self.join.release(item_id, item, partition)

    def router_report(self, report: dict[str, Any]) -> None:
        """Count what the router process says it delivered."""
        metrics = self.ctx.metrics
        topic = self.ctx.topic_name("clicks")
        metrics.events_consumed.labels(topic).inc(report["consumed"])
        for action, n in report["actions"].items():
            metrics.clicks.labels(action).inc(n)
        for reason, n in report["dead_letters"].items():
            metrics.dead_letter(topic, reason, n)

    def router_lag(self) -> dict[TopicPartition, int]:
        """The click router's lag by partition of the clicks topic, as it last reported it."""
        if self.router is None:
            return {}
        topic = self.ctx.topic_name("clicks")
        return {TopicPartition(topic, p): n for p, n in self.router.lag.items()}


def recommend_config(settings: Settings) -> RecommendConfig:
    return replace(RecommendConfig(), repeat_min_ratio=settings.repeat_min_ratio)


def router_process(ctx: WorkerContext, path: ClickPath) -> RouterProcess:
    """The click router of a worker: its process reads and sends as this worker's Faust
    consumer and producer do (the embedded broker's timeouts and fetch wait, the producer's
    acks and linger)."""
    settings = ctx.settings
    conf = ctx.app.conf
    consumer: dict[str, Any] = {}
    if settings.broker_profile == "embedded":
        consumer.update(
            session_timeout_ms=int(settings.embedded.session_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.embedded.heartbeat_interval_s * 1000),
            fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS,
        )
    producer = {
        "acks": conf.producer_acks if conf.producer_acks != -1 else "all",
        "linger_ms": int(conf.producer_linger * 1000),
        "max_request_size": conf.producer_max_request_size,
        "compression_type": conf.producer_compression_type,
    }
    return RouterProcess(
        settings, consumer, producer, path.router_report, ctx.metrics.router_restarts.inc
    )


def register_click_path(ctx: WorkerContext, items: Any, raw_topic: Callable[..., Any]) -> ClickPath:
    """Topics, tables, agents, timers and web view of the click path, on the worker's app."""
    app = ctx.app
    settings = ctx.settings
    topics = ctx.topics
    topics.update(
        clicks=raw_topic("clicks"),
        clicks_by_item=raw_topic("clicks-by-item", internal=True),
        user_updates=raw_topic("user-updates", internal=True),
        recommendation_requests=raw_topic("recommendation-requests"),
        recommendations=raw_topic("recommendations"),
    )

    partitions = settings.partitions
    about = "kind/platform/partition -> item popularity or purchases"
    summaries = Summaries(
        owned=table(app, "summaries", partitions, about),
        replica=global_table(app, "platform-summaries", partitions, about),
    )
    config = recommend_config(settings)
    users = table(
        app,
        "users",
        partitions,
        "platform/user_id -> preference prototypes, recent ids, bought",
        value_type=bytes,
    )
    profiles = UserProfiles(ctx, users, summaries, config)
    catalog: dict[bytes, Any] = {}
    path = ClickPath(
        ctx=ctx,
        join=ClickJoin(ctx, items, summaries, config),
        profiles=profiles,
        api=Recommender(ctx, profiles, catalog, summaries, config),
        catalog=catalog,
    )

    def batched(process: Callable[[StreamT, list[EventT]], Awaitable[Any]]) -> Any:
        """An agent body: per-event reads, processed in batches, acked by ``process``."""

        async def agent(stream: StreamT) -> None:
            manual = stream.noack()  # type: ignore[attr-defined]
            batches = EventBatches(
                lambda events: _guarded(ctx, manual, events, process),
                max_size=settings.click_batch_size,
                max_latency_s=settings.click_batch_latency_s,
            )
            async for event in manual.events():
                await batches.add(event)

        return agent

    @app.task
    async def follow_catalog() -> None:
        await follow_items(ctx, items, catalog)

    @app.task
    async def click_router() -> None:
        for name in ("clicks", "clicks_by_item", "dead_letters"):
            await topics[name].maybe_declare()  # before the router process sends or reads
        path.router = router_process(ctx, path)
        await path.router.run()

    app.agent(topics["clicks_by_item"], name="click-join")(batched(path.join.join_packs))
    app.agent(topics["user_updates"], name="user-profiles")(batched(profiles.apply_packs))

    @app.agent(topics["recommendation_requests"], name="recommendation-requests")
    async def requests_agent(stream: StreamT) -> None:
        async for event in stream.events():
            await path.api.answer_request(event)

    @app.timer(interval=settings.profile_write_interval_s)
    async def write_profiles() -> None:
        await profiles.write_profiles()

    @app.timer(interval=1.0)
    async def expire_waiting_clicks() -> None:
        await path.join.expire_waiting()
        ctx.metrics.users.set(len(users))

    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        # the profiles changed so far are written; their packs are not acked but read again
        # (by this worker or the partition's new owner), and recognised by their event ids
        await profiles.write_profiles(ack=False)
        path.join.forget_waiting()
        summaries.forget()

    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    # user-updates is partitioned like clicks (by user id) and the user's profile lives with
    # its partition: Faust routes a request to the worker that owns that partition
    @app.page("/recommendations/{platform}/{user_id}")
    @app.topic_route(topic=topics["user_updates"], match_info="user_id")
    async def recommendations(view: Any, request: Any, platform: str, user_id: str) -> Any:
        k = request.query.get("k", "10")
        status, body = path.api.http_recommendations(platform, user_id, k)
        return view.json(body, status=status)

    return path


async def _guarded(
    ctx: WorkerContext,
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
            await ctx.dead_letter(event.message, "processing_error", repr(exc))
            await stream.ack(event)
