"""Thousands of malformed listings and clicks at a running worker, valid events in between.

Every malformed event must end on the dead-letter topic with the specific reason the corpus
(tests/corpus.py) says, counted in the metrics; every valid event must be processed; the
worker must keep running.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from metaguide.eval.myntra import listing_event, load_myntra
from tests.conftest import read_topic, wait_until
from tests.corpus import Raw, bad_clicks, bad_listings

pytestmark = pytest.mark.integration

BAD_LISTINGS = 2000
BAD_CLICKS = 1000


def _valid(seed: int = 0) -> tuple[list[Raw], list[Raw], list[Raw], int]:
    """Valid listings (labelled and not), valid clicks, and clicks on never-listed items."""
    rng = random.Random(seed)
    kinds = ["Watches", "Tshirts", "Socks"]
    pool = [x for x in load_myntra() if x.category in kinds][:150]
    listings = []
    for i, x in enumerate(pool):
        event = listing_event(x, labelled=i < 45)
        if i % 10 == 0:  # some titles in several scripts, and as long as the decoder allows
            event["title"] = (event["title"] + " Кроссовки 跑步鞋 حذاء 👟 ") * 80
            event["title"] = event["title"][:2000]
        listings.append(Raw(x.item_id.encode(), json.dumps(event).encode(), ""))
    clicks = []
    for n in range(300):
        item = rng.choice(pool).item_id
        user = f"ok-user-{n % 40}"
        event = {
            "event_id": f"ok-c-{n}",
            "platform": "myntra",
            "user_id": user,
            "item_id": item,
            "action": "click",
            "ts": time.time(),
        }
        clicks.append(Raw(user.encode(), json.dumps(event).encode(), ""))
    unknown = []
    for n in range(10):
        event = {
            "event_id": f"nf-{n}",
            "platform": "myntra",
            "user_id": "ok-user-0",
            "item_id": f"never-listed-{n}",
            "action": "view",
            "ts": time.time(),
        }
        unknown.append(Raw(b"ok-user-0", json.dumps(event).encode(), "item_not_found"))
    unlabelled = sum(1 for i in range(len(pool)) if i >= 45)
    return listings, clicks, unknown, unlabelled


def _interleave(bad: list[Raw], good: list[Raw], seed: int) -> list[Raw]:
    out = bad + good
    random.Random(seed).shuffle(out)
    # a listing's labelled examples before the unlabelled ones would be nice, not needed
    return out


async def _produce(bootstrap: str, topic: str, records: list[Raw]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000)
    await producer.start()
    try:
        pending = [await producer.send(topic, key=r.key, value=r.value) for r in records]
        for fut in pending:
            await fut
    finally:
        await producer.stop()


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


async def test_malformed_events_are_dead_lettered_with_their_reason_and_valid_ones_processed(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings(click_wait_s=2.0)
    worker = await start_worker(settings)
    listings, clicks, unknown, unlabelled = _valid()
    bad_l, bad_c = bad_listings(BAD_LISTINGS, seed=1), bad_clicks(BAD_CLICKS, seed=2)

    started = time.monotonic()
    await _produce(broker.bootstrap, settings.topic("listings"), _interleave(bad_l, listings, 3))
    # clicks once the valid listings are in, so only the never-listed ones wait
    await wait_until(lambda: len(worker.clicks.catalog) >= len(listings), 180, "listings")
    await _produce(
        broker.bootstrap, settings.topic("clicks"), _interleave(bad_c, clicks + unknown, 4)
    )

    expected = bad_l + bad_c + unknown
    letters = await read_topic(broker.bootstrap, settings.topic("dead-letters"), len(expected), 240)
    elapsed = time.monotonic() - started
    want = Counter((_b64(r.key), _b64(r.value), r.reason) for r in expected)
    got = Counter((d["key_b64"], d["value_b64"], d["reason"]) for d in letters)
    assert got == want  # every malformed event, once, with its own reason; nothing else

    out = await read_topic(broker.bootstrap, settings.topic("classifications"), unlabelled, 120)
    assert len({r["item_id"] for r in out}) == unlabelled
    await wait_until(
        lambda: worker.metrics.value(worker.metrics.user_updates) >= len(clicks),
        120,
        "valid clicks",
    )
    assert worker.metrics.value(worker.metrics.user_updates) == len(clicks)

    by_reason = Counter(r.reason for r in expected)
    for topic, records in (("listings", bad_l), ("clicks", bad_c + unknown)):
        for reason, count in Counter(r.reason for r in records).items():
            metrics = worker.metrics
            got = metrics.value(metrics.dead_letters, topic=settings.topic(topic), reason=reason)
            assert got == count, (topic, reason)
    assert worker.app.started
    print(
        f"\nfuzzed {len(bad_l)} listings and {len(bad_c)} clicks "
        f"({len(by_reason)} reasons: {dict(sorted(by_reason.items()))}) among "
        f"{len(listings)} valid listings and {len(clicks)} valid clicks: all dead-lettered "
        f"with their reason, all valid ones processed, in {elapsed:.1f}s"
    )


class _PoisonableModel:
    """A stand-in model for one property: it fails any batch holding a text with POISON in
    it (as a tokenizer fails on input it cannot take); other texts get a vector by their
    first word, so "alpha ..." and "beta ..." form two categories."""

    model_id = "stand-in"
    dim = 4
    streams = 1

    def embed_many(self, texts: list[str]) -> Any:
        import numpy as np

        if any("POISON" in text for text in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        rows = [[1.0, 0, 0, 0] if text.startswith("alpha") else [0, 1.0, 0, 0] for text in texts]
        return np.array(rows, dtype=np.float32)


async def test_one_poisoned_title_in_a_batch_dead_letters_that_title_only(
    broker: Any, worker_settings: Any
) -> None:
    from metaguide.kafka.replay import produce_events
    from workers.app import create_worker

    # one long latency budget: every listing of the burst shares one micro-batch
    settings = worker_settings(max_batch_size=64, max_latency_s=0.5)
    worker = create_worker(settings, encoder=_PoisonableModel())
    await worker.start()
    try:
        now = time.time()

        def listing(n: int, title: str, category: str | None = None) -> dict[str, Any]:
            event = {"event_id": f"p{n}", "platform": "shop", "item_id": f"i{n}"}
            event |= {"title": title, "ts": now}
            return event if category is None else {**event, "category": category}

        labelled = [listing(0, "alpha seed", "A"), listing(1, "beta seed", "B")]
        await produce_events(
            broker.bootstrap, settings.topic("listings"), labelled, key_field="item_id"
        )
        await wait_until(
            lambda: sum(worker.prototypes.categories().values()) == 2, 60, "two prototypes"
        )
        burst = [listing(n, f"{'alpha' if n % 2 else 'beta'} item {n}") for n in range(2, 22)]
        burst[7]["title"] = "alpha POISON item"
        burst[12]["title"] = "toy \ud800 car"  # rejected before the model: invalid_unicode
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
        await producer.start()
        try:  # json.dumps: a lone surrogate has a JSON escape but no UTF-8 form
            for event in burst:
                await producer.send(
                    settings.topic("listings"),
                    key=event["item_id"].encode(),
                    value=json.dumps(event).encode(),
                )
        finally:
            await producer.stop()
        out = await read_topic(broker.bootstrap, settings.topic("classifications"), 18)
        letters = await read_topic(broker.bootstrap, settings.topic("dead-letters"), 2)
        valid = {e["item_id"] for i, e in enumerate(burst) if i not in (7, 12)}
        assert {r["item_id"] for r in out} == valid
        for record in out:
            expected = "A" if record["item_id"] in {f"i{n}" for n in range(3, 22, 2)} else "B"
            assert record["top_k"][0]["category"] == expected
        reasons = {
            json.loads(base64.b64decode(d["value_b64"]))["item_id"]: d["reason"] for d in letters
        }
        assert reasons == {burst[7]["item_id"]: "encoder_error", "i14": "invalid_unicode"}
        assert worker.batcher.stats.splits >= 1  # the poisoned batch held valid titles too
    finally:
        await worker.stop()
