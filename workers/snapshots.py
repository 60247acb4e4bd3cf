"""Model snapshots on the worker: watch the ``snapshots`` topic, verify, load, swap.

Every worker reads the whole (compacted, one-partition) topic with its own group-less
consumer, so each of them sees every announcement. A snapshot is loaded and verified off the
event loop, then swapped in with one assignment: a listing reads ``worker.snapshot`` once, so
each classification is computed by one snapshot and says which in ``model_version``. No event
waits on or is replayed because of a swap. A snapshot that fails verification is refused with
a log line and a metric; the worker keeps serving the one it had.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from metaguide.replay import follow_topic, kafka_client_options
from metaguide.snapshots import SnapshotError, load_snapshot, parse_announcement
from metaguide.trainer import snapshot_store, train_once

if TYPE_CHECKING:
    from workers.app import Worker

__all__ = ["offer_snapshot", "register_snapshots"]

log = logging.getLogger("metaguide.snapshots")


async def offer_snapshot(worker: Worker, raw: bytes) -> bool:
    """Verify and swap in an announced snapshot; False (logged, counted) when refused."""
    store = snapshot_store(worker.settings)
    started = time.monotonic()
    try:
        ann = parse_announcement(raw)
        current = worker.snapshot
        if current is not None and current.sha256 == ann["sha256"]:
            return True  # already serving exactly this one
        snap = await asyncio.to_thread(
            load_snapshot,
            store,
            ann["uri"],
            ann["sha256"],
            encoder_id=worker.encoder.model_id,
            dim=worker.encoder.dim,
        )
    except SnapshotError as exc:
        worker.metrics.snapshot_refused.labels(exc.reason).inc()
        log.error(
            "refusing model snapshot: %s: %s; still serving version %s",
            exc.reason,
            exc.detail,
            worker.model_version,
        )
        return False
    old = worker.model_version
    worker.snapshot = snap  # the swap: one reference, read once per listing
    worker.metrics.snapshot_swaps.inc()
    worker.metrics.snapshot_swap_seconds.observe(time.monotonic() - started)
    worker.metrics.snapshot_created.set(float(snap.manifest.get("created_at", 0)))
    worker.metrics.serving(old, snap.version)
    log.info("serving model snapshot %s (was %s; %s)", snap.version, old, ann.get("action"))
    return True


async def _watch(worker: Worker, topic: Any) -> None:
    async def offer_all(records: list[Any]) -> None:
        for record in records:
            await offer_snapshot(worker, record.value)

    def caught_up() -> None:
        worker.snapshots_caught_up = True  # serving what was announced at start

    await topic.maybe_declare()
    await follow_topic(
        worker.settings.broker_url.removeprefix("kafka://"),
        topic.get_topic_name(),
        1,
        offer_all,
        caught_up,
        **kafka_client_options(worker.settings),
    )


async def _train_periodically(worker: Worker) -> None:
    interval = worker.settings.effective_train_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            result = await train_once(worker.settings, encoder_id=worker.encoder.model_id)
        except Exception:
            worker.metrics.trainings.labels("failed").inc()
            log.exception("training round failed")
            continue
        if result.published:
            outcome = "published"
        elif "challenger_accuracy" in result.evaluation:
            outcome = "kept"  # trained, but did not beat the serving snapshot
        else:
            outcome = "skipped"  # not enough labelled data to train on
        worker.metrics.trainings.labels(outcome).inc()
        log.info("training round: %s", result.reason)


def register_snapshots(worker: Worker, topic: Any) -> None:
    """The watcher task, and the training timer (``Settings.effective_train_interval_s``)."""
    app = worker.app

    @app.task
    async def watch_snapshots() -> None:
        await _watch(worker, topic)

    if worker.settings.effective_train_interval_s > 0:

        @app.task
        async def train_periodically() -> None:
            await _train_periodically(worker)
