"""Per-user preference prototypes, built from the base embeddings of clicked items.

A user has a few prototypes (weighted sums of item embeddings), so a user who buys garden
tools and baby clothes keeps both tastes instead of averaging them into neither. Each click
is O(max_prototypes x d): decay the prototypes to the click's time, then add the item's
embedding to the nearest one, or start a new one when it is far from all of them.

Weights come from the action (a purchase counts more than a view) and decay with event time
(half-life), so the profile follows a user whose taste moves. A redelivered event (same event
id) is recognised from the last ``recent_ids`` ids and not applied twice.

The state is a plain JSON-able dict so a Faust table can hold and changelog it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metaguide.contracts.codec import vector_from_b64, vector_to_b64

__all__ = ["DEFAULT_ACTION_WEIGHTS", "ProfileConfig", "UserProfile", "user_key"]

DEFAULT_ACTION_WEIGHTS: Mapping[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "cart": 4.0,
    "purchase": 8.0,
}


# a prototype's scale below which it is folded into its row (float32 range, see UserProfile)
_MIN_SCALE = 2.0**-40


def user_key(platform: str, user_id: str) -> str:
    """The table key of a user's profile."""
    return f"{platform}\x1f{user_id}"


@dataclass(frozen=True)
class ProfileConfig:
    max_prototypes: int = 3
    merge_threshold: float = 0.5  # cosine to the nearest prototype above which a click joins it
    half_life_s: float = 30 * 86400.0
    action_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_ACTION_WEIGHTS)
    )
    recent_ids: int = 64
    max_bought: int = 256


class UserProfile:
    """One user's prototypes, click count, recent event ids and purchased items.

    A prototype's decayed sum is kept as ``scale * direction-sum``: decaying it to a later
    time multiplies one float, so a click costs one (k x d) product and one row update
    instead of k vector rescales and k norms.
    """

    __slots__ = (
        "_rows",
        "_scales",
        "_sq_norms",
        "weights",
        "times",
        "clicks",
        "recent",
        "bought",
        "last_ts",
    )

    def __init__(self) -> None:
        self._rows: np.ndarray | None = None  # (k, d) float32, one row per prototype
        self._scales: list[float] = []  # sum i = _scales[i] * _rows[i]
        self._sq_norms: list[float] = []  # |_rows[i]|^2
        self.weights: list[float] = []
        self.times: list[float] = []
        self.clicks = 0
        self.recent: list[str] = []
        self.bought: dict[str, int] = {}
        self.last_ts = 0.0

    @property
    def sums(self) -> list[np.ndarray]:
        """The prototypes' weighted sums, decayed to their ``times``."""
        if self._rows is None:
            return []
        return [np.float32(c) * self._rows[i] for i, c in enumerate(self._scales)]

    # -- updates -----------------------------------------------------------------------------

    def apply(
        self,
        embedding: np.ndarray,
        *,
        action: str,
        ts: float,
        event_id: str,
        item_id: str,
        config: ProfileConfig,
    ) -> bool:
        """Fold one click in; False (and nothing changes) when the event id was seen.

        ``embedding`` is the item's base embedding, a unit vector (the encoder normalises
        its outputs; fp16 storage leaves their norms within 1e-3 of 1).
        """
        if event_id in self.recent:
            return False
        weight = float(config.action_weights[action])
        vec = np.asarray(embedding, dtype=np.float32)
        self._decay_to(ts, config.half_life_s)
        k = len(self._scales)
        best, best_sim, best_dot = -1, -2.0, 0.0
        if k:
            dots = self._rows[:k] @ vec  # type: ignore[index]
            for i in range(k):
                sq = self._sq_norms[i]
                dot = float(dots[i])
                sim = dot / math.sqrt(sq) if sq > 0 else -1.0
                if sim > best_sim:
                    best, best_sim, best_dot = i, sim, dot
        if best >= 0 and (best_sim >= config.merge_threshold or k >= config.max_prototypes):
            self._add(best, weight, vec, best_dot)
            self.weights[best] += weight
        else:
            self._new(weight, vec, ts)
        self.clicks += 1
        self.last_ts = max(self.last_ts, ts)
        self.recent.append(event_id)
        del self.recent[: -config.recent_ids]
        if action == "purchase":
            self.bought[item_id] = self.bought.pop(item_id, 0) + 1  # most recent last
            while len(self.bought) > config.max_bought:
                del self.bought[next(iter(self.bought))]
        return True

    def _add(self, i: int, weight: float, vec: np.ndarray, dot: float) -> None:
        """row += a * vec, with |row|^2 updated from the row . vec already computed."""
        a = weight / self._scales[i]
        self._rows[i] += np.float32(a) * vec  # type: ignore[index]
        self._sq_norms[i] += 2.0 * a * dot + a * a

    def _new(self, weight: float, vec: np.ndarray, ts: float) -> None:
        k = len(self._scales)
        if self._rows is None or k == len(self._rows):  # grown a row at a time (at most 3)
            rows = np.zeros((k + 1, len(vec)), dtype=np.float32)
            if self._rows is not None:
                rows[:k] = self._rows[:k]
            self._rows = rows
        self._rows[k] = vec
        self._scales.append(weight)
        self._sq_norms.append(1.0)
        self.weights.append(weight)
        self.times.append(ts)

    def _decay_to(self, ts: float, half_life_s: float) -> None:
        for i, t in enumerate(self.times):
            if ts > t:
                factor = 0.5 ** ((ts - t) / half_life_s)
                self.weights[i] *= factor
                self.times[i] = ts
                scale = self._scales[i] * factor
                if scale < _MIN_SCALE:  # fold it into the row before float32 runs out
                    row = self._rows[i]  # type: ignore[index]
                    row *= np.float32(scale)
                    self._sq_norms[i] = float(row @ row)
                    scale = 1.0
                self._scales[i] = scale

    # -- reads -------------------------------------------------------------------------------

    def prototypes(self, now: float, half_life_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Unit prototype directions (k x d) and their weights decayed to ``now``."""
        if not self.sums:
            return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32)
        mat = np.stack(self.sums).astype(np.float32)
        mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
        ages = np.maximum(0.0, now - np.asarray(self.times))
        weights = np.asarray(self.weights) * 0.5 ** (ages / half_life_s)
        return mat, weights.astype(np.float32)

    # -- state -------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The profile as the users table's changelog holds it: each prototype's sum as its
        direction in fp16 (``h``, base64) and its length (``m``): a direction needs no more
        than the item embeddings it is summed from, and a long-decayed sum, far below fp16's
        smallest number, keeps its direction."""
        prototypes = []
        for total, w, t in zip(self.sums, self.weights, self.times, strict=True):
            norm = float(np.linalg.norm(total))
            unit = total / norm if norm > 0 else total
            prototypes.append({"h": vector_to_b64(unit), "m": norm, "w": w, "t": t})
        return {
            "p": prototypes,
            "n": self.clicks,
            "recent": list(self.recent),
            "bought": dict(self.bought),
            "t": self.last_ts,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> UserProfile:
        profile = cls()
        if not state:
            return profile
        rows, scales = [], []
        for p in state["p"]:
            if "h" in p:
                rows.append(vector_from_b64(p["h"]))
                scales.append(float(p["m"]) or 1.0)  # an empty sum: a zero row, scale 1
            else:  # written before fp16 directions: the sum in float32
                rows.append(vector_from_b64(p["s"], np.float32))
                scales.append(1.0)
        if rows:
            profile._rows = np.stack(rows)
            profile._scales = scales
            profile._sq_norms = [float(r @ r) for r in rows]
        profile.weights = [float(p["w"]) for p in state["p"]]
        profile.times = [float(p["t"]) for p in state["p"]]
        profile.clicks = int(state["n"])
        profile.recent = list(state["recent"])
        profile.bought = dict(state["bought"])
        profile.last_ts = float(state["t"])
        return profile
