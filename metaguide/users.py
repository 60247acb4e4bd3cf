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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metaguide.events import vector_from_b64, vector_to_b64

__all__ = ["DEFAULT_ACTION_WEIGHTS", "ProfileConfig", "UserProfile", "user_key"]

DEFAULT_ACTION_WEIGHTS: Mapping[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "cart": 4.0,
    "purchase": 8.0,
}


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
    """One user's prototypes, click count, recent event ids and purchased items."""

    __slots__ = ("sums", "weights", "times", "clicks", "recent", "bought", "last_ts")

    def __init__(self) -> None:
        self.sums: list[np.ndarray] = []
        self.weights: list[float] = []
        self.times: list[float] = []
        self.clicks = 0
        self.recent: list[str] = []
        self.bought: dict[str, int] = {}
        self.last_ts = 0.0

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
        """Fold one click in; False (and nothing changes) when the event id was seen."""
        if event_id in self.recent:
            return False
        weight = float(config.action_weights[action])
        vec = np.asarray(embedding, dtype=np.float32)
        norm = float(np.linalg.norm(vec))
        if norm > 0:
            vec = vec / norm
        self._decay_to(ts, config.half_life_s)
        best, best_sim = -1, -2.0
        for i, s in enumerate(self.sums):
            s_norm = float(np.linalg.norm(s))
            sim = float(vec @ s) / s_norm if s_norm > 0 else -1.0
            if sim > best_sim:
                best, best_sim = i, sim
        if best >= 0 and (
            best_sim >= config.merge_threshold or len(self.sums) >= config.max_prototypes
        ):
            self.sums[best] = self.sums[best] + weight * vec
            self.weights[best] += weight
        else:
            self.sums.append(weight * vec)
            self.weights.append(weight)
            self.times.append(ts)
        self.clicks += 1
        self.last_ts = max(self.last_ts, ts)
        self.recent.append(event_id)
        del self.recent[: -config.recent_ids]
        if action == "purchase":
            self.bought[item_id] = self.bought.pop(item_id, 0) + 1  # most recent last
            while len(self.bought) > config.max_bought:
                del self.bought[next(iter(self.bought))]
        return True

    def _decay_to(self, ts: float, half_life_s: float) -> None:
        for i, t in enumerate(self.times):
            if ts > t:
                factor = 0.5 ** ((ts - t) / half_life_s)
                self.sums[i] = self.sums[i] * np.float32(factor)
                self.weights[i] *= factor
                self.times[i] = ts

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
        return {
            "p": [
                {"s": vector_to_b64(s, np.float32), "w": w, "t": t}
                for s, w, t in zip(self.sums, self.weights, self.times, strict=True)
            ],
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
        for p in state["p"]:
            profile.sums.append(vector_from_b64(p["s"], np.float32))
            profile.weights.append(float(p["w"]))
            profile.times.append(float(p["t"]))
        profile.clicks = int(state["n"])
        profile.recent = list(state["recent"])
        profile.bought = dict(state["bought"])
        profile.last_ts = float(state["t"])
        return profile
