"""Category prototypes: exact incremental means, nearest-prototype scoring, idempotence."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from metaguide.classify.prototypes import CategoryPrototypes, Prototype, split_key

_vectors = st.integers(1, 40).flatmap(
    lambda n: arrays(np.float32, (n, 8), elements=st.floats(-1, 1, width=32))
)


@settings(max_examples=200, deadline=None)
@given(_vectors)
def test_incremental_prototype_equals_batch_mean(vectors: np.ndarray) -> None:
    protos = CategoryPrototypes()
    for i, v in enumerate(vectors):
        protos.update_one("shop", "cat", v, event_id=f"e{i}")
    proto = protos.get("shop", "cat")
    assert proto is not None and proto.count == len(vectors)
    np.testing.assert_allclose(
        proto.mean, vectors.astype(np.float64).mean(0), rtol=1e-9, atol=1e-12
    )


def test_state_round_trips_exactly_through_json() -> None:
    rng = np.random.default_rng(0)
    proto = Prototype.first(rng.normal(size=16))
    proto.add_one(rng.normal(size=16))
    again = Prototype.from_json(proto.to_json())
    assert again.count == 2 and np.array_equal(again.sum, proto.sum)


def test_nearest_prototype_and_calibrated_scores() -> None:
    protos = CategoryPrototypes(temperature=0.5)
    protos.update_one("shop", "a", np.array([1.0, 0.0]))
    protos.update_one("shop", "b", np.array([0.0, 1.0]))
    protos.update_one("shop", "c", np.array([-1.0, 0.0]))
    top = protos.nearest_one("shop", np.array([0.9, 0.1]), k=3)
    assert [c for c, _ in top] == ["a", "b", "c"]
    scores = [s for _, s in top]
    assert abs(sum(scores) - 1.0) < 1e-6 and scores == sorted(scores, reverse=True)
    assert protos.nearest_one("other-shop", np.array([1.0, 0.0])) == []


def test_a_category_exists_from_its_first_example() -> None:
    protos = CategoryPrototypes()
    protos.update_one("shop", "a", np.array([1.0, 0.0]))
    assert protos.nearest_one("shop", np.array([0.0, 1.0]), k=1)[0][0] == "a"
    protos.update_one("shop", "new", np.array([0.0, 1.0]))
    assert protos.nearest_one("shop", np.array([0.0, 1.0]), k=1)[0][0] == "new"


def test_a_redelivered_event_is_not_counted_twice() -> None:
    protos = CategoryPrototypes()
    assert protos.update_one("shop", "a", np.array([1.0, 0.0]), event_id="e1") == 1
    assert protos.update_one("shop", "a", np.array([1.0, 0.0]), event_id="e1") is None
    assert protos.update_one("shop", "a", np.array([0.0, 1.0]), event_id="e2") == 2
    assert protos.categories() == {"shop\x1fa": 2}
    assert split_key(next(iter(protos.categories()))) == ("shop", "a")


def test_an_adapter_applied_to_base_prototypes_equals_prototypes_of_adapted_embeddings() -> None:
    from metaguide.meta.maml import Adapter

    gen = np.random.default_rng(4)
    adapter = Adapter(
        gen.standard_normal((8, 2)).astype(np.float32),
        gen.standard_normal((8, 2)).astype(np.float32),
    )
    base, adapted = CategoryPrototypes(temperature=1.0), CategoryPrototypes(temperature=1.0)
    for category in ("a", "b", "c"):
        for row in gen.standard_normal((4, 8)).astype(np.float32):
            base.update_one("p", category, row)
            adapted.update_one("p", category, adapter.apply(row[None, :])[0])
    query = gen.standard_normal((5, 8)).astype(np.float32)
    got = base.nearest_many("p", query, k=3, transform=adapter.apply)
    want = adapted.nearest_many("p", adapter.apply(query), k=3)
    for g, w in zip(got, want, strict=True):
        assert [c for c, _ in g] == [c for c, _ in w]
        np.testing.assert_allclose([p for _, p in g], [p for _, p in w], rtol=1e-3, atol=1e-5)
    plain = base.nearest_many("p", query, k=3)
    assert plain != got  # the adapter does change the answer
