"""Labels and corrections end to end: embedded broker over a socket, real encoder, Myntra."""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import numpy as np
import pytest

from metaguide.eval.myntra import few_shot_split, listing_event, load_myntra
from metaguide.kafka.replay import produce_events
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
    assert worker.items[tie.item_id.encode()]["category"] == "Ties"
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
    assert len(novel - perfume_ids) <= 2
    # the least certain title so far, listed again: nothing seen is more worth a label
    titles = {x.item_id: x.title for x in split.test + perfumes}
    least = min(out, key=lambda r: r["margin"])
    again = [
        {**listing_event(split.test[0], labelled=False), "item_id": f"again-{i}"}
        | {"event_id": f"again-{i}", "title": titles[least["item_id"]]}
        for i in range(2)
    ]
    requests = worker.metrics.review_requests
    asked = worker.metrics.value(requests, platform="myntra")
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
    (candidate, *_) = await read_topic(broker.bootstrap, settings.topic("candidate-categories"), 1)
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
