"""A metaguide worker: one Faust app with the listing path, the click path, model snapshots
and operations, composed from ``workers/``.

``create_worker`` builds it (tests, the demo, benchmarks); ``workers/run.py`` runs it as a
process.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import faust

from metaguide.classify.prototypes import CategoryPrototypes
from metaguide.config import Settings
from metaguide.embedding.base import Embedder
from metaguide.embedding.batching import MicroBatcher
from metaguide.meta.snapshots import Snapshot
from metaguide.meta.trainer import claim_state_encoder
from metaguide.metrics import Metrics
from workers.candidates import register_candidates
from workers.clicks.path import ClickPath, register_click_path
from workers.context import WorkerContext
from workers.corrections.app import App
from workers.corrections.fetch_wait import EMBEDDED_FETCH_MAX_WAIT_MS, FetchPacer, set_fetch_wait
from workers.corrections.producer import track_topics
from workers.labels import LabelPath, register_label_path
from workers.listings import ListingPath, register_listing_path
from workers.ops import readiness, register_ops
from workers.snapshots import register_snapshots
from workers.tables import StrKeys, global_table, table

__all__ = ["Worker", "create_worker", "faust_settings"]

log = logging.getLogger("metaguide.worker")

PRODUCER_MAX_BATCH_BYTES = 512 * 1024
FETCH_PACE_INTERVAL_S = 0.1  # how often the embedded profile's fetch wait follows the load


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust App keyword arguments for the configured broker profile."""
    conf: dict[str, Any] = {
        "broker": settings.broker_url,
        "store": "memory://",
        "autodiscover": False,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": 1,
        "datadir": settings.state_dir,
        "processing_guarantee": "at_least_once",
        "consumer_auto_offset_reset": "earliest",
        # a listing batch's outputs to one partition go as one record batch
        "producer_max_batch_size": PRODUCER_MAX_BATCH_BYTES,
        "web_port": settings.web_port,
        "web_host": settings.web_host,
        "web_bind": settings.web_host,
        "canonical_url": (
            f"http://{settings.web_advertised_host or _public_host(settings.web_host)}"
            f":{settings.web_port}"
        ),
    }
    if settings.broker_profile == "embedded":
        embedded = settings.embedded
        conf.update(
            producer_linger=embedded.producer_linger_s,
            broker_commit_interval=embedded.commit_interval_s,
            stream_wait_empty=False,
            broker_session_timeout=embedded.session_timeout_s,
            broker_heartbeat_interval=embedded.heartbeat_interval_s,
            broker_rebalance_timeout=embedded.rebalance_timeout_s,
        )
    if settings.security_protocol != "PLAINTEXT":
        conf["broker_credentials"] = _credentials(settings)
    return conf


def _public_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _credentials(settings: Settings) -> Any:
    context = None
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    password = settings.sasl_password.get_secret_value()
    mechanism = settings.sasl_mechanism.upper()
    if mechanism == "PLAIN":
        return faust.SASLCredentials(
            username=settings.sasl_username, password=password, ssl_context=context
        )
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=password,
        mechanism=mechanism,
        ssl_context=context,
    )


@dataclass
class Worker:
    """One worker: its app, its paths and what they share."""

    ctx: WorkerContext
    encoder: Embedder
    batcher: MicroBatcher
    listings: ListingPath
    clicks: ClickPath
    labels: LabelPath

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """The listing batches in flight."""
        return self.listings.tasks

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def app(self) -> faust.App:
        return self.ctx.app

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    @property
    def prototypes(self) -> CategoryPrototypes:
        return self.listings.prototypes

    @property
    def items(self) -> Any:
        return self.listings.items

    @property
    def snapshot(self) -> Snapshot | None:
        return self.ctx.snapshot

    @property
    def model_version(self) -> str:
        return self.ctx.model_version

    def is_ready(self) -> bool:
        """Partitions assigned, tables recovered, announced snapshot loaded (``/readyz``)."""
        return all(readiness(self.ctx).values())

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait (polling the condition) until :meth:`is_ready`, or raise TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.settings.app_id} not ready after {timeout_s}s")
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        """Check the deployment's state is this encoder's, start the app in this event loop
        (tests, demo) and wait until it is ready."""
        await claim_state_encoder(self.settings, self.encoder.model_id, self.encoder.dim)
        await self.app.start()
        await self.wait_ready()

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the app and the batcher.

        Bounded: against the embedded broker aiokafka's final producer flush can wait forever
        on a metadata update. Events whose outputs were not delivered were not committed
        either, so they are redelivered on restart.
        """
        try:
            # write-behind profiles: written (and their clicks acked) before the producer goes
            await asyncio.wait_for(self.clicks.profiles.write_profiles(), timeout_s)
        except Exception as exc:  # not started, or the broker is gone: redelivered later
            log.info("profiles not written at stop: %r", exc)
        try:
            await asyncio.wait_for(self.app.stop(), timeout_s)
        except TimeoutError:
            log.warning("worker %s did not stop within %ss", self.settings.app_id, timeout_s)
        await self.close()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await self.batcher.close()


def create_worker(
    settings: Settings,
    *,
    encoder: Embedder | None = None,
    metrics: Metrics | None = None,
) -> Worker:
    """Build a worker: a fresh Faust app with its topics, tables and agents."""
    if encoder is None:
        encoder = settings.open_encoder(streams=settings.encoder_streams)
    embedded = settings.broker_profile == "embedded"
    app = App(
        settings.app_id,
        fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS if embedded else None,
        read_end_offsets=embedded,
        **faust_settings(settings),
    )
    ctx = WorkerContext(settings=settings, app=app, metrics=metrics or Metrics())

    def raw_topic(name: str, **kwargs: Any) -> Any:
        return app.topic(
            settings.topic(name),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            **kwargs,
        )

    ctx.topics.update(
        listings=raw_topic("listings"),
        labels=raw_topic("labels"),
        classifications=raw_topic("classifications"),
        review_requests=raw_topic("review-requests"),
        candidate_categories=raw_topic("candidate-categories"),
        novel_listings=raw_topic("novel-listings", internal=True),
        dead_letters=raw_topic("dead-letters"),
        category_updates=raw_topic("category-updates", internal=True),
        # compacted, one partition: every worker reads all of it (workers/snapshots.py)
        snapshots=app.topic(
            settings.topic("snapshots"),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=1,
            compacting=True,
            internal=True,
        ),
    )
    partitions = settings.partitions
    items = table(
        app,
        "items",
        partitions,
        "item_id -> the item, encoded (contracts.internal.Item): platform, label, fp16 embedding",
        value_type=bytes,
    )
    # The running sums are read-modify-written by the worker that owns the category's
    # partition of category-updates; a GlobalTable cannot be that table (each worker also
    # consumes its own global changelog), so the owner keeps them in a partitioned table and
    # publishes each new state to the replica every worker scores from.
    owner_table = table(
        app,
        "category-sums",
        partitions,
        "platform/category -> running sum, count, recent event ids (owner's copy)",
    )
    proto_table = global_table(
        app,
        "category-prototypes",
        partitions,
        "platform/category -> running sum and count of base embeddings",
    )
    batcher = MicroBatcher(
        encoder.embed_many,
        max_batch_size=settings.max_batch_size,
        max_latency_s=settings.max_latency_s,
        on_batch=ctx.metrics.on_batch,
        concurrency=encoder.streams,
        length=getattr(encoder, "token_count", None),
    )
    listings = ListingPath(
        ctx,
        batcher,
        items,
        prototypes=CategoryPrototypes(
            StrKeys(proto_table), temperature=settings.temperature, refresh_interval_s=0.2
        ),
        prototype_owner=CategoryPrototypes(StrKeys(owner_table), temperature=settings.temperature),
        replica=proto_table,
    )
    clicks = register_click_path(ctx, items, raw_topic)
    listings.on_items_stored.append(clicks.items_stored)
    register_listing_path(ctx, listings)
    labels = register_label_path(ctx, listings)
    register_candidates(ctx, listings.prototypes)
    worker = Worker(ctx, encoder, batcher, listings, clicks, labels)
    register_snapshots(ctx, encoder, ctx.topics["snapshots"])
    register_ops(ctx, clicks.router_lag)
    if embedded:
        _pace_fetches(worker)

    async def on_assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        # the review budget is spent by the workers together, each on its share of listings
        topic = ctx.topic_name("listings")
        held = sum(1 for tp in assigned if tp.topic == topic)
        listings.review_budget.share = held / partitions

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

    @app.task
    async def track_topic_metadata() -> None:
        names = [t.get_topic_name() for t in ctx.topics.values()]
        names += [table.changelog_topic.get_topic_name() for table in app.tables.values()]
        await track_topics(app, names)

    @app.timer(interval=2.0)
    async def refresh_gauges() -> None:
        ctx.metrics.prototypes.set(len(proto_table))
        ctx.metrics.items.set(len(items))

    return worker


def _pace_fetches(worker: Worker) -> None:
    """The embedded broker's fetch wait by load (workers/corrections/fetch_wait.py): Faust's
    consumer and the click router wait longer while the encoder is saturated."""
    app = worker.app
    clicks = worker.clicks

    def set_router_wait(wait_ms: int) -> None:
        if clicks.router is not None:
            clicks.router.set_fetch_wait(wait_ms)

    def set_faust_wait(wait_ms: int) -> None:
        set_fetch_wait(app.consumer._thread._consumer, wait_ms)  # type: ignore[attr-defined]

    pacer = FetchPacer(lambda: worker.batcher.saturated, [set_faust_wait, set_router_wait])
    metrics = worker.metrics
    metrics.fetch_wait.set(pacer.idle_ms / 1000)
    current = [pacer.idle_ms]

    @app.timer(interval=FETCH_PACE_INTERVAL_S)
    async def pace_fetches() -> None:
        wait_ms = pacer.tick()
        if wait_ms != current[0]:
            current[0] = wait_ms
            metrics.fetch_wait.set(wait_ms / 1000)
            if wait_ms == pacer.busy_ms:
                metrics.fetch_waits_lengthened.inc()
