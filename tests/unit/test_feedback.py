"""Review priorities and budget, novelty calibration, candidate categories, their records."""

from __future__ import annotations

import json

import jsonschema
import numpy as np

from metaguide.classify.feedback import (
    MIN_CALIBRATION,
    REVIEW_WARMUP,
    Candidate,
    CandidateClusters,
    Novelty,
    ReviewBudget,
    confidence,
    review_priority,
)
from metaguide.classify.prototypes import CategoryPrototypes
from metaguide.contracts.events import decode_listing
from metaguide.contracts.records import candidate_record, classification_record, review_record
from tests.conftest import load_schema

LISTING = decode_listing(
    json.dumps({"event_id": "e1", "platform": "shop", "item_id": "i1", "title": "a", "ts": 2e9})
)


def test_a_small_margin_and_few_examples_make_a_label_worth_more() -> None:
    assert confidence([("a", 0.6), ("b", 0.3)]) == (0.6, 0.6 - 0.3)
    assert confidence([]) == (0.0, 0.0)
    assert review_priority(0.1, 10) > review_priority(0.5, 10)
    assert review_priority(0.1, 1, few_weight=1.0) > review_priority(0.1, 20, few_weight=1.0)
    assert review_priority(0.1, 1) == review_priority(0.1, 20)  # no weight: margin only


def test_the_review_budget_is_spent_on_the_highest_priorities_and_not_exceeded() -> None:
    budget = ReviewBudget(per_hour=60)  # one a minute, five minutes' worth saved up at most
    rng = np.random.default_rng(0)
    asked: list[float] = []
    seen: list[float] = []
    for second in range(3600):  # one listing a second for an hour
        priority = float(rng.random())
        seen.append(priority)
        asked += [priority for _ in budget.offer("shop", [priority], float(second))]
    assert 55 <= len(asked) <= 66  # the hour's budget (plus what was saved up at the start)
    assert np.mean(asked) > np.quantile(seen, 0.9)  # from the top of what arrived
    assert budget.offer("other", [1.0], 0.0) == []  # a platform of its own, warming up


def test_no_request_before_the_warm_up_or_without_budget() -> None:
    assert ReviewBudget(per_hour=0).offer("shop", [1.0] * 100, 0.0) == []
    budget = ReviewBudget(per_hour=3600)
    assert budget.offer("shop", [0.5] * REVIEW_WARMUP, 0.0) == []  # a batch is judged
    assert budget.offer("shop", [0.1, 0.9], 1.0) == [1]  # against those before it


def test_novelty_is_the_share_of_labelled_distances_below() -> None:
    calibration = Novelty.of(list(range(100)))
    np.testing.assert_allclose(calibration.score(np.array([-1.0, 50.0, 1000.0])), [0, 0.5, 1])
    assert calibration.radius(0.25) == np.quantile(np.arange(100), 0.25)
    assert not Novelty.of([1.0] * (MIN_CALIBRATION - 1)).score(np.array([9.0])).any()


def test_prototypes_calibrate_novelty_from_labelled_arrivals_only_after_a_first_example() -> None:
    protos = CategoryPrototypes()
    gen = np.random.default_rng(0)
    for i in range(30):
        v = gen.standard_normal(4)
        d2 = float(protos.nearest_d2("shop", v[None, :])[0])
        protos.update_one("shop", f"c{i % 3}", v, f"e{i}", nearest_d2=d2)
    calibration = protos.novelty("shop")
    assert len(calibration.distances) == 27  # each category's first arrival is not counted
    far, near = np.full((1, 4), 50.0), protos.get("shop", "c0").mean[None, :]
    assert protos.novelty_many("shop", far)[0] == 1.0
    assert protos.novelty_many("shop", near)[0] < 0.2


def test_candidates_gather_near_listings_and_split_far_ones() -> None:
    clusters = CandidateClusters()
    a = clusters.add("1", "red hat", np.array([1.0, 0.0]), radius_d2=0.5)
    assert clusters.add("2", "red cap", np.array([0.9, 0.1]), radius_d2=0.5) is a
    b = clusters.add("3", "blue sock", np.array([-1.0, 0.0]), radius_d2=0.5)
    assert b is not a
    assert clusters.add("2", "red cap", np.array([0.9, 0.1]), radius_d2=0.5) is a  # again
    assert [m[0] for m in a.members] == ["1", "2"]
    restored = CandidateClusters(
        [Candidate.from_json(json.loads(json.dumps(c.to_json()))) for c in clusters.candidates]
    )
    assert [(c.id, c.size) for c in restored.candidates] == [(a.id, 2), (b.id, 1)]
    np.testing.assert_allclose(restored.candidates[0].centre, [0.95, 0.05], atol=1e-6)
    assert restored.add("4", "x", np.array([0.0, 5.0]), radius_d2=0.5).id not in (a.id, b.id)


def test_feedback_records_match_their_schemas() -> None:
    top = [("hats", 0.7), ("caps", 0.2)]
    record = classification_record(LISTING, top, "base", margin=0.5, novelty=0.93, novel=True)
    jsonschema.validate(record, load_schema("classification"))
    review = review_record(LISTING, top, "base", margin=0.5, novelty=0.1, priority=0.7)
    jsonschema.validate(review, load_schema("review_request"))
    jsonschema.validate(
        candidate_record("shop", "cand-1", ["i1", "i2"], ["red hat"], 2),
        load_schema("candidate_category"),
    )


def test_a_platform_keeps_a_bounded_number_of_candidates_and_members() -> None:
    clusters = CandidateClusters(max_candidates=2, max_members=2)
    big = clusters.add("1", "a", np.array([0.0, 0.0]), radius_d2=0.5)
    for i in range(2, 5):
        clusters.add(str(i), "a", np.array([0.0, 0.01 * i]), radius_d2=0.5)
    assert big.size == 4 and len(big.members) == 2
    small = clusters.add("9", "b", np.array([5.0, 0.0]), radius_d2=0.5)
    clusters.add("10", "c", np.array([-5.0, 0.0]), radius_d2=0.5)
    assert clusters.evicted == [small]
    assert len(clusters.candidates) == 2 and big in clusters.candidates
