"""``metaguide demo``: the embedded default, end to end, on real data.

Starts the embedded broker, runs a worker, replays Myntra listings (k labelled examples per
article type, then unlabelled listings whose titles were never labelled), reads the
classifications back and prints a summary. Then the feedback loop: the review requests the
worker raised are answered with the held-back labels (label events, as a reviewer would send
them), and the listings nobody reviewed are listed again: their accuracy before and after
says what the answers were worth. Everything is shut down at the end.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from metaguide.config import Settings
from metaguide.eval.myntra import SAMPLE_FILE, few_shot_split, listing_event, load_myntra
from metaguide.kafka.broker import EmbeddedBroker, free_port
from metaguide.kafka.client import read_to_end
from metaguide.kafka.replay import produce_events
from metaguide.waiting import wait_until

__all__ = ["run_demo", "format_summary"]

# the demo's listings arrive in seconds: a budget that asks about a few percent of them
DEMO_REVIEW_BUDGET_PER_HOUR = 90_000.0


async def run_demo(
    settings: Settings,
    *,
    data_path: str | Path = SAMPLE_FILE,
    shots: int = 5,
    max_test: int | None = None,
    seed: int = 0,
    timeout_s: float = 540.0,
) -> dict[str, Any]:
    """Run the demo and return its summary (see :func:`format_summary`)."""
    from workers.app import create_worker
    from workers.run import tune_process

    started = time.perf_counter()
    listings = load_myntra(data_path)
    split = few_shot_split(listings, shots, seed=seed)
    test = split.test if max_test is None else split.test[:max_test]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state_dir:
        settings = settings.with_(
            broker_url=broker.url,
            broker_profile="embedded",
            app_id=f"metaguide-demo-{uuid.uuid4().hex[:8]}",
            state_dir=state_dir,
            web_port=free_port(),
            review_budget_per_hour=DEMO_REVIEW_BUDGET_PER_HOUR,
        )
        worker = create_worker(settings)
        tune_process()  # once per process; a no-op after the first
        metrics_server = worker.metrics.serve(settings.metrics_port, "127.0.0.1")
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        consumer = AIOKafkaConsumer(
            settings.topic("classifications"),
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
        )
        try:
            await worker.start()
            await producer.start()
            await consumer.start()
            topic = settings.topic("listings")
            await produce_events(
                broker.bootstrap,
                topic,
                (listing_event(x, labelled=True) for x in split.labelled),
                key_field="item_id",
                producer=producer,
            )
            await wait_until(
                lambda: sum(worker.prototypes.categories().values()) >= len(split.labelled),
                timeout_s,
                f"{len(split.labelled)} labelled listings to reach the prototypes",
            )
            labelled_done = time.perf_counter()
            truth = {x.item_id: x.category for x in test}
            results: dict[str, dict[str, Any]] = {}
            t0 = time.time()
            send = asyncio.ensure_future(
                produce_events(
                    broker.bootstrap,
                    topic,
                    (listing_event(x, labelled=False) for x in test),
                    key_field="item_id",
                    producer=producer,
                )
            )
            deadline = time.monotonic() + timeout_s
            while len(results) < len(test) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    for message in messages:
                        record = json.loads(message.value)
                        results[record["item_id"]] = record
            await send
            feedback = await _feedback_loop(
                worker, broker, producer, consumer, test, truth, results, timeout_s
            )
        finally:
            await consumer.stop()
            await producer.stop()
            await worker.stop()
            metrics_server.shutdown()  # type: ignore[attr-defined]
    records = [results[i] for i in truth if i in results]
    latencies = np.array([r["ts"] - r["listing_ts"] for r in records]) if records else np.zeros(1)
    top1 = [bool(r["top_k"]) and r["top_k"][0]["category"] == truth[r["item_id"]] for r in records]
    top3 = [truth[r["item_id"]] in [c["category"] for c in r["top_k"][:3]] for r in records]
    last = max((r["ts"] for r in records), default=t0)
    return {
        "data": str(data_path),
        "categories": len(split.categories),
        "shots": shots,
        "labelled_events": len(split.labelled),
        "test_events": len(test),
        "classifications": len(records),
        "missing": len(test) - len(records),
        "accuracy_top1": float(np.mean(top1)) if top1 else 0.0,
        "accuracy_top3": float(np.mean(top3)) if top3 else 0.0,
        "throughput_items_per_s": len(records) / max(last - t0, 1e-9),
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p99_s": float(np.percentile(latencies, 99)),
        "model_versions": sorted({r["model_version"] for r in records}),
        "feedback": feedback,
        "labelled_phase_s": labelled_done - started,
        "total_s": time.perf_counter() - started,
    }


async def _feedback_loop(
    worker: Any,
    broker: EmbeddedBroker,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    test: list[Any],
    truth: dict[str, str],
    before: dict[str, dict[str, Any]],
    timeout_s: float,
) -> dict[str, Any]:
    """Answer the review requests with the held-back labels, then list the unreviewed test
    listings again; their accuracy before and after."""
    settings = worker.settings
    metrics = worker.metrics
    deadline = time.monotonic() + timeout_s
    raised = metrics.total(metrics.review_requests)
    reviews: list[dict[str, Any]] = []
    while len(reviews) < raised and time.monotonic() < deadline:
        records = await read_to_end(broker.bootstrap, settings.topic("review-requests"))
        reviews = [json.loads(r.value) for r in records]
    answers = [
        {
            "event_id": f"answer-{r['review_id']}",
            "platform": r["platform"],
            "item_id": r["item_id"],
            "category": truth[r["item_id"]],
            "source": "reviewer",
            "review_id": r["review_id"],
            "ts": time.time(),
        }
        for r in reviews
    ]
    await produce_events(
        broker.bootstrap, settings.topic("labels"), answers, key_field="item_id", producer=producer
    )
    await wait_until(
        lambda: metrics.total(metrics.labels_applied) >= len(answers),
        max(1.0, deadline - time.monotonic()),
        f"{len(answers)} answers to be applied",
    )
    reviewed = {r["item_id"] for r in reviews}
    rest = [x for x in test if x.item_id not in reviewed]
    again = [{**listing_event(x, labelled=False), "event_id": f"again-{x.item_id}"} for x in rest]
    send = asyncio.ensure_future(
        produce_events(
            broker.bootstrap,
            settings.topic("listings"),
            again,
            key_field="item_id",
            producer=producer,
        )
    )
    after: dict[str, dict[str, Any]] = {}
    while len(after) < len(rest) and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        for messages in batch.values():
            for message in messages:
                record = json.loads(message.value)
                if record["event_id"].startswith("again-"):
                    after[record["item_id"]] = record
    await send

    def accuracy(records: list[dict[str, Any]]) -> float:
        hits = [
            bool(r["top_k"]) and r["top_k"][0]["category"] == truth[r["item_id"]] for r in records
        ]
        return float(np.mean(hits)) if hits else 0.0

    both = [i for i in after if i in before]
    return {
        "review_requests": len(reviews),
        "answered": len(answers),
        "novel_listings": int(metrics.total(metrics.novel_listings)),
        "unreviewed_listings": len(rest),
        "relisted_classified": len(after),
        "accuracy_before": accuracy([before[i] for i in both]),
        "accuracy_after": accuracy([after[i] for i in both]),
    }


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable summary the demo prints."""
    return "\n".join(
        [
            "metaguide demo: few-shot classification of Myntra listings",
            f"  data                 {s['data']}",
            f"  categories           {s['categories']} article types,"
            f" {s['shots']} labelled titles each",
            f"  events processed     {s['labelled_events']} labelled"
            f" + {s['test_events']} unlabelled",
            f"  classifications      {s['classifications']} ({s['missing']} missing)",
            f"  accuracy             top-1 {s['accuracy_top1']:.3f}, top-3 {s['accuracy_top3']:.3f}"
            " (test titles never labelled)",
            f"  throughput           {s['throughput_items_per_s']:.0f} listings/s",
            f"  latency              p50 {s['latency_p50_s'] * 1000:.0f} ms,"
            f" p99 {s['latency_p99_s'] * 1000:.0f} ms (event time to classification)",
            f"  model version        {', '.join(s['model_versions'])}",
            *_feedback_lines(s["feedback"]),
            f"  wall time            {s['total_s']:.1f} s",
        ]
    )


def _feedback_lines(f: dict[str, Any]) -> list[str]:
    return [
        f"  review requests      {f['review_requests']} raised, {f['answered']} answered"
        " with the held-back labels",
        f"  after the answers    top-1 {f['accuracy_before']:.3f} -> {f['accuracy_after']:.3f}"
        f" on the {f['unreviewed_listings']} listings nobody reviewed, listed again",
        f"  novel listings       {f['novel_listings']} (far from every known category)",
    ]
