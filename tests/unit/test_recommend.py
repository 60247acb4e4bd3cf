"""User profiles, item statistics and scoring, on small hand-made vectors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaguide.contracts.codec import vector_to_b64
from metaguide.contracts.events import decode_recommendation_request, parse_k
from metaguide.errors import SchemaViolation
from metaguide.eval.recommend import ranking_metrics
from metaguide.eval.retail import click_events, load_online_retail
from metaguide.recommend.profiles import ProfileConfig, UserProfile
from metaguide.recommend.scoring import (
    Catalog,
    RecommendConfig,
    bump_popularity,
    popularity_at,
    recommend,
)

D = 16
DAY = 86400.0


def unit(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    v = np.zeros(D, dtype=np.float32)
    v[i] = 1.0
    if noise:
        v += np.random.default_rng(seed).normal(0, noise, D).astype(np.float32)
    return v / np.linalg.norm(v)


def apply(profile: UserProfile, vec: np.ndarray, n: int, **kw: object) -> bool:
    args = {"action": "click", "ts": 1e9 + n, "event_id": f"e{n}", "item_id": f"i{n}"}
    args.update(kw)
    return profile.apply(vec, config=ProfileConfig(), **args)  # type: ignore[arg-type]


def test_two_tastes_stay_two_prototypes() -> None:
    profile = UserProfile()
    for n in range(4):
        apply(profile, unit(0, 0.1, n), n)  # garden tools
        apply(profile, unit(5, 0.1, n + 10), n + 10)  # baby clothes
    protos, weights = profile.prototypes(1e9 + 20, ProfileConfig().half_life_s)
    assert len(protos) == 2
    assert sorted(int(np.argmax(p)) for p in protos) == [0, 5]
    assert np.allclose(weights, weights[0], rtol=0.01)


def test_a_purchase_weighs_more_than_a_view_and_old_clicks_fade() -> None:
    config = ProfileConfig(merge_threshold=0.0, max_prototypes=1)
    viewed, bought = UserProfile(), UserProfile()
    viewed.apply(unit(0), action="view", ts=1e9, event_id="a", item_id="x", config=config)
    bought.apply(unit(0), action="purchase", ts=1e9, event_id="a", item_id="x", config=config)
    assert bought.weights[0] == 8 * viewed.weights[0]
    _, now = viewed.prototypes(1e9, config.half_life_s)
    _, later = viewed.prototypes(1e9 + config.half_life_s, config.half_life_s)
    assert later[0] == pytest.approx(now[0] / 2)


def test_a_redelivered_event_changes_nothing() -> None:
    profile = UserProfile()
    assert apply(profile, unit(1), 1)
    state = profile.to_state()
    assert not apply(profile, unit(2), 1)  # same event id, even with other content
    assert profile.to_state() == state


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, D - 1), st.sampled_from(["view", "purchase"])), max_size=20)
)
def test_state_round_trips_through_json(clicks: list[tuple[int, str]]) -> None:
    import json

    profile = UserProfile()
    for n, (i, action) in enumerate(clicks):
        apply(profile, unit(i), n, action=action)
    state = profile.to_state()
    again = UserProfile.from_state(json.loads(json.dumps(state)))
    restored = again.to_state()
    # everything but the sums exactly; the sums as fp16 directions and float lengths
    assert [(p["w"], p["t"]) for p in restored["p"]] == [(p["w"], p["t"]) for p in state["p"]]
    assert {k: v for k, v in restored.items() if k != "p"} == {
        k: v for k, v in state.items() if k != "p"
    }
    for before, after in zip(profile.sums, again.sums, strict=True):
        assert np.linalg.norm(after) == pytest.approx(np.linalg.norm(before), rel=1e-3)
        cosine = before @ after / (np.linalg.norm(before) * np.linalg.norm(after))
        assert cosine > 0.9999
    assert len(again.sums) <= ProfileConfig().max_prototypes


def test_a_prototype_follows_its_exact_sum_over_many_decayed_clicks() -> None:
    config = ProfileConfig()
    profile, exact = UserProfile(), np.zeros(D)
    hours = 3600
    for n in range(2000):
        vec = unit(0, noise=0.03, seed=n)  # one taste: every click joins the first prototype
        exact *= 0.5 ** (hours / config.half_life_s) if n else 1.0
        exact += config.action_weights["click"] * vec.astype(np.float64)
        apply(profile, vec, n * hours)
    (total,) = profile.sums
    assert np.linalg.norm(total) == pytest.approx(np.linalg.norm(exact), rel=1e-3)
    assert total @ exact / (np.linalg.norm(total) * np.linalg.norm(exact)) > 0.9999


def test_a_state_written_with_float32_sums_still_loads() -> None:
    profile = UserProfile()
    apply(profile, unit(1), 1)
    apply(profile, unit(2), 2, action="purchase")
    old = profile.to_state()
    for p, total in zip(old["p"], profile.sums, strict=True):
        del p["h"], p["m"]
        p["s"] = vector_to_b64(total, np.float32)
    again = UserProfile.from_state(old)
    for before, after in zip(profile.sums, again.sums, strict=True):
        np.testing.assert_array_equal(before, after)


def test_a_long_idle_profile_keeps_its_direction() -> None:
    profile = UserProfile()
    apply(profile, unit(3), 1)
    idle = int(40 * ProfileConfig().half_life_s)  # the first sum decays to about 1e-12
    apply(profile, unit(5), idle)
    assert 0 < np.linalg.norm(profile.sums[0]) < 1e-10  # far below fp16's smallest number
    again = UserProfile.from_state(profile.to_state())
    first = again.sums[0]
    assert first.argmax() == 3
    assert np.linalg.norm(first) == pytest.approx(np.linalg.norm(profile.sums[0]), rel=1e-3)


def _catalog(
    popularity: dict[str, float] | None = None,
    purchases: dict[str, tuple[int, int]] | None = None,
    now: float = 1e9,
) -> Catalog:
    items = [(f"i{i}", unit(i), now - i * DAY) for i in range(D)]
    return Catalog.build(
        items, popularity or {}, purchases or {}, now=now, config=RecommendConfig()
    )


def test_popularity_decays_and_late_events_count_less() -> None:
    half = RecommendConfig().popularity_half_life_s
    entry = bump_popularity(None, 2.0, 1e9, half)
    entry = bump_popularity(entry, 2.0, 1e9 + half, half)
    assert popularity_at(entry, 1e9 + half, half) == pytest.approx(3.0)
    late = bump_popularity(entry, 2.0, 1e9, half)  # an event older than the last one
    assert late[1] == 1e9 + half and popularity_at(late, 1e9 + half, half) == pytest.approx(4.0)


def test_cold_user_gets_the_prior_and_clicks_move_to_their_taste() -> None:
    config = RecommendConfig()
    catalog = _catalog({"i3": 40.0, "i7": 1.0})
    cold = recommend(UserProfile(), catalog, 3, now=1e9, config=config)
    assert cold[0][0] == "i3"
    profile = UserProfile()
    apply(profile, unit(7), 1)
    warm = recommend(profile, catalog, 3, now=1e9, config=config)
    assert warm[0][0] == "i7"


def test_bought_items_are_left_out_unless_repeats_are_their_norm() -> None:
    config = RecommendConfig()
    profile = UserProfile()
    apply(profile, unit(1), 1, action="purchase", item_id="i1")
    apply(profile, unit(2), 2, action="purchase", item_id="i2")
    # i2: 8 purchases, 4 of them repeats; i1: 8 purchases, 1 repeat
    catalog = _catalog(purchases={"i1": (8, 1), "i2": (8, 4)})
    top = [i for i, _ in recommend(profile, catalog, D, now=1e9, config=config)]
    assert "i1" not in top and "i2" in top and len(top) == D - 1


def test_candidates_are_bounded_to_the_popular_and_the_newest() -> None:
    config = RecommendConfig(max_popular=2, max_newest=3)
    items = [(f"i{i}", unit(i), 1e9 - i * DAY) for i in range(D)]
    catalog = Catalog.build(items, {"i10": 2.0, "i12": 1.0}, {}, now=1e9, config=config)
    assert sorted(catalog.item_ids) == ["i0", "i1", "i10", "i12", "i2"]


def test_ranking_metrics() -> None:
    assert ranking_metrics(["a", "b", "c"], {"c"}, 3) == (1.0, pytest.approx(0.5))
    assert ranking_metrics(["a", "b"], {"z"}, 2) == (0.0, 0.0)
    assert ranking_metrics(["a", "b", "c"], {"a", "b"}, 3)[1] == pytest.approx(1.0)


def test_k_and_requests_are_checked() -> None:
    assert parse_k("10", 100) == 10
    for bad in ("0", "101", "-1", "1.5", "ten", "", True, 2.0):
        with pytest.raises(SchemaViolation):
            parse_k(bad, 100)
    request = decode_recommendation_request(b'{"request_id":"r","platform":"p","user_id":"u"}', 100)
    assert request.k == 10
    with pytest.raises(SchemaViolation) as err:
        decode_recommendation_request(
            b'{"request_id":"r","platform":"p","user_id":"u","k":"5"}', 100
        )
    assert err.value.reason == "wrong_type"


def test_online_retail_noise_is_handled(tmp_path: Path) -> None:
    rows = [
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country",
        "1,85123A,WHITE HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom",
        "1,85123A,WHITE HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom",  # duplicate
        "2,85123A,CREAM HEART,1,2010-12-02 08:00:00,2.55,,United Kingdom",  # no customer
        "3,85123A,damaged,-5,2010-12-03 08:00:00,0,,United Kingdom",  # stock note
        "C4,85123A,WHITE HEART,-1,2010-12-04 08:00:00,2.55,17850,United Kingdom",  # cancelled
        "5,POST,POSTAGE,1,2010-12-05 08:00:00,18,12583,France",  # not a product
        "6,22138,BAKING SET,3,2010-12-06 08:00:00,4.95,12680,France",
        "7,85123A,WHITE HEART,2,2010-12-07 08:00:00,2.55,12680,France",
    ]
    path = tmp_path / "retail.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    data = load_online_retail(path)
    assert data.items == {"85123A": "WHITE HEART", "22138": "BAKING SET"}
    assert [(p.user_id, p.item_id) for p in data.purchases] == [
        ("17850", "85123A"),
        ("12680", "22138"),
        ("12680", "85123A"),
    ]
    assert data.skipped == {
        "duplicate_row": 1,
        "no_customer": 1,
        "not_a_sale": 1,
        "cancellation": 1,
        "not_a_product": 1,
        "no_description": 0,
    }
    events = click_events(data)
    assert len({e["event_id"] for e in events}) == 3
    assert all(e["action"] == "purchase" for e in events)
