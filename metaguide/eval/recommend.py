"""Offline evaluation of recommendations on Online Retail (``metaguide eval recommend``).

Temporal split: every piece of state (user profiles, item statistics, the candidate catalog,
the baselines' counts) is built from purchases before the cut-off; each customer who buys a
catalogued item after it is a test customer, and the items they buy after it are the targets.
Nothing after the cut-off is used to build state. Hyper-parameters are chosen on an earlier
validation cut-off (``--cutoff`` minus one month, scored on that month only), never on the
test window.

Methods, all under the same rule for already-bought items (left out unless repeat purchases
are the norm for the item, judged on the training window):
- metaguide: user prototypes from the encoder's base embeddings, blended with the platform
  prior (:mod:`metaguide.recommend`), the code the worker runs;
- metaguide prior only: the same without the user's prototypes (how much the prior alone
  gives);
- popularity: the most purchased items of the training window, for everyone;
- co-occurrence: items bought in the same invoices as the user's items, P(j | i) summed over
  the user's items, popularity breaking ties (and serving users with no history);
- MeLU-style: a small user-preference network on the same item embeddings, meta-learned
  with MAML over the training customers, adapted to each customer's own purchases
  (:mod:`metaguide.melu`); new customers get the initialisation.

Groups: all test customers; cold start (at most 5 purchases before the cut-off), which also
counts new customers with none; 1-5, the cold users who have some history; and buckets by the
number of prior purchases (0, 1, 2-5, 6-20, over 20).
"""

from __future__ import annotations

import math
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from metaguide.eval.melu import MeLU
from metaguide.eval.retail import Purchase, RetailData
from metaguide.eval.stats import mean_ci
from metaguide.recommend.profiles import UserProfile
from metaguide.recommend.scoring import (
    Catalog,
    RecommendConfig,
    bump_popularity,
    exclude_bought,
    popularity_at,
    recommend,
)

__all__ = [
    "SplitData",
    "eval_recommend",
    "evaluate_split",
    "format_recommend_table",
    "ranking_metrics",
    "temporal_split",
]

COLD_MAX_PURCHASES = 5
# groups by the number of purchases before the cut-off (the cold-start curve)
PRIOR_BUCKETS = [
    ("0 prior purchases", 0, 0),
    ("1 prior purchase", 1, 1),
    ("2-5 prior purchases", 2, 5),
    ("6-20 prior purchases", 6, 20),
    ("over 20 prior purchases", 21, 10**9),
]


@dataclass
class SplitData:
    cutoff: float
    end: float
    train: list[Purchase]
    targets: dict[str, set[str]]  # test customer -> items bought in [cutoff, end)
    catalog_items: list[str]  # first sold before the cut-off


def temporal_split(data: RetailData, cutoff: float, end: float = math.inf) -> SplitData:
    train = [p for p in data.purchases if p.ts < cutoff]
    catalog_items = sorted(c for c, ts in data.first_sold.items() if ts < cutoff)
    known = set(catalog_items)
    targets: dict[str, set[str]] = defaultdict(set)
    for p in data.purchases:
        if cutoff <= p.ts < end and p.item_id in known:
            targets[p.user_id].add(p.item_id)
    return SplitData(cutoff, end, train, dict(targets), catalog_items)


def ranking_metrics(ranked: list[str], relevant: set[str], k: int) -> tuple[float, float]:
    """HR@k and NDCG@k (binary relevance) of one ranked list."""
    gains = [1.0 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant]
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return (1.0 if gains else 0.0), (sum(gains) / ideal if ideal else 0.0)


def _cooccurrence(train: list[Purchase], index: dict[str, int]) -> np.ndarray:
    """P(j | i) over invoices: how often an invoice with i also holds j."""
    baskets: dict[str, set[int]] = defaultdict(set)
    for p in train:
        if p.item_id in index:
            baskets[p.invoice].add(index[p.item_id])
    n = len(index)
    counts = np.zeros((n, n), dtype=np.float32)
    for basket in baskets.values():
        idx = np.fromiter(basket, dtype=np.int64)
        counts[np.ix_(idx, idx)] += 1.0
    bought = np.diag(counts).copy()
    np.fill_diagonal(counts, 0.0)
    return counts / np.maximum(bought, 1.0)[:, None]


_TrainState = tuple[
    dict[str, float], dict[str, tuple[int, int]], dict[str, UserProfile], dict[str, list[str]]
]
_train_cache: dict[tuple[Any, ...], _TrainState] = {}


def _train(
    split: SplitData, embeddings: dict[str, np.ndarray], config: RecommendConfig
) -> _TrainState:
    """Item popularity, purchase counts, user profiles and histories from the training
    purchases, updated one event at a time as the worker does."""
    popularity: dict[str, tuple[float, float]] = {}
    purchases: dict[str, tuple[int, int]] = {}
    profiles: dict[str, UserProfile] = defaultdict(UserProfile)
    history: dict[str, list[str]] = defaultdict(list)
    weight = config.profile.action_weights["purchase"]
    for p in split.train:
        popularity[p.item_id] = bump_popularity(
            popularity.get(p.item_id), weight, p.ts, config.popularity_half_life_s
        )
        profile = profiles[p.user_id]
        n, r = purchases.get(p.item_id, (0, 0))
        purchases[p.item_id] = (n + 1, r + int(p.item_id in profile.bought))
        profile.apply(
            embeddings[p.item_id],
            action="purchase",
            ts=p.ts,
            event_id=f"{p.invoice}-{p.line}",
            item_id=p.item_id,
            config=config.profile,
        )
        history[p.user_id].append(p.item_id)
    now = split.cutoff
    decayed = {
        i: popularity_at(e, now, config.popularity_half_life_s) for i, e in popularity.items()
    }
    return decayed, purchases, dict(profiles), dict(history)


def evaluate_split(
    split: SplitData,
    embeddings: dict[str, np.ndarray],
    first_sold: dict[str, float],
    config: RecommendConfig,
    *,
    k: int = 10,
    with_baselines: bool = True,
) -> dict[str, Any]:
    """Every method on one split; returns metrics per method and group."""
    started = time.perf_counter()
    key = (
        id(split),
        config.popularity_half_life_s,
        config.profile.merge_threshold,
        config.profile.half_life_s,
        config.profile.max_prototypes,
    )
    if key not in _train_cache:
        _train_cache.clear()  # one split and setting at a time is enough for the tuning loop
        _train_cache[key] = _train(split, embeddings, config)
    item_popularity, purchases, profiles, history = _train_cache[key]
    now = split.cutoff
    catalog = Catalog.build(
        ((c, embeddings[c], first_sold[c]) for c in split.catalog_items),
        item_popularity,
        purchases,
        now=now,
        config=config,
    )
    counts = np.array([purchases.get(c, (0, 0))[0] for c in catalog.item_ids])
    pop_score = counts / max(float(counts.max()), 1.0)
    cooc = _cooccurrence(split.train, catalog.index) if with_baselines else None

    def masked_top(scores: np.ndarray, user: str) -> list[str]:
        scores = scores.copy()
        if user in profiles:
            exclude_bought(scores, profiles[user], catalog)
        top = np.argsort(-scores, kind="stable")[:k]
        return [catalog.item_ids[i] for i in top if np.isfinite(scores[i])]

    def metaguide(user: str) -> list[str]:
        profile = profiles[user] if user in profiles else UserProfile()
        return [i for i, _ in recommend(profile, catalog, k, now=now, config=config)]

    def prior_only(user: str) -> list[str]:
        return [i for i, _ in recommend(UserProfile(), catalog, k, now=now, config=config)]

    def popularity(user: str) -> list[str]:
        return masked_top(pop_score, user)

    def cooccurrence(user: str) -> list[str]:
        assert cooc is not None
        idx = [catalog.index[i] for i in history.get(user, ()) if i in catalog.index]
        scores = cooc[idx].sum(axis=0) if idx else np.zeros(len(catalog), np.float32)
        return masked_top(scores + 1e-6 * pop_score, user)

    def in_catalog(user: str) -> list[int]:
        return [catalog.index[i] for i in history.get(user, ()) if i in catalog.index]

    melu_seconds = 0.0
    if with_baselines:
        melu_started = time.perf_counter()
        melu_model = MeLU(catalog.matrix.shape[1])
        melu_model.fit(catalog.matrix, {u: in_catalog(u) for u in history})
        melu_seconds = time.perf_counter() - melu_started

    def melu(user: str) -> list[str]:
        scores = melu_model.scores(catalog.matrix, in_catalog(user), seed=zlib.crc32(user.encode()))
        return masked_top(scores.astype(np.float64), user)

    methods: dict[str, Callable[[str], list[str]]] = {"metaguide": metaguide}
    if with_baselines:
        methods |= {
            "metaguide prior only": prior_only,
            "popularity": popularity,
            "co-occurrence": cooccurrence,
            "MeLU-style": melu,
        }
    groups = {
        "all": list(split.targets),
        "cold (<=5 purchases)": [
            u for u in split.targets if len(history.get(u, ())) <= COLD_MAX_PURCHASES
        ],
        "cold with 1-5 purchases": [
            u for u in split.targets if 1 <= len(history.get(u, ())) <= COLD_MAX_PURCHASES
        ],
    }
    for name, low, high in PRIOR_BUCKETS:
        groups[name] = [u for u in split.targets if low <= len(history.get(u, ())) <= high]
    results: dict[str, Any] = {}
    for name, method in methods.items():
        per_user = {u: ranking_metrics(method(u), split.targets[u], k) for u in split.targets}
        results[name] = {
            group: {
                "users": len(users),
                f"hr@{k}": mean_ci([per_user[u][0] for u in users]),
                f"ndcg@{k}": mean_ci([per_user[u][1] for u in users]),
            }
            for group, users in groups.items()
        }
    return {
        "methods": results,
        "catalog_size": len(catalog),
        "train_purchases": len(split.train),
        "test_customers": len(split.targets),
        "seconds": round(time.perf_counter() - started, 1),
        "melu_train_seconds": round(melu_seconds, 1),
    }


def _month_before(ts: float) -> float:
    t = time.gmtime(ts)
    year, month = (t.tm_year, t.tm_mon - 1) if t.tm_mon > 1 else (t.tm_year - 1, 12)
    return float(time.mktime((year, month, 1, 0, 0, 0, 0, 0, 0)) - time.timezone)


def _parse_date(text: str) -> float:
    return float(time.mktime(time.strptime(text, "%Y-%m-%d")) - time.timezone)


def tuning_grid(base: RecommendConfig) -> Iterable[RecommendConfig]:
    day = 86400.0
    for pop_half_life in (7 * day, 14 * day):
        for recency in (0.0, 0.1):
            for repeat_ratio in (0.0, 0.25, 0.5):
                for blend in (1.0, 3.0):
                    for cap in (0.3, 0.6, 0.9):
                        yield replace(
                            base,
                            popularity_half_life_s=pop_half_life,
                            recency_weight=recency,
                            repeat_min_ratio=repeat_ratio,
                            blend_clicks=blend,
                            max_user_weight=cap,
                        )


def _tuned(config: RecommendConfig) -> dict[str, float]:
    return {
        "popularity_half_life_days": config.popularity_half_life_s / 86400.0,
        "recency_weight": config.recency_weight,
        "repeat_min_ratio": config.repeat_min_ratio,
        "blend_clicks": config.blend_clicks,
        "max_user_weight": config.max_user_weight,
    }


def eval_recommend(
    data: RetailData,
    embed: Callable[[list[str]], np.ndarray],
    *,
    cutoff: str = "2011-11-01",
    k: int = 10,
    tune: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Tune on the validation month before ``cutoff``, then score every method on the test."""
    codes = sorted(data.items)
    started = time.perf_counter()
    vectors = embed([data.items[c] for c in codes])
    embeddings = dict(zip(codes, vectors, strict=True))
    log(f"embedded {len(codes)} item descriptions in {time.perf_counter() - started:.1f}s")
    test_cutoff = _parse_date(cutoff)
    config = RecommendConfig()
    tuning: list[dict[str, Any]] = []
    if tune:
        val_split = temporal_split(data, _month_before(test_cutoff), test_cutoff)
        best = -1.0
        for candidate in tuning_grid(config):
            res = evaluate_split(
                val_split, embeddings, data.first_sold, candidate, k=k, with_baselines=False
            )
            groups = res["methods"]["metaguide"]
            # the target is the cold-start group; the whole population keeps the choice honest
            score = (
                groups["cold (<=5 purchases)"][f"ndcg@{k}"]["mean"]
                + groups["all"][f"ndcg@{k}"]["mean"]
            ) / 2
            tuning.append(_tuned(candidate) | {f"val_mean_cold_all_ndcg@{k}": round(score, 4)})
            log(f"validation {tuning[-1]}")
            if score > best:
                best, config = score, candidate
    test = evaluate_split(
        temporal_split(data, test_cutoff), embeddings, data.first_sold, config, k=k
    )
    return {
        "cutoff": cutoff,
        "k": k,
        "chosen": _tuned(config),
        "tuning": tuning,
        "test": test,
    }


def format_recommend_table(report: dict[str, Any]) -> str:
    k = report["k"]
    lines = [
        f"Online Retail, cut-off {report['cutoff']}; "
        f"chosen on the month before: {report['chosen']}",
        f"| method | group | users | HR@{k} | NDCG@{k} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, groups in report["test"]["methods"].items():
        for group, m in groups.items():
            hr, nd = m[f"hr@{k}"], m[f"ndcg@{k}"]
            lines.append(
                f"| {method} | {group} | {m['users']} | {hr['mean']:.3f} ± {hr['ci95']:.3f} "
                f"| {nd['mean']:.3f} ± {nd['ci95']:.3f} |"
            )
    return "\n".join(lines)
