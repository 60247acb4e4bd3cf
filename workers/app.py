"""The Faust app: topics, tables and agents of one metaguide worker.

Listing path (``listings`` topic, keyed by item id):
  decode + validate (bad -> dead letters) -> micro-batched embedding -> item table
  -> labelled: ``category-updates`` (keyed by platform/category, so one owner writes each
     prototype) -> global prototype table, seen by every worker
  -> unlabelled: nearest prototypes -> ``classifications``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import faust
import numpy as np
from faust.types import EventT, StreamT
from threadpoolctl import ThreadpoolController

from metaguide.batching import MicroBatcher, TickBatcher
from metaguide.config import Settings
from metaguide.errors import SchemaViolation
from metaguide.events import (
    ListingEvent,
    check_key,
    classification_record,
    dead_letter_of,
    decode_json,
    decode_listing,
    encode_json,
    vector_from_b64,
    vector_to_b64,
)
from metaguide.metrics import Metrics
from metaguide.prototypes import CategoryPrototypes, prototype_key
from metaguide.snapshots import BASE_MODEL_VERSION, Snapshot
from workers.clicks import ClickPath, register_click_path
from workers.flow import EMBEDDED_FETCH_MAX_WAIT_MS, App, FetchPacer, set_fetch_wait
from workers.ops import readiness, register_ops
from workers.snapshots import register_snapshots

__all__ = ["Embedder", "Worker", "create_worker", "faust_settings"]

log = logging.getLogger("metaguide.worker")


class Embedder(Protocol):
    """What the worker needs of an encoder. One that also has ``token_count(text)`` gets
    its texts batched with others of about the same length (less padding)."""

    model_id: str
    dim: int
    streams: int  # calls that may run at once, each in its own thread

    def embed_many(self, texts: list[str]) -> np.ndarray: ...


EMBEDDED_PRODUCER_LINGER_S = 0.005
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
        "web_port": settings.web_port,
        "web_host": settings.web_host,
        "web_bind": settings.web_host,
        "canonical_url": (
            f"http://{settings.web_advertised_host or _public_host(settings.web_host)}"
            f":{settings.web_port}"
        ),
    }
    if settings.broker_profile == "embedded":
        # Short group timeouts: Tansu holds JoinGroup for about half the session timeout.
        # (Its wrong end offsets for batched produces are read past in workers/flow.py.)
        # Sends wait up to 5 ms for others to share their produce request: each request
        # costs this broker CPU that the model shares (a 3,000-listing backlog: 350-550
        # produce requests instead of 600-820, broker CPU 0.30-0.43 s instead of 0.57-0.77).
        conf.update(
            producer_linger=EMBEDDED_PRODUCER_LINGER_S,
            broker_commit_interval=0.5,
            stream_wait_empty=False,
            broker_session_timeout=3.0,
            broker_heartbeat_interval=0.5,
            broker_rebalance_timeout=3.0,
        )
    if settings.security_protocol != "PLAINTEXT":
        conf["broker_credentials"] = _credentials(settings)
    return conf


def _public_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _credentials(settings: Settings) -> Any:
    import ssl

    context = None
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = settings.sasl_mechanism.upper()
    if mechanism == "PLAIN":
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password.get(),
            ssl_context=context,
        )
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.get(),
        mechanism=mechanism,
        ssl_context=context,
    )


class StrKeys(MutableMapping[str, Any]):
    """A str-keyed view of a bytes-keyed Faust table (UTF-8)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __getitem__(self, key: str) -> Any:
        return self.table[key.encode()]

    def __setitem__(self, key: str, value: Any) -> None:
        self.table[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self.table[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in list(self.table.keys()))

    def __len__(self) -> int:
        return len(self.table)


@dataclass
class Worker:
    """One worker's app and the pieces its agents share."""

    settings: Settings
    app: faust.App
    encoder: Embedder
    batcher: MicroBatcher
    metrics: Metrics
    prototypes: CategoryPrototypes
    prototype_owner: CategoryPrototypes
    items: Any
    topics: dict[str, Any]
    clicks: ClickPath | None = None
    snapshot: Snapshot | None = None  # None: base embeddings, no adapter
    snapshots_caught_up: bool = False  # the snapshots topic read to its end once
    catalog_caught_up: bool = False  # the items changelog read to its end once
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._items_changelog = self.items.changelog_topic.get_topic_name()
        self._classifications = self.topics["classifications"].get_topic_name()
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
        return self.prototypes.nearest_many(platform, vectors, self.settings.top_k, transform)

    @property
    def model_version(self) -> str:
        snapshot = self.snapshot
        return BASE_MODEL_VERSION if snapshot is None else snapshot.version

    async def produce(
        self, topic: str, key: bytes, value: bytes, partition: int | None = None
    ) -> None:
        """Send one record to a topic (a name) straight through aiokafka's producer.

        Faust's ``Topic.send`` wraps each record in its own future, sensors and callbacks on
        the event loop, which the listing path paid once per classification. Delivery is as
        safe: before each commit Faust flushes this producer too (``Producer.flush``), so an
        input offset is committed only after the records sent for it were delivered.
        """
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        await producer.send(topic, value=value, key=key, partition=partition)

    async def write_item(self, key: bytes, item: dict[str, Any], partition: int) -> None:
        """Set an item in the items table and changelog it in ``partition``, the listing's.

        What Faust's ``table[key] = item`` does (the store, then the changelog record in
        the current event's partition, JSON as the table's codec writes it), with the
        record sent by :meth:`produce`: Faust's way queues it in a buffer of its own and
        sends it through ``Topic.send``, which cost the listing path twice as much event
        loop as the send itself.
        """
        self.items.data[key] = item
        await self.produce(self._items_changelog, key, encode_json(item), partition)

    def _listing_metrics(self, platform: str, topic: str) -> tuple[Any, Any]:
        """The classification counter of a platform and the latency histogram of a topic
        (their labelled children, looked up once: a lookup costs as much as the update)."""
        key = (platform, topic)
        children = self._metric_children.get(key)
        if children is None:
            children = (
                self.metrics.classifications.labels(platform),
                self.metrics.event_latency.labels(topic),
            )
            self._metric_children[key] = children
        return children

    async def dead_letter(self, message: Any, reason: str, detail: str) -> None:
        """Send an event that cannot be processed to the dead-letter topic, with its reason."""
        record = dead_letter_of(message, reason, detail)
        self.metrics.dead_letter(message.topic, reason)
        await self.topics["dead_letters"].send(
            key=message.topic.encode(), value=encode_json(record)
        )

    async def handle_listing(self, listing: ListingEvent, message: Any) -> None:
        """Embed one valid listing, store it, then learn from it or classify it."""
        try:
            vector = await self.batcher.embed_one(listing.text)
        except Exception as exc:  # the encoder failed for this batch: this event is not lost
            await self.dead_letter(message, "encoder_error", f"{type(exc).__name__}: {exc}")
            return
        # the items table is partitioned like the listings topic (same key, same partitions)
        item = {
            "platform": listing.platform,
            "category": listing.category,
            "emb": vector_to_b64(vector),
            "ts": listing.ts,
        }
        await self.write_item(listing.item_id.encode(), item, message.partition)
        if self.clicks is not None:
            # every worker's recommendation candidates, and the clicks that waited for it
            self.clicks.catalog[listing.item_id.encode()] = item
            await self.clicks.release(listing.item_id, item, message.partition)
        if listing.category is not None:
            key = prototype_key(listing.platform, listing.category)
            await self.topics["category_updates"].send(
                key=key.encode(),
                value=encode_json(
                    {
                        "event_id": listing.event_id,
                        "platform": listing.platform,
                        "category": listing.category,
                        "emb": vector_to_b64(vector, np.float32),
                    }
                ),
            )
            return
        snapshot = self.snapshot  # read once: this listing is classified by one snapshot
        version = BASE_MODEL_VERSION if snapshot is None else snapshot.version
        top_k = await self._classifier.submit((listing.platform, id(snapshot)), (vector, snapshot))
        record = classification_record(listing, top_k, version)
        await self.produce(self._classifications, listing.item_id.encode(), encode_json(record))
        emitted, latency = self._listing_metrics(listing.platform, message.topic)
        emitted.inc()
        latency.observe(max(0.0, time.time() - listing.ts))

    def apply_category_update(self, raw: bytes) -> None:
        """Fold one labelled embedding into its prototype (idempotent by event id)."""
        update = decode_json(raw)
        count = self.prototype_owner.update_one(
            update["platform"],
            update["category"],
            vector_from_b64(update["emb"], np.float32),
            event_id=update["event_id"],
        )
        if count is not None:
            key = prototype_key(update["platform"], update["category"])
            # publish the owner's state to the global replica that every worker reads
            self.prototypes.store[key] = self.prototype_owner.store[key]
            self.prototypes.invalidate()
        if count is None:
            self.metrics.duplicates_skipped.labels(
                self.topics["category_updates"].get_topic_name()
            ).inc()
        else:
            self.metrics.prototype_updates.inc()

    def is_ready(self) -> bool:
        """Partitions assigned, tables recovered, announced snapshot loaded (``/readyz``)."""
        return all(readiness(self).values())

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait (polling the condition) until :meth:`is_ready`, or raise TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.settings.app_id} not ready after {timeout_s}s")
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        """Start the app in this event loop (tests, demo) and wait until it is ready."""
        await self.app.start()
        await self.wait_ready()

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the app and the batcher.

        Bounded: against the embedded broker, aiokafka's final producer flush sometimes waits
        forever on a metadata update (seen in about one stop in three). Events whose outputs
        were not delivered were not committed either, so they are redelivered on restart.
        """
        try:
            await asyncio.wait_for(self.app.stop(), timeout_s)
        except TimeoutError:
            log.warning("worker %s did not stop within %ss", self.settings.app_id, timeout_s)
        await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.batcher.close()


@functools.cache
def _single_threaded_blas() -> None:
    """numpy's BLAS (OpenBLAS) on one thread, in this process, once.

    The event loop's numpy work is small (scoring a micro-batch, a profile update), but a
    (32 x 384) by (384 x 140) product is big enough for OpenBLAS to start a second thread,
    and its threads spin while they wait for work: measured, that thread took 2.1 of the
    3.7 CPU-seconds the two encoder calls had, and the listing path fell from 419-464 to
    284-334 listings/s. The cores belong to the encoder's calls (torch's own BLAS is apart).
    """
    ThreadpoolController().select(internal_api="openblas").limit(limits=1)


GC_YOUNG_THRESHOLD = 50_000  # net allocations between two young collections (Python: 700)


@functools.cache
def _tune_gc() -> None:
    """Move what is alive once the model is loaded (libraries, model: about 390,000
    objects) out of the cyclic garbage collector's sight, and collect the young generation
    less often; once per process.

    Otherwise every full collection walks them all (0.36 s each here), and the click and
    listing paths allocate enough to trigger them: two took 1.0 s of a 10 s click backlog.
    Collected first, so no garbage is frozen with them; refcounting still frees them.
    The click path allocates a few containers per click (decoded packs, rows), and with
    Python's threshold of 700 the collector ran 613 times in a 100,000-click backlog
    (``bench/clicks.py``, timed with ``gc.callbacks``): 1.22 s of its 13.1 s, a tenth of the
    event loop. With 50,000: 4 young collections, no older one, 0.26 s in all (about 65 ms
    a pause). Cyclic garbage lives longer; it is not what these paths make.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def create_worker(
    settings: Settings,
    *,
    encoder: Embedder | None = None,
    metrics: Metrics | None = None,
) -> Worker:
    """Build a worker: a fresh Faust app with its topics, tables and agents."""
    if encoder is None:
        from metaguide.encoder import TransformerEncoder

        encoder = TransformerEncoder(
            settings.model,
            device=settings.device,
            max_length=settings.max_length,
            streams=settings.encoder_streams,
        )
    metrics = metrics or Metrics()
    _single_threaded_blas()
    _tune_gc()
    app = App(
        settings.app_id,
        fetch_max_wait_ms=(
            EMBEDDED_FETCH_MAX_WAIT_MS if settings.broker_profile == "embedded" else None
        ),
        read_end_offsets=settings.broker_profile == "embedded",
        **faust_settings(settings),
    )

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

    topics = {
        "listings": raw_topic("listings"),
        "classifications": raw_topic("classifications"),
        "dead_letters": raw_topic("dead-letters"),
        "category_updates": raw_topic("category-updates", internal=True),
        # compacted, one partition: every worker reads all of it (workers/snapshots.py)
        "snapshots": app.topic(
            settings.topic("snapshots"),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=1,
            compacting=True,
            internal=True,
        ),
    }
    # bytes keys use the raw serializer, the same as the topics: the partitioner then hashes
    # the same bytes for a table key and for the message key (str keys would be JSON-encoded)
    items = app.Table(
        "items",
        key_type=bytes,
        value_type=None,
        partitions=settings.partitions,
        help="item_id -> base embedding (fp16, base64), platform, category",
    )
    # The running sums are read-modify-written by the one worker that owns the category's
    # partition of category-updates. A GlobalTable cannot be that table: each worker also
    # consumes its own global changelog, and an echo of an older write would overwrite the
    # local value between two updates (lost updates, seen: 459 of 550). So the owner keeps
    # the sums in a partitioned table and copies each new state into the global replica.
    owner_table = app.Table(
        "category-sums",
        key_type=bytes,
        value_type=None,
        partitions=settings.partitions,
        help="platform/category -> running sum, count, recent event ids (owner's copy)",
    )
    proto_table = app.GlobalTable(
        "category-prototypes",
        key_type=bytes,
        value_type=None,
        # written in the category-updates agent, so partitioned like that topic; applied one
        # record at a time (ENVIRONMENT.md: with the default buffer of 1000, standbys lag far
        # behind). Not use_partitioner: it needs producer metadata that aiokafka drops.
        partitions=settings.partitions,
        recovery_buffer_size=1,
        help="platform/category -> running sum and count of base embeddings",
    )
    batcher = MicroBatcher(
        encoder.embed_many,
        max_batch_size=settings.max_batch_size,
        max_latency_s=settings.max_latency_s,
        on_batch=metrics.on_batch,
        concurrency=encoder.streams,
        length=getattr(encoder, "token_count", None),
    )
    worker = Worker(
        settings=settings,
        app=app,
        encoder=encoder,
        batcher=batcher,
        metrics=metrics,
        prototypes=CategoryPrototypes(
            StrKeys(proto_table), temperature=settings.temperature, refresh_interval_s=0.2
        ),
        prototype_owner=CategoryPrototypes(StrKeys(owner_table), temperature=settings.temperature),
        items=items,
        topics=topics,
    )
    worker.clicks = register_click_path(worker, raw_topic)
    register_snapshots(worker, topics["snapshots"])
    register_ops(worker)
    if settings.broker_profile == "embedded":
        _pace_fetches(worker)
    listings_name = settings.topic("listings")
    consumed = worker.metrics.events_consumed.labels(listings_name)
    in_flight = asyncio.Semaphore(settings.max_in_flight)
    # Listings are processed side by side and their batches may finish in any order (two
    # model calls at once, batches grouped by length), so a listing waits for the one of
    # the same item before it: the table and the classifications keep the topic's order.
    latest: dict[bytes, asyncio.Task[None]] = {}

    def _finished(key: bytes, task: asyncio.Task[None]) -> None:
        worker._tasks.discard(task)
        in_flight.release()
        if latest.get(key) is task:
            del latest[key]

    @app.agent(topics["listings"], name="listings")
    async def listings_agent(stream: StreamT) -> None:
        manual = stream.noack()  # type: ignore[attr-defined]
        async for event in manual.events():
            consumed.inc()
            await in_flight.acquire()
            key = event.message.key
            task = asyncio.ensure_future(
                _process_listing(worker, manual, event, after=latest.get(key))
            )
            latest[key] = task
            worker._tasks.add(task)
            task.add_done_callback(functools.partial(_finished, key))

    @app.agent(topics["category_updates"], name="category-updates")
    async def category_updates_agent(stream: StreamT) -> None:
        async for event in stream.events():
            try:
                worker.apply_category_update(event.value)
            except Exception as exc:
                await worker.dead_letter(event.message, "bad_category_update", repr(exc))

    @app.task
    async def track_topic_metadata() -> None:
        # aiokafka's producer fetches metadata for all topics until it is first asked about one
        # (a plain send), then only for the topics it was asked about. Faust's table writes
        # pick their partition without asking, so the changelog topics drop out of the
        # metadata and their pending batches wait forever (seen: a stop hung on the final
        # flush). Tracking every topic the worker writes keeps them in.
        client = app.producer._ensure_producer().client  # type: ignore[attr-defined]
        names = [t.get_topic_name() for t in topics.values()]
        names += [table.changelog_topic.get_topic_name() for table in app.tables.values()]
        for name in names:
            await client.add_topic(name)

    @app.timer(interval=2.0)
    async def refresh_gauges() -> None:
        worker.metrics.prototypes.set(len(proto_table))
        worker.metrics.items.set(len(items))

    return worker


def _pace_fetches(worker: Worker) -> None:
    """The embedded broker's fetch wait by load (workers/flow.py, 8): Faust's consumer and
    the click router wait longer while the encoder is saturated."""
    app = worker.app
    clicks = worker.clicks

    def set_router_wait(wait_ms: int) -> None:
        if clicks is not None and clicks.router is not None:
            clicks.router.set_fetch_wait(wait_ms)

    pacer = FetchPacer(
        lambda: worker.batcher.saturated,
        [
            lambda ms: set_fetch_wait(app.consumer._thread._consumer, ms),  # type: ignore[attr-defined]
            set_router_wait,
        ],
    )

    @app.timer(interval=FETCH_PACE_INTERVAL_S)
    async def pace_fetches() -> None:
        pacer.tick()


async def _process_listing(
    worker: Worker, stream: StreamT, event: EventT, after: asyncio.Task[None] | None = None
) -> None:
    """Decode, handle and ack one listing, once ``after`` (the one of the same item before
    it) is done; every failure ends on the dead-letter topic."""
    if after is not None:
        await asyncio.wait([after])
    message = event.message
    try:
        listing = decode_listing(message.value)
        check_key(message.key, listing.item_id, "item_id")
    except SchemaViolation as exc:
        await worker.dead_letter(message, exc.reason, exc.detail)
    else:
        try:
            await worker.handle_listing(listing, message)
        except asyncio.CancelledError:
            raise  # shutting down: not acked, so it is redelivered after the restart
        except Exception as exc:
            log.exception(
                "listing at %s[%s]@%s failed", message.topic, message.partition, message.offset
            )
            await worker.dead_letter(message, "processing_error", f"{type(exc).__name__}: {exc}")
    await stream.ack(event)
