"""Listing-path throughput against the raw encoder, measured in one run on the same texts.

    python bench/encoder.py [--n 3000] [--batch-size 32] [--rounds 5] [--json]

1. raw: the encoder alone, ``embed_many`` over the texts in batches of --batch-size, in two
   layouts: one call at a time on every core, and the worker's layout (on a CPU, one
   single-threaded call per core side by side); and in two batchings: texts of about the
   same token count together, as the micro-batcher itself cuts them from a backlog of the
   texts in arrival order, and batches in arrival order. The baseline is the faster
   layout with the same batching as the micro-batcher's; the ratio against batches in
   arrival order is reported beside it (the pipeline does less padding than that loop);
2. batcher: the same texts through the micro-batcher (all callers at once);
3. pipeline, --rounds times: the same texts as unlabelled Myntra listings through a worker
   on the embedded broker (validate, embed, item table write, classify, produce), working
   off a backlog, timed from the worker being ready to its last classification (listings
   classified before it reported ready are not counted); the worker is stopped after each
   round and the raw encoder measured again (both layouts), so each round has a baseline
   measured just before and just after it: this machine's speed drifts by 10% and more
   within a minute, and one pair of figures is at its mercy;
4. latency: after the last round the same worker gets listings at a quarter, half and all of the
   throughput it just showed, --load-seconds each, one at a time at a steady pace; event
   time to classification, p50 and p99.

A round's ratio is its pipeline rate over the mean of the faster layout's rates before and
after it; the figures reported are those of the median round, and every round is listed.
The last line printed is JSON with raw_items_per_s, pipeline_items_per_s and ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaguide.config import Settings  # noqa: E402
from metaguide.embedding.batching import MicroBatcher  # noqa: E402
from metaguide.embedding.encoder import TransformerEncoder, cpu_cores  # noqa: E402
from metaguide.eval.myntra import few_shot_split, listing_event, load_myntra  # noqa: E402
from metaguide.kafka.broker import EmbeddedBroker, free_port  # noqa: E402
from metaguide.kafka.replay import produce_events  # noqa: E402
from metaguide.waiting import wait_until  # noqa: E402


def arrival_batches(texts: list[str], batch_size: int) -> list[list[str]]:
    return [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]


async def grouped_batches(
    encoder: TransformerEncoder, texts: list[str], batch_size: int
) -> list[list[str]]:
    """The batches the micro-batcher itself cuts from a backlog of these texts (all queued
    at once), recorded by a stand-in model: its rule, its window, its token counts."""
    batches: list[list[str]] = []

    def record(batch: list[str]) -> np.ndarray:
        batches.append(batch)
        return np.zeros((len(batch), 1), dtype=np.float32)

    batcher = MicroBatcher(
        record, max_batch_size=batch_size, max_latency_s=0.0, length=encoder.token_count
    )
    await batcher.embed_many(texts)
    await batcher.close()
    return batches


def padded_tokens(encoder: TransformerEncoder, batches: list[list[str]]) -> int:
    return sum(len(b) * max(encoder.token_count(t) for t in b) for b in batches)


def bench_raw(encoder: TransformerEncoder, batches: list[list[str]], streams: int = 1) -> float:
    """Items per second of ``embed_many`` alone on these batches: ``streams`` calls side by
    side, each on cores // streams torch threads, in fresh threads (torch fixes a thread's
    count when the thread first computes)."""
    import torch

    cpu = encoder.device.type == "cpu"
    if cpu:
        torch.set_num_threads(max(1, cpu_cores() // streams))
    try:
        with concurrent.futures.ThreadPoolExecutor(streams) as pool:
            t0 = time.perf_counter()
            for _ in pool.map(encoder.embed_many, batches):
                pass
            elapsed = time.perf_counter() - t0
    finally:
        if cpu:
            torch.set_num_threads(encoder.threads)
    return sum(len(b) for b in batches) / elapsed


def raw_layouts(encoder: TransformerEncoder) -> dict[str, int]:
    """Name -> streams: one call at a time on every core, and the worker's layout (measured
    once when they are the same: a GPU, or a worker of one stream)."""
    names = {1: f"1x{cpu_cores()}", encoder.streams: f"{encoder.streams}x{encoder.threads}"}
    return {name: streams for streams, name in names.items()}


async def bench_batcher(encoder: TransformerEncoder, texts: list[str], batch_size: int) -> float:
    batcher = MicroBatcher(
        encoder.embed_many,
        max_batch_size=batch_size,
        max_latency_s=0.05,
        concurrency=encoder.streams,
        length=encoder.token_count,
    )
    t0 = time.perf_counter()
    await batcher.embed_many(texts)
    rate = len(texts) / (time.perf_counter() - t0)
    await batcher.close()
    return rate


def _reached(counter: Any, n: int) -> Callable[[], bool]:
    """A condition: the Prometheus counter is at n or more."""
    return lambda: counter._value.get() >= n


async def bench_rounds(
    encoder: TransformerEncoder,
    texts: list[str],
    n: int,
    batch_size: int,
    rounds: int,
    load_seconds: float = 0.0,
) -> dict[str, Any]:
    """Backlog rounds of n unlabelled listings, with the raw encoder measured around each.

    A first worker learns the labelled examples and stops. In each round the unlabelled
    listings (new item ids) are produced with no worker running, and a worker (same app id)
    recovers the tables and works the backlog, timed from its being ready to its n-th
    classification of the round, so neither the producer nor a result consumer shares its
    event loop; it then stops, and the raw encoder runs alone.
    """
    from workers.app import create_worker
    from workers.run import tune_process

    layouts = raw_layouts(encoder)
    batchings = {
        "grouped": await grouped_batches(encoder, texts, batch_size),
        "arrival": arrival_batches(texts, batch_size),
    }

    def raw_now() -> dict[str, float]:
        return {
            f"{batching} {name}": bench_raw(encoder, batches, streams)
            for batching, batches in batchings.items()
            for name, streams in layouts.items()
        }

    split = few_shot_split(load_myntra(), 5, seed=0)
    test = (split.test * (n // max(len(split.test), 1) + 1))[:n]
    raws = [raw_now()]
    results: list[dict[str, Any]] = []
    latency: dict[str, Any] = {}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state_dir:
        settings = Settings(
            broker_url=broker.url,
            broker_profile="embedded",
            app_id=f"bench-{uuid.uuid4().hex[:6]}",
            state_dir=state_dir,
            web_port=free_port(),
            max_batch_size=batch_size,
        )
        topic = settings.topic("listings")
        learner = create_worker(settings, encoder=encoder)
        tune_process()  # once per process; a no-op after the first
        await learner.start()
        await produce_events(
            broker.bootstrap,
            topic,
            [listing_event(x, labelled=True) for x in split.labelled],
            key_field="item_id",
        )
        await wait_until(
            lambda: (
                sum(learner.prototypes.categories().values()) >= len(split.labelled)
                and not learner.app.consumer.unacked
            ),
            600,
            "the labelled phase",
        )
        await learner.stop()
        for r in range(rounds):
            events = []
            for i, x in enumerate(test):
                event = listing_event(x, labelled=False)
                event["item_id"] = event["event_id"] = f"bench-{r}-{i}"
                events.append(event)
            await produce_events(broker.bootstrap, topic, events, key_field="item_id")
            worker = create_worker(settings, encoder=encoder)
            await worker.start()
            emitted = worker.metrics.classifications.labels("myntra")
            # the worker may classify a few listings before it reports ready: only those
            # after count, over the time after
            t0, before = time.perf_counter(), int(emitted._value.get())
            await wait_until(_reached(emitted, n), 600, f"backlog round {r}")
            elapsed = time.perf_counter() - t0
            stats = worker.batcher.stats  # updated in place: read it before the paced phases
            results.append(
                {
                    "pipeline_items_per_s": (n - before) / elapsed,
                    "classified_before_ready": before,
                    "mean_batch": stats.items / max(stats.batches, 1),
                    "padded_tokens_per_text": stats.padded_tokens / max(stats.items, 1),
                }
            )
            if r == rounds - 1 and load_seconds > 0:
                rate = results[-1]["pipeline_items_per_s"]
                for name, share in (("quarter_load", 0.25), ("half_load", 0.5), ("full_load", 1.0)):
                    latency[name] = await paced_latency(
                        broker.bootstrap, settings, worker, test, share * rate, load_seconds, name
                    )
            await worker.stop()
            raws.append(raw_now())  # the worker stopped: the encoder alone again
    for r, result in enumerate(results):
        around = {name: (raws[r][name] + raws[r + 1][name]) / 2 for name in raws[r]}
        for batching in batchings:
            best = max((n for n in around if n.startswith(batching)), key=around.__getitem__)
            key = "raw" if batching == "grouped" else f"raw_{batching}"
            result[f"{key}_layout"] = best.split()[1]
            result[f"{key}_items_per_s"] = around[best]
        result["ratio"] = result["pipeline_items_per_s"] / result["raw_items_per_s"]
        result["ratio_arrival"] = result["pipeline_items_per_s"] / result["raw_arrival_items_per_s"]
    padding = {
        name: round(padded_tokens(encoder, batches) / len(texts), 2)
        for name, batches in batchings.items()
    }
    return {"raws": raws, "rounds": results, "latency": latency, "padding": padding}


async def paced_latency(
    bootstrap: str,
    settings: Settings,
    worker: Any,
    pool: list[Any],
    rate: float,
    seconds: float,
    tag: str,
) -> dict[str, float]:
    """Listings sent at ``rate`` per second for ``seconds``; event time to classification."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    count = max(1, int(rate * seconds))
    emitted = worker.metrics.classifications.labels("myntra")
    before = emitted._value.get()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the producer at the target rate
        event = listing_event(pool[i % len(pool)], labelled=False)
        event["item_id"] = event["event_id"] = f"{tag}-{i}"
        event["ts"] = time.time()
        await producer.send(
            settings.topic("listings"),
            key=event["item_id"].encode(),
            value=json.dumps(event).encode(),
        )
    await producer.stop()
    await wait_until(lambda: emitted._value.get() >= before + count, 600, tag)
    consumer = AIOKafkaConsumer(
        settings.topic("classifications"),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    latencies: dict[str, float] = {}
    try:
        while len(latencies) < count:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    rec = json.loads(m.value)
                    if rec["item_id"].startswith(f"{tag}-"):
                        latencies[rec["item_id"]] = rec["ts"] - rec["listing_ts"]
    finally:
        await consumer.stop()
    values = np.array(sorted(latencies.values()))
    return {
        "rate_per_s": round(rate, 1),
        "events": count,
        "p50_s": round(float(np.percentile(values, 50)), 3),
        "p99_s": round(float(np.percentile(values, 99)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="backlog rounds (median reported)")
    parser.add_argument("--json", action="store_true", help="(the last line is always JSON)")
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=20.0,
        help="then send at half and at full measured throughput this long each: latency",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    logging.basicConfig(level=logging.ERROR)
    # the worker's layout (streams=0: auto), as create_worker makes it
    encoder = TransformerEncoder(device=os.environ.get("METAGUIDE_DEVICE", "auto"), streams=0)
    split = few_shot_split(load_myntra(), 5, seed=0)
    texts = [x.title for x in split.test]
    texts = (texts * (args.n // len(texts) + 1))[: args.n]
    encoder.embed_many(texts[:64])  # warm-up
    batcher = asyncio.run(bench_batcher(encoder, texts, args.batch_size))
    runs = asyncio.run(
        bench_rounds(encoder, texts, args.n, args.batch_size, args.rounds, args.load_seconds)
    )
    rounds = runs["rounds"]
    median = sorted(rounds, key=lambda x: x["ratio"])[len(rounds) // 2]
    raw = median["raw_items_per_s"]
    result = {
        "device": str(encoder.device),
        "n": args.n,
        "batch_size": args.batch_size,
        "encoder_layout": f"{encoder.streams}x{encoder.threads}",
        "raw_by_layout": {
            name: [round(r[name], 1) for r in runs["raws"]] for name in runs["raws"][0]
        },
        "raw_layout": median["raw_layout"],
        "raw_items_per_s": round(raw, 1),
        "raw_arrival_items_per_s": round(median["raw_arrival_items_per_s"], 1),
        "batcher_items_per_s": round(batcher, 1),
        "batcher_ratio": round(batcher / runs["raws"][0][f"grouped {median['raw_layout']}"], 3),
        "pipeline_items_per_s": round(median["pipeline_items_per_s"], 1),
        "pipeline_mean_batch": round(median["mean_batch"], 1),
        "ratio": round(median["ratio"], 3),
        "ratio_arrival": round(median["ratio_arrival"], 3),
        "padded_tokens_per_text": {
            **runs["padding"],
            "pipeline": round(median["padded_tokens_per_text"], 2),
        },
        "ratio_by_round": [round(r["ratio"], 3) for r in rounds],
        "pipeline_by_round": [round(r["pipeline_items_per_s"], 1) for r in rounds],
        "raw_by_round": [round(r["raw_items_per_s"], 1) for r in rounds],
        "latency": runs["latency"],
    }
    out = Path(__file__).resolve().parent / "results" / "encoder.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:26} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
