"""Model snapshots on the worker: watch the ``snapshots`` topic, verify, load, swap.

Every worker reads the whole (compacted, one-partition) topic with its own group-less
consumer, so each of them sees every announcement. A snapshot is loaded and verified off the
event loop, then swapped in with one assignment: a listing reads ``ctx.snapshot`` once, so
each classification is computed by one snapshot and says which in ``model_version``. No event
waits on or is replayed because of a swap. A snapshot that fails verification is refused with
a log line and a metric; the worker keeps serving the one it had.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from metaguide.embedding.base import Embedder
from metaguide.kafka.client import follow_topic, kafka_client_options
from metaguide.meta.snapshots import SnapshotError, load_snapshot, parse_announcement
from metaguide.meta.trainer import STATE_ENCODER_KEY, snapshot_store, train_once
from workers.context import WorkerContext

__all__ = ["offer_snapshot", "register_snapshots"]

log = logging.getLogger("metaguide.snapshots")


async def offer_snapshot(ctx: WorkerContext, encoder: Embedder, raw: bytes) -> bool:
    """Verify and swap in an announced snapshot; False (logged, counted) when refused."""
    store = snapshot_store(ctx.settings)
    started = time.monotonic()
    try:
        ann = parse_announcement(raw)
        current = ctx.snapshot
        if current is not None and current.sha256 == ann["sha256"]:
            return True  # already serving exactly this one
        snap = await asyncio.to_thread(
            load_snapshot,
            store,
            ann["uri"],
            ann["sha256"],
            encoder_id=encoder.model_id,
            dim=encoder.dim,
        )
    except SnapshotError as exc:
        ctx.metrics.snapshot_refused.labels(exc.reason).inc()
        log.error(
            "refusing model snapshot: %s: %s; still serving version %s",
            exc.reason,
            exc.detail,
            ctx.model_version,
        )
        return False
    old = ctx.model_version
    ctx.snapshot = snap  # the swap: one reference, read once per listing
    ctx.metrics.snapshot_swaps.inc()
    ctx.metrics.snapshot_swap_seconds.observe(time.monotonic() - started)
    ctx.metrics.snapshot_created.set(float(snap.manifest.get("created_at", 0)))
    ctx.metrics.serving(old, snap.version)
    log.info("serving model snapshot %s (was %s; %s)", snap.version, old, ann.get("action"))
    return True


async def _watch(ctx: WorkerContext, encoder: Embedder, topic: Any) -> None:
    async def offer_all(records: list[Any]) -> None:
        for record in records:
            if record.key != STATE_ENCODER_KEY:  # checked before the worker starts
                await offer_snapshot(ctx, encoder, record.value)

    def caught_up() -> None:
        ctx.caught_up.add("snapshots")  # serving what was announced at start

    await topic.maybe_declare()
    await follow_topic(
        ctx.settings.broker_url.removeprefix("kafka://"),
        topic.get_topic_name(),
        1,
        offer_all,
        caught_up,
        **kafka_client_options(ctx.settings),
    )


async def _train_periodically(ctx: WorkerContext, encoder: Embedder) -> None:
    interval = ctx.settings.effective_train_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            result = await train_once(ctx.settings, encoder_id=encoder.model_id)
        except Exception:
            ctx.metrics.trainings.labels("failed").inc()
            log.exception("training round failed")
            continue
        if result.published:
            outcome = "published"
        elif "platforms" in result.evaluation:
            outcome = "kept"  # trained, but no platform gained beyond noise
        else:
            outcome = "skipped"  # too few labels, or nothing new since the serving snapshot
        ctx.metrics.trainings.labels(outcome).inc()
        log.info("training round: %s", result.reason)


def register_snapshots(ctx: WorkerContext, encoder: Embedder, topic: Any) -> None:
    """The watcher task, and the training timer (``Settings.effective_train_interval_s``)."""
    app = ctx.app

    @app.task
    async def watch_snapshots() -> None:
        await _watch(ctx, encoder, topic)

    if ctx.settings.effective_train_interval_s > 0:

        @app.task
        async def train_periodically() -> None:
            await _train_periodically(ctx, encoder)
