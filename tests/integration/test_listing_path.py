"""The listing path end to end: embedded broker over a socket, real encoder, real Myntra data."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import jsonschema
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from metaguide.contracts.codec import encode_json
from metaguide.contracts.internal import Item
from metaguide.eval.myntra import few_shot_split, listing_event, load_myntra
from metaguide.kafka.replay import produce_events
from metaguide.waiting import wait_until_async
from tests.conftest import committed_offsets, load_schema, read_topic, wait_until
from workers.corrections.fetch_wait import EMBEDDED_FETCH_MAX_WAIT_MS

pytestmark = pytest.mark.integration

KNOWN = ["Watches", "Sunglasses", "Tshirts", "Socks", "Handbags", "Casual Shoes"]
NEW = "Ties"


def _split(categories: list[str], shots: int = 5, test_per_category: int = 4) -> Any:
    listings = [x for x in load_myntra() if x.category in categories]
    return few_shot_split(listings, shots, seed=1, max_test_per_category=test_per_category)


async def _send(broker: Any, settings: Any, events: list[dict[str, Any]]) -> None:
    await produce_events(broker.bootstrap, settings.topic("listings"), events, key_field="item_id")


async def _labelled(broker: Any, settings: Any, worker: Any, split: Any) -> None:
    await _send(broker, settings, [listing_event(x, labelled=True) for x in split.labelled])
    await wait_until(
        lambda: sum(worker.prototypes.categories().values()) == len(split.labelled),
        60,
        "labelled listings folded into prototypes",
    )


async def _learned(broker: Any, worker_settings: Any, start_worker: Any, split: Any) -> Any:
    """A fresh worker that has folded ``split.labelled`` into its prototypes."""
    settings = worker_settings()
    worker = await start_worker(settings)
    await _labelled(broker, settings, worker, split)
    return settings, worker


async def test_labelled_then_unlabelled_listings_are_classified(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    split = _split(KNOWN)
    settings, worker = await _learned(broker, worker_settings, start_worker, split)
    await _send(broker, settings, [listing_event(x, labelled=False) for x in split.test])
    out = await read_topic(broker.bootstrap, settings.topic("classifications"), len(split.test))
    truth = {x.item_id: x.category for x in split.test}
    schema = load_schema("classification")
    for record in out:
        jsonschema.validate(record, schema)
        assert record["model_version"] == "base"
    assert {r["item_id"] for r in out} == set(truth)
    correct = sum(r["top_k"][0]["category"] == truth[r["item_id"]] for r in out)
    assert correct / len(out) >= 0.8, [
        (r["top_k"][0]["category"], truth[r["item_id"]]) for r in out
    ]


async def test_a_category_first_seen_mid_stream_is_predicted_next(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings, worker = await _learned(broker, worker_settings, start_worker, _split(KNOWN))
    new = _split([NEW], shots=3, test_per_category=5)
    await _send(broker, settings, [listing_event(x, labelled=True) for x in new.labelled])
    await wait_until(
        lambda: (
            worker.prototypes.get("myntra", NEW) is not None
            and worker.prototypes.get("myntra", NEW).count == 3
        ),
        60,
        "the new category's prototype",
    )
    await _send(broker, settings, [listing_event(x, labelled=False) for x in new.test])
    out = await read_topic(broker.bootstrap, settings.topic("classifications"), len(new.test))
    predicted = [r["top_k"][0]["category"] for r in out]
    assert predicted.count(NEW) >= len(new.test) - 1, predicted


async def test_a_malformed_event_goes_to_dead_letters_and_the_stream_goes_on(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    split = _split(KNOWN[:3], test_per_category=2)
    settings, worker = await _learned(broker, worker_settings, start_worker, split)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        topic = settings.topic("listings")
        await producer.send_and_wait(topic, key=b"bad-1", value=b'{"event_id": "x", "title": ')
        bad = {**listing_event(split.test[0], labelled=False), "price": -3}
        await producer.send_and_wait(topic, key=bad["item_id"].encode(), value=encode_json(bad))
        for x in split.test[1:]:
            event = listing_event(x, labelled=False)
            await producer.send_and_wait(topic, key=x.item_id.encode(), value=encode_json(event))
    finally:
        await producer.stop()
    letters = await read_topic(broker.bootstrap, settings.topic("dead-letters"), 2)
    by_reason = {d["reason"]: d for d in letters}
    assert set(by_reason) == {"invalid_json", "out_of_range"}
    assert by_reason["invalid_json"]["source_topic"] == topic
    assert by_reason["invalid_json"]["offset"] >= 0
    import base64

    assert (
        base64.b64decode(by_reason["invalid_json"]["value_b64"]) == b'{"event_id": "x", "title": '
    )
    assert "price" in by_reason["out_of_range"]["detail"]
    for letter in letters:
        jsonschema.validate(letter, load_schema("dead_letter"))
    out = await read_topic(broker.bootstrap, settings.topic("classifications"), len(split.test) - 1)
    assert {r["item_id"] for r in out} == {x.item_id for x in split.test[1:]}


def _snapshot(worker: Any) -> dict[str, tuple[int, np.ndarray]]:
    out = {}
    for key in worker.prototypes.categories():
        platform, category = key.split("\x1f")
        proto = worker.prototypes.get(platform, category)
        out[key] = (proto.count, proto.sum.copy())
    return out


async def test_tables_are_recovered_after_a_restart(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    split = _split(KNOWN)
    settings, worker = await _learned(broker, worker_settings, start_worker, split)
    # let the last offsets be committed (commit interval 0.5 s) before stopping
    await _committed_all(broker, settings, len(split.labelled))
    before = _snapshot(worker)
    items_before = len(worker.items)
    await worker.stop()

    again = await start_worker(settings)
    await wait_until(lambda: _snapshot(again).keys() == before.keys(), 30, "prototypes recovered")
    after = _snapshot(again)
    for key, (count, total) in before.items():
        assert after[key][0] == count
        assert np.array_equal(after[key][1], total), key
    assert len(again.items) == items_before
    # recovered from the changelogs, not recomputed: the restarted worker read no listing again
    consumed = again.metrics.value(again.metrics.events_consumed, topic=settings.topic("listings"))
    assert consumed == 0
    # and once recovered it no longer fetches its active tables' changelogs, nor the
    # assignor's leader topic (workers/corrections/fetch_only_read.py); global tables and
    # streams it still does
    fetcher = again.app.consumer._thread._consumer  # aiokafka's consumer, in Faust's thread
    app_id = settings.app_id
    tables = ("items", "category-sums", "users", "summaries", "candidates")
    unread = {f"{app_id}-{name}-changelog" for name in tables} | {f"{app_id}-__assignor-__leader"}
    paused = {tp for tp in fetcher.assignment() if tp.topic in unread}
    assert len(paused) == len(tables) * settings.partitions + 1
    await wait_until(lambda: fetcher.paused() == paused, 10, "unread partitions paused")
    fetched = {tp.topic for tp in fetcher.assignment() - fetcher.paused()}
    assert {settings.topic("listings"), f"{app_id}-category-prototypes-changelog"} <= fetched


async def _committed_all(broker: Any, settings: Any, records: int) -> None:
    """Wait until the listings' committed offsets add up to ``records`` (every partition
    starts at 0), as the group's committed offsets on the broker say."""
    topic = settings.topic("listings")

    async def done() -> bool:
        committed = await committed_offsets(broker.bootstrap, settings.app_id, topic)
        return sum(committed.values()) == records

    await wait_until_async(done, 30, f"{records} listings committed")


async def test_readiness_is_false_until_recovery_completes_then_true(
    broker: Any, worker_settings: Any, start_worker: Any, encoder: Any
) -> None:
    import aiohttp

    from workers.app import create_worker
    from workers.ops import readiness

    split = _split(KNOWN + [NEW], shots=20, test_per_category=0)
    settings, worker = await _learned(broker, worker_settings, start_worker, split)
    await _committed_all(broker, settings, len(split.labelled))
    items = len(worker.items)
    await worker.stop()

    again = create_worker(settings, encoder=encoder)
    seen: list[tuple[int, bool, int]] = []  # (HTTP status, tables recovered, items known)
    starting = asyncio.ensure_future(again.app.start())
    url = f"http://127.0.0.1:{settings.web_port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def probe() -> bool:
                try:
                    async with http.get(f"{url}/readyz") as resp:
                        body = await resp.json()
                        seen.append(
                            (resp.status, body["checks"]["tables_recovered"], len(again.items))
                        )
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until_async(probe, 60, "readyz to answer 200")
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
        await starting
        assert any(status == 503 and not recovered for status, recovered, _ in seen), seen
        first_ok = next(i for i, (status, _, _) in enumerate(seen) if status == 200)
        assert all(status == 503 for status, _, _ in seen[:first_ok])
        assert seen[first_ok][2] == items  # ready means every item is back
        assert all(readiness(again.ctx).values())
    finally:
        starting.cancel()
        await again.stop()


async def test_a_worker_started_on_a_backlog_classifies_all_of_it(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    # Two Faust corrections (workers/corrections/flow_control.py and seek.py): without the
    # first, events fetched by the end of recovery were cleared and lost until the next
    # restart; without the second, events delivered while the consumer sought back to its
    # committed offsets were processed twice and the partition's commits then crawled.
    split = _split(KNOWN, test_per_category=1000)
    settings, worker = await _learned(broker, worker_settings, start_worker, split)
    await _committed_all(broker, settings, len(split.labelled))
    await worker.stop()
    backlog = [listing_event(x, labelled=False) for x in split.test][:600]
    await _send(broker, settings, backlog)

    again = await start_worker(settings)
    out = await read_topic(broker.bootstrap, settings.topic("classifications"), len(backlog))
    assert {r["item_id"] for r in out} == {e["item_id"] for e in backlog}
    metrics = again.metrics
    consumed = metrics.value(metrics.events_consumed, topic=settings.topic("listings"))
    assert consumed == len(backlog)  # each once: nothing of the backlog was seen before
    # every partition's offsets start at 0: committed offsets add up to the records in it
    await _committed_all(broker, settings, len(split.labelled) + len(backlog))


class _GatedModel:
    """A stand-in model whose calls wait for the test to open its gate: a backlog then
    queues in front of it for as long as the test needs."""

    model_id = "stand-in"
    dim = 4
    streams = 2

    def __init__(self) -> None:
        self.gate = threading.Event()

    def embed_many(self, texts: list[str]) -> np.ndarray:
        if not self.gate.wait(timeout=120):
            raise TimeoutError("the test never opened the gate")
        return np.tile(np.array([1.0, 0, 0, 0], dtype=np.float32), (len(texts), 1))


async def test_the_fetch_wait_goes_long_while_the_encoder_is_saturated_then_back(
    broker: Any, worker_settings: Any
) -> None:
    from workers.app import create_worker

    settings = worker_settings()
    model = _GatedModel()
    worker = create_worker(settings, encoder=model)
    await worker.start()
    try:
        now = time.time()
        backlog = [
            {"event_id": f"e{i}", "platform": "myntra", "item_id": f"i{i}", "ts": now}
            | {"title": f"listing number {i}"}
            for i in range(600)
        ]
        await _send(broker, settings, backlog)
        metrics = worker.metrics
        # the model holds its first batches: the rest of the backlog waits for it, and the
        # consumers' fetch wait goes long (workers/corrections/fetch_wait.py)
        await wait_until(
            lambda: metrics.value(metrics.fetch_waits_lengthened) >= 1, 30, "a long fetch wait"
        )
        assert metrics.value(metrics.fetch_wait) > EMBEDDED_FETCH_MAX_WAIT_MS / 1000
        model.gate.set()
        await read_topic(broker.bootstrap, settings.topic("classifications"), len(backlog))
        # the backlog is done: back to the short wait, so a lone listing is not held
        await wait_until(
            lambda: metrics.value(metrics.fetch_wait) == EMBEDDED_FETCH_MAX_WAIT_MS / 1000,
            5,
            "the idle wait",
        )
    finally:
        model.gate.set()
        await worker.stop()


class _SlowFirstModel:
    """A stand-in model for one property: a call on a text with "slow" in it ends only once
    a call on another text has ended."""

    model_id = "stand-in"
    dim = 4
    streams = 2  # two model calls side by side, as the worker runs on two cores

    def __init__(self) -> None:
        self.other_done = threading.Event()

    def embed_many(self, texts: list[str]) -> np.ndarray:
        if any("slow" in text for text in texts):
            if not self.other_done.wait(timeout=30):
                raise TimeoutError("no other model call ended")
        else:
            self.other_done.set()
        rows = [[1.0, 0, 0, 0] if "slow" in text else [0, 1.0, 0, 0] for text in texts]
        return np.array(rows, dtype=np.float32)


async def test_two_listings_of_one_item_are_applied_in_their_topic_order(
    broker: Any, worker_settings: Any
) -> None:
    from workers.app import create_worker

    settings = worker_settings(max_batch_size=1)  # each listing a model call of its own
    worker = create_worker(settings, encoder=_SlowFirstModel())
    await worker.start()
    try:
        first = {"event_id": "e1", "platform": "myntra", "item_id": "same", "ts": time.time()}
        first.update(title="a slow first version", category="Watches")
        second = {**first, "event_id": "e2", "title": "the second one", "category": "Socks"}
        await _send(broker, settings, [first, second])
        # the second listing's model call ended first; it was applied after the first anyway:
        # the item moved from Watches to Socks
        moved = {"myntra\x1fWatches": 0, "myntra\x1fSocks": 1}
        await wait_until(lambda: worker.prototypes.categories() == moved, 30, "both listings")
        assert Item.decode(worker.items[b"same"]).category == "Socks"
    finally:
        await worker.stop()
