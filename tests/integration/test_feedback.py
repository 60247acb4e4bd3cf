"""Labels and corrections end to end: embedded broker over a socket, real encoder, Myntra."""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import numpy as np
import pytest

from metaguide.contracts.internal import Item
from metaguide.eval.myntra import few_shot_split, listing_event, load_myntra
from metaguide.kafka.client import read_to_end
from metaguide.kafka.replay import produce_events
from metaguide.waiting import wait_until_async
from tests.conftest import load_schema, read_topic, wait_until

pytestmark = pytest.mark.integration

KNOWN = ["Watches", "Tshirts", "Socks", "Handbags"]


def _split(categories: list[str], shots: int = 5, test_per_category: int = 2) -> Any:
    listings = [x for x in load_myntra() if x.category in categories]
    return few_shot_split(listings, shots, seed=2, max_test_per_category=test_per_category)


def label(event_id: str, item_id: str, category: str | None, **extra: Any) -> dict[str, Any]:
    event = {"event_id": event_id, "platform": "myntra", "item_id": item_id}
    event.update(category=category, source="reviewer", ts=time.time(), **extra)
    return event


async def _send(
    broker: Any, settings: Any, topic: str, events: list[dict[str, Any]], key: str = "item_id"
) -> None:
    await produce_events(broker.bootstrap, settings.topic(topic), events, key_field=key)


def _counts(worker: Any) -> dict[str, int]:
    return {k.split("\x1f")[1]: n for k, n in worker.prototypes.categories().items()}


async def _learned(broker: Any, settings: Any, worker: Any, split: Any) -> None:
    events = [listing_event(x, labelled=True) for x in split.labelled]
    await _send(broker, settings, "listings", events)
    await wait_until(lambda: sum(_counts(worker).values()) == len(split.labelled), 60, "prototypes")


async def test_a_correction_moves_the_item_and_the_next_similar_listing_follows_it(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    split = _split(KNOWN)
    settings = worker_settings()
    worker = await start_worker(settings)
    await _learned(broker, settings, worker, split)
    watches = worker.prototypes.get("myntra", "Watches")
    # a tie listed as a watch by mistake, then corrected by a reviewer, twice (redelivered)
    tie = next(x for x in load_myntra() if x.category == "Ties")
    mistaken = {**listing_event(tie, labelled=True), "category": "Watches"}
    await _send(broker, settings, "listings", [mistaken])
    await wait_until(lambda: _counts(worker)["Watches"] == 6, 30, "the mistaken label")
    fix = label("fix-1", tie.item_id, "Ties")
    await _send(broker, settings, "labels", [fix, fix])
    skipped = worker.metrics.duplicates_skipped
    labels_topic = settings.topic("labels")
    await wait_until(
        lambda: worker.metrics.value(skipped, topic=labels_topic) == 1, 30, "the second delivery"
    )
    await wait_until(lambda: _counts(worker).get("Ties") == 1, 30, "the correction")
    assert _counts(worker)["Watches"] == 5
    after = worker.prototypes.get("myntra", "Watches")
    np.testing.assert_allclose(after.sum, watches.sum, atol=1e-5)  # as if never mislabelled
    assert Item.decode(worker.items[tie.item_id.encode()]).category == "Ties"
    assert worker.metrics.value(worker.metrics.label_corrections) == 1
    # the same title listed as another item now goes to the corrected category
    again = {**listing_event(tie, labelled=False), "item_id": "another", "event_id": "x2"}
    await _send(broker, settings, "listings", [again])
    (record,) = await read_topic(broker.bootstrap, settings.topic("classifications"), 1)
    assert record["top_k"][0]["category"] == "Ties"
    # the trainer's input holds the tie as a tie only
    from metaguide.meta.trainer import read_labelled

    data = await read_labelled(settings)
    assert sorted(data.categories).count("Watches") == 5
    assert data.categories.count("Ties") == 1


async def test_a_label_waits_for_its_listing_and_a_bulk_label_labels_every_item(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    split = _split(KNOWN[:2])
    settings = worker_settings(label_wait_s=3.0)
    worker = await start_worker(settings)
    await _learned(broker, settings, worker, split)
    early = split.test[0]
    await _send(broker, settings, "labels", [label("early", early.item_id, early.category)])
    await wait_until(lambda: early.item_id in worker.labels.waiting, 30, "the label to wait")
    await _send(broker, settings, "listings", [listing_event(early, labelled=False)])
    await wait_until(
        lambda: _counts(worker)[early.category] == 6, 30, "the label applied on listing"
    )
    assert not worker.labels.waiting
    # a bulk label (a candidate category named at once) reaches each item's partition
    rest = split.test[1:]
    await _send(broker, settings, "listings", [listing_event(x, labelled=False) for x in rest])
    await wait_until(lambda: all(x.item_id.encode() in worker.items for x in rest), 30, "listed")
    bulk = {
        **label("bulk-1", "", "Accessories"),
        "item_ids": [x.item_id for x in rest],
    }
    del bulk["item_id"]
    jsonschema.validate(bulk, load_schema("label"))
    await _send(broker, settings, "labels", [bulk], key="event_id")  # any key: it is sent on
    await wait_until(lambda: _counts(worker).get("Accessories") == len(rest), 30, "the bulk label")
    # a label whose item never comes is dead-lettered once it has waited long enough
    await _send(broker, settings, "labels", [label("lost", "no-such-item", "Socks")])
    letters = await read_topic(broker.bootstrap, settings.topic("dead-letters"), 1)
    assert letters[0]["reason"] == "item_not_found"
    assert "no-such-item" in letters[0]["detail"]


async def test_uncertain_listings_are_sent_for_review_and_novel_ones_gather_as_a_candidate(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    split = _split(KNOWN, shots=6, test_per_category=20)  # 20 arrivals calibrate novelty
    # one review a second at most: a small share of what arrives here
    settings = worker_settings(review_budget_per_hour=3600.0, candidate_min_members=3)
    worker = await start_worker(settings)
    await _learned(broker, settings, worker, split)
    perfumes = [x for x in load_myntra() if x.category == "Perfume and Body Mist"][:8]
    stream = [listing_event(x, labelled=False) for x in split.test + perfumes]
    await _send(broker, settings, "listings", stream)
    out = await read_topic(broker.bootstrap, settings.topic("classifications"), len(stream))
    by_item = {r["item_id"]: r for r in out}
    novel = {r["item_id"] for r in out if r["novel"]}
    perfume_ids = {x.item_id for x in perfumes}
    assert len(novel & perfume_ids) >= 6, [by_item[i]["novelty"] for i in perfume_ids]
    # novelty is a conformal score: at a threshold of 0.9, at most about a tenth of the
    # listings of known categories are called novel (how many, in 80, depends on the order
    # the labelled examples arrived in, which calibrates it: 0 to 3 seen)
    known_novel = len(novel - perfume_ids)
    assert known_novel <= (1 - settings.novelty_threshold) * len(split.test), known_novel
    # the least certain title so far, listed again: nothing seen is more worth a label
    titles = {x.item_id: x.title for x in split.test + perfumes}
    repeated = {t for t in titles.values() if list(titles.values()).count(t) > 1}
    least = min((r for r in out if titles[r["item_id"]] not in repeated), key=lambda r: r["margin"])
    again = [
        {**listing_event(split.test[0], labelled=False), "item_id": f"again-{i}"}
        | {"event_id": f"again-{i}", "title": titles[least["item_id"]]}
        for i in range(2)
    ]
    requests = worker.metrics.review_requests
    asked = worker.metrics.value(requests, platform="myntra")
    if least["item_id"] in perfume_ids:  # copies of a perfume's title: perfumes too
        perfume_ids |= {a["item_id"] for a in again}
    await _send(broker, settings, "listings", again)
    await wait_until(
        lambda: worker.metrics.value(requests, platform="myntra") > asked,
        30,
        "the least certain title asked about",
    )
    reviews = await read_topic(broker.bootstrap, settings.topic("review-requests"), 1)
    median_margin = float(np.median([r["margin"] for r in out]))
    for review in reviews:
        jsonschema.validate(review, load_schema("review_request"))
        assert review["margin"] <= median_margin, (review, median_margin)
    # the perfumes gather into one candidate category
    biggest: dict[str, Any] = {}

    async def gathered() -> bool:  # the candidate's latest record, once most perfumes joined
        for m in await read_to_end(broker.bootstrap, settings.topic("candidate-categories")):
            record = json.loads(m.value)
            if record["size"] >= biggest.get("size", 0):
                biggest.update(record)
        return biggest.get("size", 0) >= 6

    await wait_until_async(gathered, 30, "a candidate of the perfumes")
    candidate = biggest
    jsonschema.validate(candidate, load_schema("candidate_category"))
    members = set(candidate["item_ids"])
    assert len(members & perfume_ids) >= 0.8 * len(members), candidate
    # a reviewer names it with one bulk label, and the category exists from then on
    bulk = {**label("name-it", "", "Perfume and Body Mist"), "item_ids": sorted(members)}
    del bulk["item_id"]
    await _send(broker, settings, "labels", [bulk], key="event_id")
    await wait_until(
        lambda: _counts(worker).get("Perfume and Body Mist") == len(members), 30, "named"
    )


@pytest.mark.slow
async def test_a_correction_followed_by_a_sigkill_and_a_restart_moves_the_item_once(
    broker: Any, tmp_path: Any
) -> None:
    import os

    from tests.integration.state import final_state
    from tests.integration.test_crash_safety import WorkerProcess, _env

    app_id = f"fix-{os.urandom(3).hex()}"
    env = _env(broker, app_id, tmp_path / "state")
    prefix = f"{app_id}."
    split = _split(KNOWN[:2], shots=4)
    moved = split.labelled[0]
    watches = sum(1 for x in split.labelled if x.category == moved.category)

    async def counts() -> dict[str, int]:
        state = await final_state(broker.bootstrap, app_id)  # what a restart recovers
        return {k.split("\x1f")[1]: n for k, (n, _) in state["prototypes"].items()}

    worker = WorkerProcess(env, tmp_path / "w1.log")
    try:
        events = [listing_event(x, labelled=True) for x in split.labelled]
        await produce_events(broker.bootstrap, prefix + "listings", events, key_field="item_id")
        await wait_until_async(
            lambda: _has(counts, lambda c: sum(c.values()) == len(events)), 120, "learned"
        )
        fix = label("fix-kill", moved.item_id, "Bags")
        await produce_events(broker.bootstrap, prefix + "labels", [fix], key_field="item_id")
        await wait_until_async(lambda: _has(counts, lambda c: c.get("Bags") == 1), 60, "moved")
    finally:
        worker.kill()  # at once: the label's offset is most likely not committed yet
    again = WorkerProcess(env, tmp_path / "w2.log")
    try:
        await wait_until(lambda: again.consumed() >= 0, 120, "the restarted worker up")
        await wait_until_async(
            lambda: _has(again_labels_done, lambda done: done, again), 60, "the label read again"
        )
    finally:
        again.stop()
    final = await counts()
    assert final.get("Bags") == 1 and final[moved.category] == watches - 1, final


async def _has(get: Any, test: Any, *args: Any) -> bool:
    return bool(test(await get(*args)))


async def again_labels_done(worker: Any) -> bool:
    """The restarted worker's labels group has committed the end of the labels topic."""
    from tests.integration.conftest import scrape

    lag = {
        k: v
        for k, v in scrape(worker.metrics_port).items()
        if k.startswith("metaguide_consumer_lag_messages") and ".labels" in k
    }
    return bool(lag) and not any(lag.values())
