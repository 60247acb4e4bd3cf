"""The listing path's ceiling: a worker whose model costs nothing, against a raw loop.

    python bench/ceiling.py [--n 20000] [--rounds 3] [--json]

What a worker does per listing besides the model (fetch, decode, validate, store, classify,
produce, commit), measured on the embedded broker: the encoder is a stand-in that returns
each title's vector from a table filled before the run. In each round a backlog of --n
unlabelled listings (the full Myntra catalogue's titles from METAGUIDE_DATA_DIR, or the
carried sample's, repeated with new item ids) is produced with no worker running; a worker
(the same app id, its prototypes learned from 5 labelled titles per article type) then works
it off, timed from its being ready to its n-th classification. Before and after each round
a raw aiokafka loop reads the same backlog, decodes and validates each listing and sends one
record for it (a group-less consumer and a producer, nothing else). A round's ratio is the
worker's rate over the mean of the raw loop's before and after it; the median round is
reported. The last line printed is JSON with listings_per_s, raw_transport_per_s and ratio;
it is also written to bench/results/ceiling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaguide.config import Settings  # noqa: E402
from metaguide.contracts.events import decode_listing  # noqa: E402
from metaguide.eval.myntra import (  # noqa: E402
    MYNTRA_FILE,
    SAMPLE_FILE,
    few_shot_split,
    listing_event,
    load_myntra,
)
from metaguide.kafka.broker import EmbeddedBroker, free_port  # noqa: E402
from metaguide.kafka.client import group_less_consumer  # noqa: E402
from metaguide.kafka.replay import produce_events  # noqa: E402
from metaguide.waiting import wait_until  # noqa: E402

DIM = 384


class LookupEncoder:
    """A model that costs nothing: each text's unit vector, from a table filled up front."""

    model_id = "lookup"
    dim = DIM
    streams = 1

    def __init__(self, texts: list[str]) -> None:
        self.table = {text: self._vector(text) for text in set(texts)}

    @staticmethod
    def _vector(text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def embed_many(self, texts: list[str]) -> np.ndarray:
        table = self.table
        return np.stack([table[text] for text in texts])


async def raw_loop(bootstrap: str, topic: str, out_topic: str, n: int) -> float:
    """Listings per second of a bare aiokafka loop over the backlog: consume, decode and
    validate each listing, send one record for it, and wait for the sends."""
    from aiokafka import AIOKafkaProducer, TopicPartition

    consumer = group_less_consumer(bootstrap, max_partition_fetch_bytes=8 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        done, pending = 0, []
        started = time.perf_counter()
        while done < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            for records in batch.values():
                for record in records:
                    listing = decode_listing(record.value)
                    pending.append(
                        await producer.send(
                            out_topic, key=record.key, value=listing.item_id.encode()
                        )
                    )
                    done += 1
        await asyncio.gather(*pending)
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def bench(n: int, rounds: int) -> dict[str, Any]:
    from workers.app import create_worker
    from workers.run import tune_process

    settings0 = Settings.from_env()
    full = Path(settings0.data_dir) / MYNTRA_FILE
    listings = load_myntra(full if full.exists() else SAMPLE_FILE)
    split = few_shot_split(listings, 5, seed=0)
    backlog_titles = (split.test * (n // max(len(split.test), 1) + 1))[:n]
    encoder = LookupEncoder([x.title for x in listings])
    raws: list[float] = []
    worker_rates: list[float] = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state_dir:
        settings = settings0.with_(
            broker_url=broker.url,
            broker_profile="embedded",
            app_id=f"ceiling-{uuid.uuid4().hex[:6]}",
            state_dir=state_dir,
            web_port=free_port(),
            metrics_port=free_port(),
            train_interval_s=0,
        )
        topic = settings.topic("listings")
        learner = create_worker(settings, encoder=encoder)
        tune_process()
        await learner.start()
        labelled = [listing_event(x, labelled=True) for x in split.labelled]
        await produce_events(broker.bootstrap, topic, labelled, key_field="item_id")
        await wait_until(
            lambda: (
                sum(learner.prototypes.categories().values()) >= len(labelled)
                and not learner.app.consumer.unacked
            ),
            300,
            "the labelled phase",
        )
        await learner.stop()
        for r in range(rounds):
            round_topic = f"{topic}-raw-{r}"
            events = []
            for i, x in enumerate(backlog_titles):
                event = listing_event(x, labelled=False)
                event["item_id"] = event["event_id"] = f"c-{r}-{i}"
                events.append(event)
            await produce_events(broker.bootstrap, round_topic, events, key_field="item_id")
            await produce_events(broker.bootstrap, topic, events, key_field="item_id")
            raws.append(await raw_loop(broker.bootstrap, round_topic, f"{round_topic}-out", n))
            worker = create_worker(settings, encoder=encoder)
            await worker.start()
            metrics = worker.metrics
            emitted = metrics.classifications.labels("myntra")
            t0, before = time.perf_counter(), metrics.value(emitted)
            await wait_until(lambda: metrics.value(emitted) >= n, 600, f"round {r}")  # noqa: B023
            worker_rates.append((n - before) / (time.perf_counter() - t0))
            await worker.stop()
            raws.append(await raw_loop(broker.bootstrap, round_topic, f"{round_topic}-out2", n))
    ratios = [w / ((raws[i] + raws[i + 1]) / 2) for i, w in enumerate(worker_rates)]
    median = sorted(range(rounds), key=ratios.__getitem__)[rounds // 2]
    return {
        "n": n,
        "listings_per_s": round(worker_rates[median], 1),
        "raw_transport_per_s": round((raws[median] + raws[median + 1]) / 2, 1),
        "ratio": round(ratios[median], 3),
        "ratio_by_round": [round(x, 3) for x in ratios],
        "listings_per_s_by_round": [round(x, 1) for x in worker_rates],
        "raw_runs_per_s": [round(x, 1) for x in raws],
        "median_ratio": round(statistics.median(ratios), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("faust.transport.producer", "mode.timers", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    result = asyncio.run(bench(args.n, args.rounds))
    for key, value in result.items():
        print(f"{key:<26} {value}")
    out = Path(__file__).resolve().parent / "results" / "ceiling.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
