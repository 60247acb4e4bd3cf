"""Moves of an item's embedding between prototypes: corrections, re-listings, redelivery."""

from __future__ import annotations

import numpy as np

from metaguide.classify.labels import apply_moves, moves, relabelled
from metaguide.classify.prototypes import CategoryPrototypes
from metaguide.contracts.codec import encode_json, vector_to_b64
from metaguide.contracts.internal import Item, item_record


def _items(n: int, dim: int = 8, seed: int = 0) -> list[np.ndarray]:
    gen = np.random.default_rng(seed)
    return [gen.standard_normal(dim).astype(np.float32) for _ in range(n)]


def _label(
    protos: CategoryPrototypes, items: dict[str, Item], item_id: str, category: str, event: str
) -> None:
    before = items[item_id]
    after = relabelled(before, category, event)
    apply_moves(protos, moves(item_id, before, after))
    items[item_id] = after


def _list(
    protos: CategoryPrototypes, items: dict[str, Item], item_id: str, vector, category, event
):
    before = items.get(item_id)
    after = item_record("shop", category, vector, 0.0, event)
    apply_moves(protos, moves(item_id, before, after))
    items[item_id] = after


def test_a_corrected_run_ends_where_a_run_never_wrong_ends() -> None:
    vectors = _items(30)
    truth = [f"c{i % 3}" for i in range(30)]
    wrong = [f"c{(i + 1) % 3}" if i % 5 == 0 else c for i, c in enumerate(truth)]
    right, corrected = CategoryPrototypes(), CategoryPrototypes()
    items_right: dict[str, Item] = {}
    items_corrected: dict[str, Item] = {}
    for i, v in enumerate(vectors):
        _list(right, items_right, f"i{i}", v, truth[i], f"e{i}")
        _list(corrected, items_corrected, f"i{i}", v, wrong[i], f"e{i}")
    wrong_mean = corrected.get("shop", "c0")
    assert wrong_mean is not None and not np.allclose(wrong_mean.mean, right.get("shop", "c0").mean)
    for i in range(0, 30, 5):
        _label(corrected, items_corrected, f"i{i}", truth[i], f"fix{i}")
    assert corrected.categories() == right.categories()
    for key in right.categories():
        a, b = right.get(*key.split("\x1f")), corrected.get(*key.split("\x1f"))
        assert a is not None and b is not None
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-5)


def test_a_redelivered_correction_moves_the_item_once() -> None:
    (v, w) = _items(2)
    protos = CategoryPrototypes()
    items: dict[str, Item] = {}
    _list(protos, items, "a", v, "hats", "e1")
    _list(protos, items, "b", w, "hats", "e2")
    before = items["a"]
    after = relabelled(before, "scarves", "fix")
    updates = moves("a", before, after)
    assert apply_moves(protos, updates) == 2
    assert apply_moves(protos, updates) == 0  # the owners recognise the ids
    assert moves("a", after, relabelled(after, "scarves", "fix")) == []  # stored: nothing moves
    assert protos.categories() == {"shop\x1fhats": 1, "shop\x1fscarves": 1}
    np.testing.assert_allclose(protos.get("shop", "hats").mean, w.astype(np.float16), atol=1e-6)


def test_a_category_taken_down_to_no_example_is_not_scored() -> None:
    (v, w) = _items(2, seed=3)
    protos = CategoryPrototypes()
    items: dict[str, Item] = {}
    _list(protos, items, "a", v, "hats", "e1")
    _list(protos, items, "b", w, "scarves", "e2")
    assert protos.nearest_one("shop", v, k=3)[0][0] == "hats"
    _label(protos, items, "a", "scarves", "fix")
    assert [c for c, _ in protos.nearest_one("shop", v, k=3)] == ["scarves"]
    state = protos.get("shop", "hats")
    assert state is not None and state.count == 0 and not state.sum.any()


def test_a_relisting_replaces_the_items_embedding_in_its_prototype() -> None:
    (v, w, u) = _items(3, seed=4)
    protos = CategoryPrototypes()
    items: dict[str, Item] = {}
    _list(protos, items, "a", v, "hats", "e1")
    _list(protos, items, "b", u, "hats", "e2")
    _list(protos, items, "a", w, "hats", "e3")  # a new title for the same item
    expected = (w.astype(np.float16).astype(np.float64) + u.astype(np.float16)) / 2
    np.testing.assert_allclose(protos.get("shop", "hats").mean, expected, atol=1e-6)
    assert protos.categories() == {"shop\x1fhats": 2}


def test_an_item_is_stored_in_binary_and_reads_back_whole() -> None:
    (v,) = _items(1, dim=384)
    item = item_record("shop-cn", "母婴", v, 1.7e9, "2f1c6a8e-0b7d-4c61-9d0e-5c1a3b2f4e6d")
    raw = item.encode()
    assert len(raw) < 900  # the fp16 embedding's 768 bytes and about 90 of the rest
    again = Item.decode(raw)
    assert again == item
    np.testing.assert_array_equal(again.vector, v.astype(np.float16).astype(np.float32))
    assert Item.decode(item._replace(category=None).encode()).category is None


def test_an_item_written_as_json_still_reads() -> None:
    (v,) = _items(1)
    old = {"platform": "shop", "category": "hats", "emb": vector_to_b64(v), "ts": 5.0, "src": "e"}
    item = Item.decode(encode_json(old))
    assert (item.platform, item.category, item.ts, item.src) == ("shop", "hats", 5.0, "e")
    np.testing.assert_array_equal(item.vector, v.astype(np.float16).astype(np.float32))
    assert item.emb_b64() == old["emb"]
