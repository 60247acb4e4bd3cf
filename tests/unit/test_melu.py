"""The MeLU-style baseline learns: adapted on a user's few purchases, it ranks their others."""

from __future__ import annotations

import numpy as np

from metaguide.eval.melu import MeLU, MeLUConfig


def _world(seed: int = 0) -> tuple[np.ndarray, dict[str, list[int]]]:
    gen = np.random.default_rng(seed)
    centres = gen.standard_normal((5, 16))
    items = np.concatenate([c + 0.3 * gen.standard_normal((40, 16)) for c in centres])
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    histories = {}
    for u in range(200):
        taste = u % 5  # each user buys from one cluster of 40 items
        histories[f"u{u}"] = list(gen.choice(np.arange(taste * 40, taste * 40 + 40), 8, False))
    return items.astype(np.float32), histories


def _auc(scores: np.ndarray, positives: set[int]) -> float:
    pos = np.array([scores[i] for i in positives])
    neg = np.array([s for i, s in enumerate(scores) if i not in positives])
    return float((pos[:, None] > neg[None, :]).mean())


def test_adapted_on_three_purchases_it_ranks_the_users_cluster_first() -> None:
    items, histories = _world()
    model = MeLU(items.shape[1], MeLUConfig(epochs=2, seed=0))
    losses = model.fit(items, {u: h for u, h in histories.items() if u != "u0"})
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # the outer loop learned something
    held_out = histories["u0"]
    scores = model.scores(items, held_out[:3])
    cluster = set(range(0, 40)) - set(held_out[:3])
    assert _auc(scores, cluster) > 0.9
