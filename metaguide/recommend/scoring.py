"""Recommendation scoring: a platform's candidate items against a user's prototypes.

Candidates are bounded: the platform's most popular items and its newest ones. Each is scored
by its best cosine to one of the user's prototypes (a weak prototype pays a small penalty),
blended with a platform prior (decayed popularity, recency). The blend moves from the prior to
the user's own prototypes as their clicks arrive: ``alpha = clicks / (clicks + blend_clicks)``,
capped at ``max_user_weight``. Items the user already bought are left out unless buying that
item again is the norm (most of its purchases are repeats).

Item statistics are mergeable: decayed popularity is kept per item by the owner of the item's
partition (:func:`bump_popularity`), purchases and repeat purchases by the owners of the
buyers' partitions (a repeat is a purchase of an item already in the buyer's profile); a
worker that scores sums what every partition published.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from metaguide.recommend.profiles import ProfileConfig, UserProfile

__all__ = [
    "Catalog",
    "RecommendConfig",
    "is_repeatable",
    "bump_popularity",
    "exclude_bought",
    "popularity_at",
    "recommend",
    "user_weight",
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
    profile: ProfileConfig = ProfileConfig()


def bump_popularity(
    entry: tuple[float, float] | None, weight: float, ts: float, half_life_s: float
) -> tuple[float, float]:
    """An item's decayed popularity (value, as of time) after one more weighted click."""
    if entry is None:
        return weight, ts
    value, since = entry
    if ts >= since:
        return value * 0.5 ** ((ts - since) / half_life_s) + weight, ts
    return value + weight * 0.5 ** ((since - ts) / half_life_s), since  # a late event


def popularity_at(entry: tuple[float, float], now: float, half_life_s: float) -> float:
    value, since = entry
    return value * 0.5 ** (max(0.0, now - since) / half_life_s)


def is_repeatable(counts: tuple[int, int] | None, config: RecommendConfig) -> bool:
    """Buying the item again is the norm: (purchases, repeat purchases) say so."""
    if counts is None or counts[0] < config.repeat_min_purchases:
        return False
    return counts[1] / counts[0] >= config.repeat_min_ratio


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
        popularity: Mapping[str, float],
        purchases: Mapping[str, tuple[int, int]],
        *,
        now: float,
        config: RecommendConfig,
    ) -> Catalog:
        """From (item_id, base embedding, listed ts), popularity as of ``now`` and
        (purchases, repeat purchases) per item."""
        rows = list(items)
        pops = np.array([popularity.get(i, 0.0) for i, _, _ in rows], dtype=np.float64)
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
        repeatable = np.array([is_repeatable(purchases.get(i), config) for i in ids], dtype=bool)
        index = {item_id: n for n, item_id in enumerate(ids)}
        return cls(ids, matrix, prior.astype(np.float32), repeatable, index)

    def __len__(self) -> int:
        return len(self.item_ids)


def user_weight(clicks: int, config: RecommendConfig) -> float:
    """Share of the score that comes from the user's own prototypes (the rest: the prior)."""
    return min(clicks / (clicks + config.blend_clicks), config.max_user_weight)


def exclude_bought(scores: np.ndarray, profile: UserProfile, catalog: Catalog) -> None:
    """Set -inf (in place) for what the user bought, unless buying it again is its norm."""
    for item_id in profile.bought:
        i = catalog.index.get(item_id)
        if i is not None and not catalog.repeatable[i]:
            scores[i] = -np.inf


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
        alpha = user_weight(profile.clicks, config)
        scores = alpha * affinity + (1 - alpha) * scores
    exclude_bought(scores, profile, catalog)
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(catalog.item_ids[i], float(scores[i])) for i in top]
