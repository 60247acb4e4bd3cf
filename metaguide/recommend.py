"""Recommendation scoring: a platform's candidate items against a user's prototypes.

Candidates are bounded: the platform's most popular items and its newest ones. Each is scored
by its best cosine to one of the user's prototypes (a weak prototype pays a small penalty),
blended with a platform prior (decayed popularity, recency). The blend moves from the prior to
the user's own prototypes as their clicks arrive: ``alpha = clicks / (clicks + blend_clicks)``,
capped at ``max_user_weight``. Items the user already bought are left out unless buying that
item again is the norm (most of its purchases are repeats).

Item statistics (decayed popularity, purchases, repeat purchases) are kept per item by the
worker that owns the item's partition, with :func:`record_item_click`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from metaguide.users import ProfileConfig, UserProfile

__all__ = [
    "Catalog",
    "RecommendConfig",
    "is_repeatable",
    "popularity_at",
    "recommend",
    "record_item_click",
]


@dataclass(frozen=True)
class RecommendConfig:
    max_popular: int = 2000
    max_newest: int = 500
    # defaults chosen on Online Retail's validation month (metaguide eval recommend)
    blend_clicks: float = 1.0
    max_user_weight: float = 0.6
    weak_prototype_penalty: float = 0.05  # times log(weight share)
    recency_weight: float = 0.1
    recency_half_life_s: float = 14 * 86400.0
    popularity_half_life_s: float = 7 * 86400.0
    repeat_min_purchases: int = 3
    # share of an item's purchases that are repeats for buying it again to count as the norm;
    # Online Retail (a wholesaler: customers restock) is best served by 0.0, which never
    # leaves an item with 3+ purchases out
    repeat_min_ratio: float = 0.5
    max_buyers_tracked: int = 64
    profile: ProfileConfig = ProfileConfig()


def _user_hash(user_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=4).digest(), "big")


def record_item_click(
    stats: Mapping[str, Any] | None,
    *,
    user_id: str,
    action: str,
    ts: float,
    config: RecommendConfig,
) -> dict[str, Any]:
    """An item's statistics after one more click: decayed popularity, purchases, repeats.

    Repeats are recognised from a bounded set of buyer hashes: once it is full, repeat
    purchases by buyers not in it are missed (the ratio errs towards "not repeatable").
    """
    weight = config.profile.action_weights[action]
    state: dict[str, Any] = dict(stats) if stats else {"pop": 0.0, "t": ts, "n": 0, "r": 0, "b": []}
    state["pop"] = popularity_at(state, ts, config.popularity_half_life_s) + weight
    state["t"] = max(state["t"], ts)
    if action == "purchase":
        state["n"] += 1
        h = _user_hash(user_id)
        buyers = state["b"]
        if h in buyers:
            state["r"] += 1
        elif len(buyers) < config.max_buyers_tracked:
            state["b"] = [*buyers, h]
    return state


def popularity_at(stats: Mapping[str, Any], now: float, half_life_s: float) -> float:
    age = max(0.0, now - float(stats["t"]))
    return float(stats["pop"]) * 0.5 ** (age / half_life_s)


def is_repeatable(stats: Mapping[str, Any] | None, config: RecommendConfig) -> bool:
    if not stats or stats["n"] < config.repeat_min_purchases:
        return False
    return bool(stats["r"] / stats["n"] >= config.repeat_min_ratio)


@dataclass
class Catalog:
    """One platform's bounded candidate set: unit embeddings, prior, repeatable flags."""

    item_ids: list[str]
    matrix: np.ndarray  # n x d, unit rows
    prior: np.ndarray  # n, in [0, 1]
    repeatable: np.ndarray  # n, bool
    index: dict[str, int]

    @classmethod
    def build(
        cls,
        items: Iterable[tuple[str, np.ndarray, float]],
        stats: Mapping[str, Mapping[str, Any]],
        *,
        now: float,
        config: RecommendConfig,
    ) -> Catalog:
        """From (item_id, base embedding, listed ts) and per-item statistics."""
        rows = list(items)
        pops = np.array(
            [
                popularity_at(stats[i], now, config.popularity_half_life_s) if i in stats else 0.0
                for i, _, _ in rows
            ],
            dtype=np.float64,
        )
        listed = np.array([ts for _, _, ts in rows], dtype=np.float64)
        keep = set(np.argsort(-pops, kind="stable")[: config.max_popular].tolist())
        keep |= set(np.argsort(-listed, kind="stable")[: config.max_newest].tolist())
        order = sorted(keep)
        if not order:
            return cls([], np.zeros((0, 0), np.float32), np.zeros(0), np.zeros(0, bool), {})
        ids = [rows[i][0] for i in order]
        matrix = np.stack([rows[i][1] for i in order]).astype(np.float32)
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        pop = np.log1p(pops[order])
        pop = pop / pop.max() if pop.max() > 0 else pop
        recency = 0.5 ** (np.maximum(0.0, now - listed[order]) / config.recency_half_life_s)
        prior = (1 - config.recency_weight) * pop + config.recency_weight * recency
        repeatable = np.array([is_repeatable(stats.get(i), config) for i in ids], dtype=bool)
        return cls(
            ids, matrix, prior.astype(np.float32), repeatable, {i: n for n, i in enumerate(ids)}
        )

    def __len__(self) -> int:
        return len(self.item_ids)


def recommend(
    profile: UserProfile,
    catalog: Catalog,
    k: int,
    *,
    now: float,
    config: RecommendConfig,
    transform: Any = None,
) -> list[tuple[str, float]]:
    """Top-k (item_id, score) for a user; ``transform`` maps base vectors to the model's space."""
    if not len(catalog):
        return []
    scores = catalog.prior.astype(np.float32).copy()
    protos, weights = profile.prototypes(now, config.profile.half_life_s)
    if len(protos) and profile.clicks > 0:
        items = catalog.matrix
        if transform is not None:
            items, protos = transform(items), transform(protos)
        shares = weights / max(float(weights.sum()), 1e-12)
        penalty = config.weak_prototype_penalty * np.log(np.maximum(shares, 1e-6))
        affinity = (items @ protos.T + penalty[None, :]).max(axis=1)
        alpha = min(profile.clicks / (profile.clicks + config.blend_clicks), config.max_user_weight)
        scores = alpha * affinity + (1 - alpha) * scores
    for item_id in profile.bought:
        i = catalog.index.get(item_id)
        if i is not None and not catalog.repeatable[i]:
            scores[i] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(catalog.item_ids[i], float(scores[i])) for i in top]
