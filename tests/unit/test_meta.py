"""MAML on the adapter, on synthetic tasks whose classes differ along hidden directions.

Every item is a class centre in a hidden 4-dimensional subspace of R^64 plus isotropic noise in
all 64 dimensions, so raw nearest-prototype distances are dominated by the 60 nuisance
dimensions. A metric that stretches the hidden subspace classifies far better; meta-training
has to find it from the training categories and carry it to unseen test categories.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaguide.meta.maml import (
    Adapter,
    EpisodeSampler,
    MetaConfig,
    adapt,
    category_split,
    episode_accuracy,
    logistic_accuracy,
    meta_train,
)

DIM, HIDDEN = 64, 4


def synthetic(seed: int = 0, categories: int = 120, per: int = 20) -> tuple[np.ndarray, list[str]]:
    gen = np.random.default_rng(seed)
    basis = np.linalg.qr(gen.standard_normal((DIM, HIDDEN)))[0]
    rows, labels = [], []
    for c in range(categories):
        centre = basis @ (gen.standard_normal(HIDDEN) * 0.6)
        rows.append(centre + gen.standard_normal((per, DIM)) * 0.3)
        labels += [f"c{c}"] * per
    return np.concatenate(rows).astype(np.float32), labels


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list[str], dict[str, list[str]]]:
    x, labels = synthetic()
    return x, labels, category_split(labels, min_items=10, seed=0)


def config(**changes: object) -> MetaConfig:
    base = MetaConfig(
        rank=4,
        episodes=400,
        val_every=100,
        val_episodes=40,
        temperature=1.0,
        outer_lr=5e-2,
        inner_lr=0.1,
        inner_steps=3,
        seed=0,
    )
    for k, v in changes.items():
        setattr(base, k, v)
    return base


def test_category_split_is_disjoint_and_deterministic() -> None:
    labels = [f"c{i % 30}" for i in range(600)] + ["rare"] * 3
    a = category_split(labels, min_items=10, seed=1)
    b = category_split(labels, min_items=10, seed=1)
    assert a == b
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(labels)
    assert "rare" in a["train"]  # too small to test on, still useful to train on


def test_episodes_keep_support_and_query_apart() -> None:
    labels = [f"c{i % 8}" for i in range(160)]
    sampler = EpisodeSampler(labels, [f"c{i}" for i in range(8)], n_way=5, k_shot=3, q_query=4)
    for ep in sampler.episodes(20):
        assert not set(ep.support) & set(ep.query)
        assert len(ep.support) == 15 and len(ep.query) == 20
        for idx, y in zip(ep.support, ep.support_y, strict=True):
            assert labels[idx] == labels[ep.support[list(ep.support_y).index(y)]]
    with pytest.raises(ValueError, match="10-way episodes"):
        EpisodeSampler(labels, [f"c{i}" for i in range(8)], n_way=10, k_shot=3, q_query=4)


def test_untrained_adapter_is_the_identity() -> None:
    adapter = Adapter.identity(DIM, 8, seed=3)
    x = np.random.default_rng(0).standard_normal((5, DIM)).astype(np.float32)
    assert adapter.is_identity()
    np.testing.assert_array_equal(adapter.apply(x), x)


@pytest.mark.parametrize("second_order", [False, True])
def test_meta_training_beats_the_unadapted_baseline_on_unseen_categories(
    data: tuple[np.ndarray, list[str], dict[str, list[str]]], second_order: bool
) -> None:
    x, labels, split = data
    report = meta_train(x, labels, split["train"], split["val"], config(second_order=second_order))
    test = EpisodeSampler(labels, split["test"], n_way=5, k_shot=5, q_query=10, seed=9)
    episodes = test.episodes(100)
    raw = episode_accuracy(None, x, episodes, temperature=1.0).mean()
    untrained = episode_accuracy(Adapter.identity(DIM, 4), x, episodes, temperature=1.0).mean()
    trained = episode_accuracy(report.adapter, x, episodes, steps=3, lr=0.1, temperature=1.0).mean()
    assert untrained == pytest.approx(raw)
    assert trained > raw + 0.05, (raw, trained)
    assert report.val_accuracy > report.val_accuracy_identity
    assert not report.adapter.is_identity()


def test_meta_training_is_deterministic_for_a_seed(
    data: tuple[np.ndarray, list[str], dict[str, list[str]]],
) -> None:
    x, labels, split = data
    a = meta_train(x, labels, split["train"], split["val"], config(episodes=40, val_every=20))
    b = meta_train(x, labels, split["train"], split["val"], config(episodes=40, val_every=20))
    np.testing.assert_array_equal(a.adapter.u, b.adapter.u)
    assert a.curve == b.curve


def test_second_order_inner_loop_keeps_the_graph() -> None:
    x = torch.randn(10, 6)
    y = torch.tensor([0, 1] * 5)
    params = {k: t.requires_grad_(True) for k, t in Adapter.identity(6, 2).tensors().items()}
    params["u"] = (params["u"] + 0.1).detach().requires_grad_(True)
    fast = adapt(params, x, y, 2, steps=2, lr=0.1, temperature=1.0, create_graph=True)
    # d(fast u)/d(v) exists only through the differentiated inner gradient
    (g,) = torch.autograd.grad(fast["u"].sum(), params["v"], allow_unused=True)
    assert g is not None and torch.count_nonzero(g) > 0
    first = adapt(params, x, y, 2, steps=2, lr=0.1, temperature=1.0, create_graph=False)
    (g1,) = torch.autograd.grad(first["u"].sum(), params["v"], allow_unused=True)
    assert g1 is None


def test_logistic_regression_baseline_learns(
    data: tuple[np.ndarray, list[str], dict[str, list[str]]],
) -> None:
    x, labels, split = data
    episodes = EpisodeSampler(labels, split["test"], n_way=5, k_shot=5, q_query=10).episodes(20)
    assert logistic_accuracy(x, episodes).mean() > 0.4  # chance is 0.2


def test_trainer_input_counts_a_redelivered_event_once() -> None:
    from metaguide.meta.trainer import Labelled

    gen = np.random.default_rng(0)
    a, b = gen.standard_normal(8).astype(np.float32), gen.standard_normal(8).astype(np.float32)
    redelivered = a + np.float32(1e-3)  # the same listing embedded again in another batch
    rows = [
        ("e1", "shop", "hats", a),
        ("e2", "shop", "hats", b),
        ("e1", "shop", "hats", redelivered),
        ("e3", "shop", "hats", a.copy()),  # the same title listed again: the same vector
    ]
    data = Labelled.from_rows(rows, {})
    assert len(data.labels) == 2
    assert data.window["duplicates_dropped"] == 2


def test_trainer_input_learns_from_the_corrected_label_not_the_wrong_one() -> None:
    from metaguide.meta.trainer import Labelled

    gen = np.random.default_rng(1)
    a, b = gen.standard_normal(8).astype(np.float32), gen.standard_normal(8).astype(np.float32)
    rows = [
        ("e1/out", "shop", "hats", a, -1),  # the correction's removal read before the add
        ("e1", "shop", "scarves", a, 1),
        ("e0", "shop", "hats", a, 1),
        ("e2", "shop", "hats", b, 1),
        ("e1/out", "shop", "hats", a, -1),  # redelivered: counted once
    ]
    data = Labelled.from_rows(rows, {})
    assert sorted(data.categories) == ["hats", "scarves"]
    assert np.array_equal(data.x[data.categories.index("scarves")], a)
    assert np.array_equal(data.x[data.categories.index("hats")], b)
