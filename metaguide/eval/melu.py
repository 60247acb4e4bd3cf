"""A MeLU-style baseline (Lee et al., KDD 2019): a meta-learned user-preference network.

A small network scores an item for a user from the item's base embedding:
``score(x) = w2 . relu(W1 x + b1) + b2``. MAML learns the initialisation across training
users; a user's own purchases (positives) and sampled items they did not buy (negatives)
adapt the decision layer (``w2``, ``b2``, as MeLU's local update does) in a few gradient steps.
It uses the same item embeddings and the same training purchases as metaguide; its
comparison is in ``metaguide eval recommend`` and ``bench/``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MeLU", "MeLUConfig"]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MeLUConfig:
    hidden: int = 64
    negatives: int = 4  # sampled non-purchased items per positive
    inner_steps: int = 5
    inner_lr: float = 0.5
    outer_lr: float = 1e-3
    meta_batch: int = 16
    epochs: int = 3
    seed: int = 0


class MeLU:
    def __init__(self, dim: int, config: MeLUConfig | None = None) -> None:
        self.config = config or MeLUConfig()
        gen = torch.Generator().manual_seed(self.config.seed)
        h = self.config.hidden
        self.params: Params = {
            "w1": (torch.randn(h, dim, generator=gen) / dim**0.5).requires_grad_(True),
            "b1": torch.zeros(h, requires_grad=True),
            "w2": (torch.randn(h, generator=gen) / h**0.5).requires_grad_(True),
            "b2": torch.zeros(1, requires_grad=True),
        }

    @staticmethod
    def _score(p: Params, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x @ p["w1"].T + p["b1"]) @ p["w2"] + p["b2"]

    def _adapt(self, x: torch.Tensor, y: torch.Tensor) -> Params:
        """Local update of the decision layer on a user's support set (first order)."""
        fast = dict(self.params)
        for _ in range(self.config.inner_steps):
            loss = F.binary_cross_entropy_with_logits(self._score(fast, x), y)
            gw, gb = torch.autograd.grad(loss, [fast["w2"], fast["b2"]])
            fast = {
                **fast,
                "w2": fast["w2"] - self.config.inner_lr * gw.detach(),
                "b2": fast["b2"] - self.config.inner_lr * gb.detach(),
            }
        return fast

    def _examples(
        self, positives: Sequence[int], n_items: int, rng: random.Random
    ) -> tuple[list[int], list[float]]:
        bought = set(positives)
        negatives: list[int] = []
        while len(negatives) < len(positives) * self.config.negatives:
            j = rng.randrange(n_items)
            if j not in bought:
                negatives.append(j)
        return list(positives) + negatives, [1.0] * len(positives) + [0.0] * len(negatives)

    def fit(self, items: np.ndarray, histories: Mapping[str, Sequence[int]]) -> list[float]:
        """Meta-train on users with at least two purchases: support = the earlier half of
        their purchases, query = the later half (each with sampled negatives)."""
        cfg = self.config
        rng = random.Random(cfg.seed)
        x_all = torch.as_tensor(items, dtype=torch.float32)
        users = [u for u, h in histories.items() if len(h) >= 2]
        opt = torch.optim.Adam(self.params.values(), lr=cfg.outer_lr)
        losses = []
        for _ in range(cfg.epochs):
            rng.shuffle(users)
            for start in range(0, len(users), cfg.meta_batch):
                opt.zero_grad()
                total = 0.0
                batch = users[start : start + cfg.meta_batch]
                for user in batch:
                    history = list(histories[user])
                    half = max(1, len(history) // 2)
                    s_idx, s_y = self._examples(history[:half], len(items), rng)
                    q_idx, q_y = self._examples(history[half:], len(items), rng)
                    fast = self._adapt(x_all[s_idx], torch.tensor(s_y))
                    loss = F.binary_cross_entropy_with_logits(
                        self._score(fast, x_all[q_idx]), torch.tensor(q_y)
                    )
                    (loss / len(batch)).backward()
                    total += float(loss.detach()) / len(batch)
                opt.step()
                losses.append(total)
        return losses

    def scores(self, items: np.ndarray, history: Sequence[int], seed: int = 0) -> np.ndarray:
        """Scores of every item for a user with this purchase history (adapted on it)."""
        x_all = torch.as_tensor(items, dtype=torch.float32)
        if history:
            s_idx, s_y = self._examples(list(history), len(items), random.Random(seed))
            params = self._adapt(x_all[s_idx], torch.tensor(s_y))
        else:
            params = self.params
        with torch.no_grad():
            return self._score(params, x_all).numpy()
