"""Centring: each platform's mean embedding taken out before listings and prototypes meet.

Titles of one language (one platform) share a direction in an encoder's space that says
"this language" more than "this product"; a multilingual encoder places a title near its
translation, but the two languages' clouds sit apart. Taking each platform's mean out and
comparing directions (cosine) lets categories learned on one platform's listings classify
another's: English prototypes, Chinese queries (docs/evaluation.md, "Encoders across
languages"). It needs no labels: the mean is a running one over every listing of the platform.

Prototypes stay sums of base embeddings, so centring is applied when scoring, with the means
of that moment: a category's centred prototype is ``sum / count - mean`` of its platform,
and a category that several platforms of a group share is their count-weighted mix.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from metaguide.contracts.internal import Item

__all__ = ["MIN_LISTINGS", "PlatformMeans", "parse_groups"]

MIN_LISTINGS = 20  # a platform's listings before its mean is used (one listing is its own mean)


class PlatformMeans:
    """Running sum and count of every listing's base embedding, per platform (a worker's own
    listings: items are spread over the workers at random, so each one's mean is close to
    the platform's)."""

    def __init__(self, min_listings: int = MIN_LISTINGS) -> None:
        self.min_listings = min_listings
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def add(self, platform: str, rows: np.ndarray) -> None:
        """Count the base embeddings ``rows`` (one per listing) into the platform's mean."""
        rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
        total = rows.sum(axis=0)
        if platform in self._sums:
            self._sums[platform] += total
        else:
            self._sums[platform] = total
        self._counts[platform] = self._counts.get(platform, 0) + len(rows)

    def seed(self, items: Iterable[Item]) -> int:
        """Count stored items in; returns how many."""
        by_platform: dict[str, list[np.ndarray]] = {}
        n = 0
        for item in items:
            by_platform.setdefault(item.platform, []).append(item.vector)
            n += 1
        for platform, rows in by_platform.items():
            self.add(platform, np.stack(rows))
        return n

    def count(self, platform: str) -> int:
        return self._counts.get(platform, 0)

    def mean(self, platform: str) -> np.ndarray | None:
        """The platform's mean embedding (float32), or None below ``min_listings``."""
        count = self._counts.get(platform, 0)
        if count < self.min_listings:
            return None
        return (self._sums[platform] / count).astype(np.float32)


def parse_groups(spec: str) -> dict[str, tuple[str, ...]]:
    """``"shop-en,shop-cn;mall-de,mall-fr"`` -> each platform's group (itself first): the
    platforms whose categories it shares. Raises ValueError on a platform in two groups."""
    out: dict[str, tuple[str, ...]] = {}
    for group in spec.split(";"):
        members = [p.strip() for p in group.split(",") if p.strip()]
        for platform in members:
            if platform in out:
                raise ValueError(f"platform {platform!r} is in two groups")
            out[platform] = (platform, *[p for p in members if p != platform])
    return out
