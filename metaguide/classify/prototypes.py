"""Category prototypes: a running sum and count per (platform, category), nearest-prototype scoring.

A prototype is the mean of its labelled embeddings (prototypical networks). Keeping the sum
and the count makes the update O(d), exact, and mergeable; the mean is derived on read.
Prototypes live in the encoder's base space, so an adapter swap never rebuilds them. A
snapshot's fine-tuned heads are residuals on the prototypes (``z.dw + db`` added to a
category's score), so a prototype keeps classifying as it learns and a category without a
head is scored by its prototype alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from metaguide.classify.feedback import Novelty

__all__ = [
    "HeadRows",
    "Prototype",
    "CategoryPrototypes",
    "prototype_key",
    "split_key",
    "softmax_scores",
]

log = logging.getLogger("metaguide.prototypes")

RECENT_IDS = 64
RECENT_D2 = 16  # per category: its latest examples' distances to the nearest prototype
_SEP = "\x1f"  # ASCII unit separator: cannot appear in a platform id


class HeadRows(Protocol):
    """Residual heads (a snapshot's): rows of weights and biases for category names, zeros
    for a category without a head."""

    def for_names(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]: ...


def prototype_key(platform: str, category: str) -> str:
    """The table key of a (platform, category) prototype."""
    return f"{platform}{_SEP}{category}"


def split_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`prototype_key`."""
    platform, _, category = key.partition(_SEP)
    return platform, category


@dataclass
class Prototype:
    """Running sum (float64) and count of the embeddings of one category."""

    sum: np.ndarray
    count: int

    @classmethod
    def first(cls, embedding: np.ndarray) -> Prototype:
        return cls(np.asarray(embedding, dtype=np.float64).copy(), 1)

    def add_one(self, embedding: np.ndarray) -> None:
        self.count += 1
        if self.count == 0:
            self.sum = np.zeros_like(self.sum)
        else:
            self.sum += embedding

    def remove_one(self, embedding: np.ndarray) -> None:
        self.count -= 1
        if self.count == 0:
            self.sum = np.zeros_like(self.sum)  # exactly empty, no rounding left over
        else:
            self.sum -= embedding

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.count

    def to_json(self) -> dict[str, Any]:
        # float64 -> Python float -> JSON repr round-trips exactly
        return {"sum": self.sum.tolist(), "count": self.count}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prototype:
        return cls(np.asarray(data["sum"], dtype=np.float64), int(data["count"]))


def softmax_scores(neg_distances: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over negative distances divided by a temperature (stable), along the last
    axis: one row of scores per query."""
    z = neg_distances / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _top_k(names: list[str], probs: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable names of each row of ``probs``, with their probabilities."""
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_probs = np.take_along_axis(probs, top, axis=1)
    return [
        [(names[i], p) for i, p in zip(row, row_probs, strict=True)]
        for row, row_probs in zip(top.tolist(), top_probs.tolist(), strict=True)
    ]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class CategoryPrototypes:
    """Prototypes over any mutable mapping of key -> JSON state (a dict, or a Faust table).

    The mapping is the source of truth (so a changelogged table makes it durable); this class
    keeps a per-platform matrix of means for scoring, refreshed when a count changes.
    """

    def __init__(
        self,
        store: MutableMapping[str, Any] | None = None,
        *,
        temperature: float = 0.05,
        refresh_interval_s: float = 0.0,
    ) -> None:
        self.store: MutableMapping[str, Any] = store if store is not None else {}
        self.temperature = temperature
        # How long a platform's matrix of means may be reused without looking at the store.
        # 0 = check the counts on every call. A store that changes behind our back (a replica
        # fed by a changelog) is then seen at most this late; our own writes are seen at once.
        self.refresh_interval_s = refresh_interval_s
        # per platform: category names, their means (rows) and the means' squared norms
        self._means: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
        self._seen_counts: dict[str, dict[str, int]] = {}
        self._novelty: dict[str, Novelty] = {}
        self._checked_at: dict[str, float] = {}
        # per platform: (the means it was computed from, the transform, transform(means) and
        # their squared norms)
        self._mapped: dict[str, tuple[np.ndarray, Any, tuple[np.ndarray, np.ndarray]]] = {}
        # per platform: (the names, the heads, their rows for those names)
        self._head_rows: dict[str, tuple[list[str], Any, tuple[np.ndarray, np.ndarray]]] = {}

    def update_one(
        self,
        platform: str,
        category: str,
        embedding: np.ndarray,
        event_id: str | None = None,
        sign: int = 1,
        nearest_d2: float | None = None,
    ) -> int | None:
        """Add (``sign`` 1) or take out (-1) one labelled embedding; returns the new count,
        or None for a redelivered event.

        How far an added embedding lay from the nearest prototype as it arrived calibrates
        novelty (the category's last ``RECENT_D2`` are kept): ``nearest_d2``, measured by the
        listing path against every prototype it knew, or the distance to this category's
        prototype before the addition when that is nearer (the caller's view may lag).

        The last ``RECENT_IDS`` event ids of each category are kept in its state, so an event
        redelivered after a crash (at-least-once) is not counted twice. A category taken down
        to no example keeps its state (and its ids) with a zero sum: it is not scored.
        """
        key = prototype_key(platform, category)
        state = self.store.get(key)
        recent: list[str] = [] if state is None else list(state.get("recent", []))
        if event_id is not None:
            if event_id in recent:
                return None
            recent = (recent + [event_id])[-RECENT_IDS:]
        vector = np.asarray(embedding, dtype=np.float64)
        proto = Prototype.from_json(state) if state else Prototype(np.zeros_like(vector), 0)
        distances: list[float] = [] if state is None else list(state.get("d2", []))
        if sign > 0:
            if proto.count > 0:  # not a category's first example: that one is novel
                d2 = float(((vector - proto.mean) ** 2).sum())
                if nearest_d2 is not None and np.isfinite(nearest_d2):
                    d2 = min(d2, nearest_d2)
                distances = (distances + [d2])[-RECENT_D2:]
            proto.add_one(vector)
        else:
            proto.remove_one(vector)
            if proto.count < 0:  # its add comes later: sums commute, the count is not scored
                log.warning("%s took out an example not added yet (event %s)", key, event_id)
        self.store[key] = {**proto.to_json(), "recent": recent, "d2": distances}
        self.invalidate()
        return proto.count

    def get(self, platform: str, category: str) -> Prototype | None:
        state = self.store.get(prototype_key(platform, category))
        return None if state is None else Prototype.from_json(state)

    def categories(self, platform: str | None = None) -> dict[str, int]:
        """Counts by category key (``platform\\x1fcategory``), optionally for one platform."""
        out = {}
        for key, state in list(self.store.items()):
            if platform is None or split_key(key)[0] == platform:
                out[key] = int(state["count"])
        return out

    def invalidate(self) -> None:
        """Forget the cached matrices (after a write to the store)."""
        self._checked_at.clear()

    def _matrix(
        self, platform: str, check: bool = True
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The platform's names, means and squared norms, looked at again in the store
        once ``refresh_interval_s`` has passed since the last check; ``check=False`` does
        not count as one (a caller that must not delay the next scoring's look)."""
        cached = self._means.get(platform)
        now = time.monotonic()
        if (
            cached is not None
            and now - self._checked_at.get(platform, -1e9) < self.refresh_interval_s
        ):
            return cached
        counts = {split_key(k)[1]: c for k, c in self.categories(platform).items() if c > 0}
        if check:
            self._checked_at[platform] = now
        if cached is not None and self._seen_counts.get(platform) == counts:
            return cached
        names = sorted(counts)
        if names:
            means = np.stack(
                [Prototype.from_json(self.store[prototype_key(platform, n)]).mean for n in names]
            ).astype(np.float32)
        else:
            means = np.zeros((0, 0), dtype=np.float32)
        self._means[platform] = (names, means, (means * means).sum(1))
        self._seen_counts[platform] = counts
        self._novelty[platform] = Novelty.of(
            [d for n in names for d in self.store[prototype_key(platform, n)].get("d2", ())]
        )
        return self._means[platform]

    def novelty(self, platform: str) -> Novelty:
        """The platform's novelty calibration (its labelled examples' distances)."""
        self._matrix(platform, check=False)
        return self._novelty[platform]

    def nearest_d2(self, platform: str, embeddings: np.ndarray) -> np.ndarray:
        """Squared distance of each row to the platform's nearest prototype (base space);
        inf with none. Takes the means as last checked."""
        names, means, sq_norms = self._matrix(platform, check=False)
        x = np.asarray(embeddings, dtype=np.float32)
        if not names:
            return np.full(len(x), np.inf)
        d2 = (x * x).sum(1, keepdims=True) - 2.0 * x @ means.T + sq_norms
        return np.maximum(d2.min(axis=1), 0.0).astype(np.float64)

    def novelty_many(self, platform: str, embeddings: np.ndarray) -> np.ndarray:
        """Novelty in [0, 1] of each row: the share of the platform's labelled examples
        that lay nearer a prototype when they arrived than this one lies now (a conformal
        p-value's complement); 0 while too few examples calibrate it."""
        d2 = self.nearest_d2(platform, embeddings)
        return self._novelty[platform].score(d2)

    def support(self, platform: str) -> dict[str, int]:
        """Examples per scored category of a platform (as of the last scoring)."""
        self._matrix(platform, check=False)
        return self._seen_counts[platform]

    def nearest_many(
        self,
        platform: str,
        embeddings: np.ndarray,
        k: int = 3,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        heads: HeadRows | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-k (category, probability) for each row of ``embeddings``; [] with no prototypes.

        ``transform`` (a snapshot's linear adapter) maps the base-space embeddings and means
        into the space where distances are measured; being linear, it maps a mean of base
        embeddings to the mean of the mapped ones, so no prototype is ever rebuilt.
        ``heads`` (a snapshot's fine-tuned residuals, in the mapped space) add ``x.dw + db``
        to each category's negative distance: still one matrix product per batch.
        """
        names, means, sq_norms = self._matrix(platform)
        if not names:
            return [[] for _ in range(len(embeddings))]
        x = np.asarray(embeddings, dtype=np.float32)
        if transform is not None:
            x = transform(x)
            means, sq_norms = self._mapped_means(platform, means, transform)
        if heads is None:
            # squared Euclidean distance, as in prototypical networks
            d2 = (x * x).sum(1, keepdims=True) - 2.0 * x @ means.T + sq_norms
        else:
            dw, db = self._rows(platform, names, heads)
            d2 = (x * x).sum(1, keepdims=True) - x @ (2.0 * means + dw).T + (sq_norms - db)
        return _top_k(names, softmax_scores(-d2, self.temperature), k)

    def _rows(
        self, platform: str, names: list[str], heads: HeadRows
    ) -> tuple[np.ndarray, np.ndarray]:
        """The heads' rows for the platform's current categories, computed once per list of
        categories and heads."""
        cached = self._head_rows.get(platform)
        if cached is not None and cached[0] is names and cached[1] is heads:
            return cached[2]
        rows = heads.for_names(names)
        self._head_rows[platform] = (names, heads, rows)
        return rows

    def _mapped_means(
        self, platform: str, means: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``transform(means)`` and its rows' squared norms, computed once per matrix of
        means and transform."""
        cached = self._mapped.get(platform)
        if cached is not None and cached[0] is means and cached[1] == transform:
            return cached[2]
        mapped = transform(means)
        self._mapped[platform] = (means, transform, (mapped, (mapped * mapped).sum(1)))
        return self._mapped[platform][2]

    def nearest_centred(
        self,
        platforms: Sequence[str],
        embeddings: np.ndarray,
        means: Mapping[str, np.ndarray | None],
        k: int = 3,
    ) -> list[list[tuple[str, float]]]:
        """Top-k (category, probability) for rows of ``platforms[0]``, against the
        categories of every platform in ``platforms`` (a group that shares its categories),
        by cosine between centred vectors (metaguide/classify/centring.py).

        Each platform's mean (``means``; None = not known yet: that platform is not centred)
        is taken out of its prototypes and out of the rows of its own listings; a category
        that several platforms have is their count-weighted mix. Distances are those of unit
        vectors, ``2 - 2 cos``, under the same temperature.
        """
        merged: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for platform in platforms:
            names, proto_means, _ = self._matrix(platform, check=platform == platforms[0])
            if not names:
                continue
            shift = means.get(platform)
            support = self._seen_counts[platform]
            for name, row in zip(names, proto_means, strict=True):
                n = support[name]
                part = n * (row if shift is None else row - shift)
                merged[name] = merged[name] + part if name in merged else part
                counts[name] = counts.get(name, 0) + n
        if not merged:
            return [[] for _ in range(len(embeddings))]
        names = sorted(merged)
        protos = np.stack([merged[n] / counts[n] for n in names]).astype(np.float32)
        x = np.asarray(embeddings, dtype=np.float32)
        shift = means.get(platforms[0])
        if shift is not None:
            x = x - shift
        d2 = 2.0 - 2.0 * _unit_rows(x) @ _unit_rows(protos).T
        return _top_k(names, softmax_scores(-d2, self.temperature), k)

    def nearest_one(
        self,
        platform: str,
        embedding: np.ndarray,
        k: int = 3,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        heads: HeadRows | None = None,
    ) -> list[tuple[str, float]]:
        return self.nearest_many(platform, np.asarray(embedding)[None, :], k, transform, heads)[0]
