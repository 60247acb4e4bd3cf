"""Click-path throughput against raw aiokafka consumption, and recommendation API latency.

    python bench/clicks.py [--clicks 100000] [--requests 2000] [--concurrency 16]

One run, one embedded broker, real Online Retail data:
1. a first worker lists the products of the replayed purchases (real encoder) and stops;
2. the purchases (in invoice-date order, keyed by customer) are produced with no worker up;
3. raw: an aiokafka consumer reads the same clicks from the topic, no processing (baseline);
4. pipeline: a second worker (same app id) recovers its tables and works the backlog: decode,
   repartition by item (the worker's click router process), join with the item embedding,
   item statistics, repartition by user, user-prototype update, each changelogged. Timed
   from the first batch routed to the last click folded into its user's profile (startup,
   mostly the consumer group join, apart); the first batch's clicks are not counted;
5. raw again (drift on a shared machine shows; the baseline is the mean of both raw runs);
6. API: --requests GETs for random customers, --concurrency at a time, on loopback.

The last line printed is JSON; it is also written to bench/results/clicks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaguide.config import Settings  # noqa: E402
from metaguide.embedding.encoder import TransformerEncoder  # noqa: E402
from metaguide.eval.retail import (
    PLATFORM,
    RETAIL_FILE,
    click_events,
    listing_events,
    load_online_retail,
)
from metaguide.kafka.broker import EmbeddedBroker, free_port  # noqa: E402
from metaguide.kafka.replay import produce_events  # noqa: E402
from metaguide.waiting import wait_until  # noqa: E402


async def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    """Seconds for a plain aiokafka consumer to read n messages from the start of a topic."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        seen = 0
        t0 = time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            seen += sum(len(m) for m in batch.values())
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


async def api_latency(port: int, users: list[str], n: int, concurrency: int) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(0)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(user: str) -> None:
            async with sem:
                t0 = time.perf_counter()
                url = f"http://127.0.0.1:{port}/recommendations/{PLATFORM}/{user}?k=10"
                async with session.get(url) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(rng.choice(users)) for _ in range(n)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "requests": n,
        "concurrency": concurrency,
        "statuses": statuses,
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2),
        "requests_per_s": round(n / wall, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from workers.app import create_worker
    from workers.run import tune_process

    data = load_online_retail(Path(Settings().data_dir) / RETAIL_FILE)
    clicks = click_events(data)[: args.clicks]
    wanted = {c["item_id"] for c in clicks}
    listings = [e for e in listing_events(data) if e["item_id"] in wanted]
    encoder = TransformerEncoder(device="cpu")
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state_dir:
        settings = Settings(
            broker_url=broker.url,
            broker_profile="embedded",
            app_id=f"bench-{uuid.uuid4().hex[:6]}",
            state_dir=state_dir,
            web_port=free_port(),
        )
        lister = create_worker(settings, encoder=encoder)
        tune_process()  # once per process; a no-op after the first
        await lister.start()
        await produce_events(
            broker.bootstrap, settings.topic("listings"), listings, key_field="item_id"
        )
        await wait_until(
            lambda: len(lister.items) >= len(listings) and not lister.app.consumer.unacked,
            900,
            "the listings",
        )
        await lister.stop()
        topic = settings.topic("clicks")
        await produce_events(broker.bootstrap, topic, clicks, key_field="user_id")
        raw = [await raw_consume(broker.bootstrap, topic, len(clicks))]

        worker = create_worker(settings, encoder=encoder)
        started = time.perf_counter()
        await worker.start()
        # throughput is timed from the first batch routed (the router's consumer group join,
        # about 3 s on this broker, is startup, reported apart); the clicks of that batch
        # are not counted (their routing is before the clock starts, the rest of their way
        # after it)
        consumed = worker.metrics.events_consumed.labels(topic)
        await wait_until(lambda: consumed._value.get() > 0, 120, "the first routed clicks")
        t0 = time.perf_counter()
        startup = t0 - started
        before = int(consumed._value.get())
        assert worker.clicks is not None and worker.clicks.router is not None
        router_pid = worker.clicks.router.pid
        assert router_pid is not None
        pids = (os.getpid(), router_pid, broker.pid)
        cpu0 = [_cpu_seconds(p) for p in pids]
        applied = worker.metrics.user_updates
        await wait_until(lambda: applied._value.get() >= len(clicks), 1800, "the click backlog")
        elapsed = time.perf_counter() - t0
        cpu = [_cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        raw.append(await raw_consume(broker.bootstrap, topic, len(clicks)))
        users = sorted({c["user_id"] for c in clicks})
        api = await api_latency(settings.web_port, users, args.requests, args.concurrency)
        await worker.stop()
    raw_per_s = len(clicks) / statistics.mean(raw)
    pipeline_per_s = (len(clicks) - before) / elapsed
    return {
        "clicks": len(clicks),
        "users": len(users),
        "items": len(listings),
        "raw_clicks_per_s": round(raw_per_s),
        "raw_runs_s": [round(r, 2) for r in raw],
        "pipeline_clicks_per_s": round(pipeline_per_s),
        "pipeline_s": round(elapsed, 2),
        "pipeline_clicks_timed": len(clicks) - before,
        "startup_s": round(startup, 2),
        "ratio": round(pipeline_per_s / raw_per_s, 3),
        # CPU seconds per wall second during the click backlog (2 cores: 2.0 is all of them)
        "worker_cpu_load": round(cpu[0] / elapsed, 2),
        "router_cpu_load": round(cpu[1] / elapsed, 2),  # the worker's click router process
        "broker_cpu_load": round(cpu[2] / elapsed, 2),
        "api": api,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    result = asyncio.run(run(args))
    print(
        f"click path: {result['pipeline_clicks_per_s']} clicks/s "
        f"({result['clicks']} clicks, {result['users']} users, {result['items']} items); "
        f"raw aiokafka: {result['raw_clicks_per_s']}/s; ratio {result['ratio']}"
    )
    api = result["api"]
    print(
        f"API: p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms, {api['requests_per_s']} req/s "
        f"at concurrency {api['concurrency']}"
    )
    out = Path(__file__).resolve().parent / "results" / "clicks.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
