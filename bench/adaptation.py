"""How fast the system adapts: a new category's 5th example -> predicted; snapshot -> swapped.

    python bench/adaptation.py [--categories 6] [--swaps 5]

One embedded broker, one worker (real encoder, real Myntra sample listings):
1. new categories: for each of --categories article types the worker has never seen, four
   labelled listings are sent and folded in; then the 5th is sent at t0 together with an
   unlabelled listing of that type right behind it. Measured: t0 -> that listing's
   classification naming the new category (first choice). Also reported: t0 -> the 5th
   example visible in the worker's prototype table.
2. snapshot swaps: --swaps snapshots (a trained-shape adapter, rank 16) are written and
   announced; measured: announcement sent -> the worker serving that version.

The last line printed is JSON; it is also written to bench/results/adaptation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaguide.classify.prototypes import prototype_key  # noqa: E402
from metaguide.config import Settings  # noqa: E402
from metaguide.embedding.encoder import TransformerEncoder  # noqa: E402
from metaguide.eval.fewshot import unique_titles  # noqa: E402
from metaguide.eval.myntra import listing_event, load_myntra  # noqa: E402
from metaguide.kafka.broker import EmbeddedBroker, free_port  # noqa: E402
from metaguide.kafka.replay import produce_events  # noqa: E402
from metaguide.meta.maml import Adapter  # noqa: E402
from metaguide.meta.trainer import publish_adapter, snapshot_store  # noqa: E402
from metaguide.waiting import wait_until  # noqa: E402
from workers.app import create_worker  # noqa: E402
from workers.run import tune_process  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "adaptation.json"
BASE = ["Watches", "Tshirts", "Handbags", "Casual Shoes", "Sunglasses", "Socks"]


def has_category(worker: Any, category: str) -> bool:
    return any(k.endswith(category) for k in worker.prototypes.categories())


def has_count(worker: Any, key: str, count: int) -> bool:
    return bool(worker.prototypes.categories().get(key) == count)


def serves(worker: Any, version: str) -> bool:
    return bool(worker.model_version == version)


async def first_choice(consumer: Any, item_id: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=100)
        for msgs in batch.values():
            for m in msgs:
                rec = json.loads(m.value)
                if rec["item_id"] == item_id:
                    return str(rec["top_k"][0]["category"])
    raise TimeoutError(item_id)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    encoder = TransformerEncoder(device="cpu")
    by_cat: dict[str, list[Any]] = {}
    for x in unique_titles(load_myntra()):
        by_cat.setdefault(x.category, []).append(x)
    new = [c for c in sorted(by_cat, key=lambda c: -len(by_cat[c])) if c not in BASE]
    new = new[: args.categories]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state_dir:
        run_id = uuid.uuid4().hex[:8]
        settings = Settings(
            broker_url=broker.url,
            broker_profile="embedded",
            app_id=f"ad-{run_id}",
            topic_prefix=f"ad{run_id}.",
            state_dir=state_dir,
            web_port=free_port(),
            device="cpu",
        )
        worker = create_worker(settings, encoder=encoder)
        tune_process()  # once per process; a no-op after the first
        await worker.start()
        send = lambda events: produce_events(  # noqa: E731
            broker.bootstrap, settings.topic("listings"), events, key_field="item_id"
        )
        await send([listing_event(x, labelled=True) for c in BASE for x in by_cat[c][:5]])
        await wait_until(lambda: len(worker.prototypes.categories()) == len(BASE), 60, "base")
        consumer = AIOKafkaConsumer(
            settings.topic("classifications"),
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="latest",
        )
        await consumer.start()
        await consumer.getmany(timeout_ms=500)  # joined at the end
        to_predicted, to_visible = [], []
        for category in new:
            items = by_cat[category]
            await send([listing_event(x, labelled=True) for x in items[:4]])
            await wait_until(partial(has_category, worker, category), 60, category)
            t0 = time.monotonic()
            await send(
                [listing_event(items[4], labelled=True), listing_event(items[5], labelled=False)]
            )
            name = await first_choice(consumer, items[5].item_id)
            to_predicted.append(time.monotonic() - t0 if name == category else float("nan"))
            key = prototype_key(items[4].platform, category)
            await wait_until(partial(has_count, worker, key, 5), 60, category)
            to_visible.append(time.monotonic() - t0)
        await consumer.stop()
        store = snapshot_store(settings)
        swaps = []
        gen = np.random.default_rng(0)
        for _ in range(args.swaps):
            adapter = Adapter(
                (gen.standard_normal((encoder.dim, 16)) * 0.01).astype(np.float32),
                (gen.standard_normal((encoder.dim, 16)) * 0.05).astype(np.float32),
            )
            t0 = time.monotonic()
            value = await publish_adapter(
                settings,
                store,
                adapter,
                {},
                encoder_id=encoder.model_id,
                data_window={},
                training={},
                evaluation={},
            )
            await wait_until(partial(serves, worker, str(value["version"])), 60, "swap")
            swaps.append(time.monotonic() - t0)
        await worker.stop()
    predicted = [t for t in to_predicted if t == t]
    return {
        "new_categories": new,
        "fifth_example_to_predicted_s": {
            "median": round(statistics.median(predicted), 3) if predicted else None,
            "max": round(max(predicted), 3) if predicted else None,
            "predicted": f"{len(predicted)}/{len(new)}",
        },
        "fifth_example_to_prototype_visible_s": {
            "median": round(statistics.median(to_visible), 3),
            "max": round(max(to_visible), 3),
        },
        "snapshot_announced_to_swapped_s": {
            "median": round(statistics.median(swaps), 3),
            "max": round(max(swaps), 3),
            "swaps": len(swaps),
            "workers": 1,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--categories", type=int, default=6)
    parser.add_argument("--swaps", type=int, default=5)
    result = asyncio.run(run(parser.parse_args()))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
