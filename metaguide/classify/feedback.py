"""Which listings most need a label, and which belong to no known category.

- **Confidence**: the top score and its margin over the second (the scores are the softmax
  over negative squared distances to the prototypes).
- **Review priority** (margin sampling, Scheffer et al. 2001): a small margin means the
  listing lies between two prototypes, where one label moves the boundary most. Optionally
  weighted by how few examples the top category has (its prototype is the noisiest).
- **Novelty**: how far a listing lies from its nearest prototype, as the share of a platform's
  labelled examples that lay nearer their own category's prototype when they arrived (an
  empirical p-value, as in conformal prediction). So 0.95 means "farther than 95% of what was
  labelled on this platform", whatever the platform's spread.
- **Candidate categories**: novel listings of a platform gathered by leader clustering (each
  joins the nearest candidate within its reach, or starts one); the reach is the squared
  distance within which the platform's labelled examples usually lie from their prototype,
  widened for a candidate of few members (its centre is rougher).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metaguide.contracts.codec import vector_from_b64, vector_to_b64

__all__ = [
    "CandidateClusters",
    "Novelty",
    "ReviewBudget",
    "confidence",
    "review_priority",
]

MIN_CALIBRATION = 20  # labelled distances a platform needs before anything is called novel
REVIEW_WINDOW = 1000  # recent priorities a platform's review threshold is taken from
REVIEW_WARMUP = 50  # priorities seen before the first request


def confidence(top_k: Sequence[tuple[str, float]]) -> tuple[float, float]:
    """(top score, margin to the second) of a classification's top-k; (0, 0) for none."""
    if not top_k:
        return 0.0, 0.0
    top = top_k[0][1]
    second = top_k[1][1] if len(top_k) > 1 else 0.0
    return top, top - second


def review_priority(margin: float, support: int, few_weight: float = 0.0) -> float:
    """How much a label for this listing is worth, in [0, 1 + few_weight]: 1 - margin, times
    ``1 + few_weight / support`` (the top category's examples: few means a noisy prototype)."""
    return (1.0 - margin) * (1.0 + few_weight / max(1, support))


@dataclass
class _Spending:
    tokens: float
    last: float
    recent: deque[tuple[float, float]]  # (time, priority)


class ReviewBudget:
    """Spends each platform's budget of review requests per hour on the listings most worth
    a label.

    A token bucket holds the budget (refilled at ``per_hour`` x ``share`` an hour, at most
    five minutes' worth saved up); a listing is asked about when a token is left and its
    priority is in the top fraction of the platform's recent priorities that the budget can
    afford at the current arrival rate. ``share`` is this worker's share of the platform's
    listings (the share of the listing partitions it holds): the workers together spend the
    budget.
    """

    def __init__(self, per_hour: float, share: float = 1.0) -> None:
        self.per_hour = per_hour
        self.share = share
        self._platforms: dict[str, _Spending] = {}

    def offer(self, platform: str, priorities: Sequence[float], now: float) -> list[int]:
        """The indices of the listings (a batch arriving at ``now``, with these priorities)
        to ask about, best first."""
        rate = self.per_hour * self.share / 3600.0  # requests a second
        capacity = max(1.0, rate * 300.0)
        spending = self._platforms.get(platform)
        if spending is None:
            spending = _Spending(capacity, now, deque(maxlen=REVIEW_WINDOW))
            self._platforms[platform] = spending
        spending.tokens = min(capacity, spending.tokens + (now - spending.last) * rate)
        spending.last = now
        recent = spending.recent
        # a batch is judged against what arrived before it
        if len(recent) < REVIEW_WARMUP or spending.tokens < 1.0 or rate <= 0:
            recent.extend((now, p) for p in priorities)
            return []
        span = now - recent[0][0]
        arrivals = (len(recent) + len(priorities)) / span if span > 0 else float("inf")
        share = min(1.0, rate / arrivals)
        threshold = float(np.quantile([p for _, p in recent], 1.0 - share))
        recent.extend((now, p) for p in priorities)
        chosen = []
        for i in sorted(range(len(priorities)), key=lambda i: -priorities[i]):
            if priorities[i] < threshold or spending.tokens < 1.0:
                break
            spending.tokens -= 1.0
            chosen.append(i)
        return chosen


@dataclass
class Novelty:
    """A platform's calibration: sorted squared distances of labelled examples to their own
    category's prototype (before they joined it)."""

    distances: np.ndarray

    @classmethod
    def of(cls, distances: Sequence[float]) -> Novelty:
        return cls(np.sort(np.asarray(distances, dtype=np.float64)))

    @property
    def ready(self) -> bool:
        return len(self.distances) >= MIN_CALIBRATION

    def score(self, nearest_d2: np.ndarray) -> np.ndarray:
        """Novelty in [0, 1] of listings at these squared distances from their nearest
        prototype; 0 while the platform has too few labelled distances."""
        d = np.asarray(nearest_d2, dtype=np.float64)
        if not self.ready:
            return np.zeros_like(d)
        return np.searchsorted(self.distances, d, side="left") / len(self.distances)

    def radius(self, quantile: float = 0.5) -> float:
        """The squared distance within which ``quantile`` of labelled examples lay."""
        return float(np.quantile(self.distances, quantile)) if len(self.distances) else 0.0


@dataclass
class Candidate:
    """A cluster of novel listings: its running sum, its size, and its first members (item
    id, title, and the squared distance to the centre at which it joined)."""

    id: str
    sum: np.ndarray
    size: int = 0
    members: list[tuple[str, str, float]] = field(default_factory=list)

    @property
    def centre(self) -> np.ndarray:
        return self.sum / max(1, self.size)

    def nearest_titles(self, n: int = 5) -> list[str]:
        """The titles of the ``n`` members that joined nearest the centre."""
        return [title for _, title, _ in sorted(self.members, key=lambda m: m[2])[:n]]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sum": vector_to_b64(self.sum, np.float32),
            "size": self.size,
            "members": self.members,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        members = [(str(i), str(t), float(d)) for i, t, d in data["members"]]
        total = vector_from_b64(data["sum"], np.float32).astype(np.float64)
        return cls(str(data["id"]), total, int(data["size"]), members)


class CandidateClusters:
    """One platform's candidate categories (leader clustering of its novel listings)."""

    def __init__(
        self,
        candidates: list[Candidate] | None = None,
        *,
        max_candidates: int = 64,
        max_members: int = 50,
    ) -> None:
        self.candidates = candidates or []
        self.max_candidates = max_candidates
        self.max_members = max_members  # members listed (the size counts them all)
        self._next = 1 + max((int(c.id.rpartition("-")[2]) for c in self.candidates), default=0)
        self.evicted: list[Candidate] = []

    def add(self, item_id: str, title: str, vector: np.ndarray, radius_d2: float) -> Candidate:
        """Put a novel listing into the candidate whose centre is nearest relative to its
        reach (``radius_d2`` times 1 + 1/size), or into a new one (a listed member stays
        where it is: redelivery). A new candidate beyond ``max_candidates`` evicts the
        smallest (in ``evicted``)."""
        for c in self.candidates:
            if any(m[0] == item_id for m in c.members):
                return c
        x = np.asarray(vector, dtype=np.float64)
        best, best_ratio = None, 1.0
        for c in self.candidates:
            # a point lies about (1 + 1/n) sigma^2 from the mean of n points of its kind: a
            # young candidate's centre is a rough one, so it reaches farther
            ratio = float(((c.centre - x) ** 2).sum()) / (radius_d2 * (1 + 1 / c.size))
            if ratio <= best_ratio:
                best, best_ratio = c, ratio
        best_d2 = 0.0 if best is None else float(((best.centre - x) ** 2).sum())
        if best is None:
            best = Candidate(f"cand-{self._next}", np.zeros_like(x))
            self._next += 1
            self.candidates.append(best)
            if len(self.candidates) > self.max_candidates:
                smallest = min(self.candidates[:-1], key=lambda c: c.size)
                self.candidates.remove(smallest)
                self.evicted.append(smallest)
        best.sum += x
        best.size += 1
        if len(best.members) < self.max_members:
            best.members.append((item_id, title, best_d2))
        return best
