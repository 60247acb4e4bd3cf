"""Proto-MAML heads: prototype-initialised, fine-tuned, meta-learned, judged, and served."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaguide.classify.prototypes import CategoryPrototypes
from metaguide.meta.heads import (
    HeadConfig,
    HeadModel,
    Residuals,
    fine_tune,
    fit_residuals,
    head_accuracy,
    head_logits,
    judge,
    meta_train_heads,
)
from metaguide.meta.maml import Adapter, EpisodeSampler, category_split, episode_accuracy
from tests.unit.test_meta import DIM, synthetic


def small(**changes: object) -> HeadConfig:
    base = HeadConfig(
        rank=4,
        n_way=10,
        shots=(1, 5),
        q_query=5,
        episodes=400,
        val_every=100,
        val_episodes=20,
        outer_lr=5e-2,
        temperature=1.0,
        step_size=0.5,
        seed=0,
    )
    for k, v in changes.items():
        setattr(base, k, v)
    return base


@pytest.fixture(scope="module")
def trained() -> tuple[np.ndarray, list[str], dict[str, list[str]], HeadModel]:
    """Meta-trained on two groups (platforms) of the synthetic categories."""
    x, labels = synthetic()
    split = category_split(labels, min_items=10, seed=0)
    groups = ["a" if int(label[1:]) % 2 else "b" for label in labels]
    report = meta_train_heads(x, labels, groups, split["train"], split["val"], small())
    return x, labels, split, report.model


def test_heads_before_fine_tuning_classify_exactly_as_the_prototypes() -> None:
    gen = np.random.default_rng(1)
    z = torch.from_numpy(gen.standard_normal((12, 6)).astype(np.float32))
    y = torch.tensor([0, 1, 2] * 4)
    w, b, protos = fine_tune(z, y, 3, steps=0, step_size=0.1, temperature=1.0)
    q = torch.from_numpy(gen.standard_normal((20, 6)).astype(np.float32))
    nearest = torch.cdist(q, protos).argmin(1)
    assert torch.equal((q @ w.T + b).argmax(1), nearest)
    model = HeadModel(Adapter.identity(6, 2), 0.1, 1.0, 0)
    res = fit_residuals(model, z.numpy(), ["x", "y", "z"] * 4)
    assert res.names == ["x", "y", "z"] and not res.dw.any() and not res.db.any()


def test_fine_tuning_fits_the_support_it_is_given() -> None:
    gen = np.random.default_rng(2)
    # two categories whose means sit close but whose examples differ along one direction
    z = np.zeros((20, 4), np.float32)
    z[:, 1:] = gen.standard_normal((20, 3)) * 0.5
    z[:10, 0], z[10:, 0] = 0.3, -0.3
    y = torch.tensor([0] * 10 + [1] * 10)
    before = fine_tune(torch.from_numpy(z), y, 2, steps=0, step_size=1.0, temperature=0.1)
    after = fine_tune(torch.from_numpy(z), y, 2, steps=20, step_size=1.0, temperature=0.1)

    def loss(wb: tuple[torch.Tensor, ...]) -> float:
        w, b = wb[0], wb[1]
        return float(torch.nn.functional.cross_entropy((torch.from_numpy(z) @ w.T + b) / 0.1, y))

    assert loss(after) < loss(before)


def test_meta_learned_heads_beat_raw_prototypes_on_unseen_categories(
    trained: tuple[np.ndarray, list[str], dict[str, list[str]], HeadModel],
) -> None:
    x, labels, split, model = trained
    assert not model.adapter.is_identity()
    eps = EpisodeSampler(labels, split["test"], n_way=10, k_shot=5, q_query=5, seed=3).episodes(40)
    raw = episode_accuracy(None, x, eps, temperature=1.0)
    heads = head_accuracy(model, x, eps)
    assert heads.mean() > raw.mean() + 0.08, (heads.mean(), raw.mean())


def test_meta_training_is_deterministic_for_a_seed() -> None:
    x, labels = synthetic(categories=40)
    split = category_split(labels, min_items=10, seed=0)
    groups = ["g"] * len(labels)
    cfg = small(episodes=40, val_every=20)
    one = meta_train_heads(x, labels, groups, split["train"], split["val"], cfg).model
    two = meta_train_heads(x, labels, groups, split["train"], split["val"], cfg).model
    np.testing.assert_array_equal(one.adapter.u, two.adapter.u)
    assert (one.step_size, one.temperature) == (two.step_size, two.temperature)


def test_the_gate_serves_a_candidate_only_with_a_gain_beyond_noise(
    trained: tuple[np.ndarray, list[str], dict[str, list[str]], HeadModel],
) -> None:
    x, labels, split, model = trained
    candidates = {"adapted": model, "heads": model.without_adapter()}
    rows = [i for i, label in enumerate(labels) if label in split["test"]]
    y = np.array([labels[i] for i in rows])
    good = judge(candidates, x[rows], y)
    assert good["decision"] == "adapted", good
    d = good["candidates"]["adapted"]["difference"]
    assert d["mean"] - d["ci95"] > 0
    # categories without the hidden structure: nothing to gain, raw prototypes stay
    gen = np.random.default_rng(5)
    plain = np.concatenate(
        [gen.standard_normal(DIM) * 0.6 + gen.standard_normal((10, DIM)) * 0.3 for _ in range(12)]
    ).astype(np.float32)
    plain_y = np.repeat(np.arange(12), 10)
    assert judge(candidates, plain, plain_y)["decision"] == "identity"
    # one example per category: cannot be judged
    one = judge(candidates, x[rows][::20], y[::20])
    assert one == {
        "decision": "identity",
        "reason": "too few labels to judge (a category needs two examples)",
        "candidates": {},
    }


def test_served_residual_heads_score_as_the_fine_tuned_heads(
    trained: tuple[np.ndarray, list[str], dict[str, list[str]], HeadModel],
) -> None:
    """The worker's one matrix product (live prototypes, adapter, residuals) ranks as the
    heads fine-tuned in training; a category with no head is scored by its prototype."""
    x, labels, split, model = trained
    cats = split["test"][:6]
    rows = [i for i, label in enumerate(labels) if label in cats]
    support = [i for i in rows if i % 20 < 5]
    query = [i for i in rows if i % 20 >= 5]
    names = [labels[i] for i in support]
    res = fit_residuals(model, x[support], names)
    assert res.dw.any()
    table = CategoryPrototypes(temperature=1.0)
    for i in support:
        table.update_one("shop", labels[i], x[i])
    served = table.nearest_many("shop", x[query], k=1, transform=model.adapter.apply, heads=res)
    index = {c: j for j, c in enumerate(res.names)}
    score = head_logits(
        model, torch.from_numpy(x[support]), torch.tensor([index[c] for c in names]), len(cats)
    )
    with torch.no_grad():
        trained_top = score(torch.from_numpy(x[query])).argmax(1).tolist()
    assert [top[0][0] for top in served] == [res.names[j] for j in trained_top]
    # a category that arrived after the round: no residual, classified from its prototype
    new = split["train"][0]
    for i in [i for i, label in enumerate(labels) if label == new][:5]:
        table.update_one("shop", new, x[i])
    rows_new, bias_new = res.for_names([new])
    assert not rows_new.any() and not bias_new.any()
    own = [i for i, label in enumerate(labels) if label == new][5:10]
    got = table.nearest_many("shop", x[own], k=1, transform=model.adapter.apply, heads=res)
    assert sum(top[0][0] == new for top in got) >= 4


def test_residuals_for_names_in_any_order() -> None:
    res = Residuals(["a", "b"], np.eye(2, dtype=np.float32), np.array([1.0, 2.0], np.float32))
    dw, db = res.for_names(["b", "new", "a"])
    np.testing.assert_array_equal(dw, [[0, 1], [0, 0], [1, 0]])
    np.testing.assert_array_equal(db, [2, 0, 1])


def test_each_platform_is_judged_on_its_own_validation_categories(
    trained: tuple[np.ndarray, list[str], dict[str, list[str]], HeadModel],
) -> None:
    from metaguide.meta.trainer import Labelled, platform_gate, platform_heads

    x, labels, split, model = trained
    gen = np.random.default_rng(5)
    plain = [
        gen.standard_normal(DIM) * 0.6 + gen.standard_normal((20, DIM)) * 0.3 for _ in range(12)
    ]
    xs = np.concatenate([x, *plain, gen.standard_normal((20, DIM))]).astype(np.float32)
    platforms = ["good"] * len(labels) + ["plain"] * 240 + ["tiny"] * 20
    categories = labels + [f"p{i // 20}" for i in range(240)] + ["t0"] * 20
    data = Labelled(xs, platforms, categories)
    val = [f"good\x1f{c}" for c in split["test"]] + [f"plain\x1fp{i}" for i in range(12)]
    val.append("tiny\x1ft0")
    gate = platform_gate(model, data, val)
    assert gate["good"]["decision"] == "adapted", gate["good"]
    assert gate["plain"]["decision"] == "identity", gate["plain"]
    assert gate["tiny"] == {
        "decision": "identity",
        "reason": "too few labels to judge (1 validation categories)",
    }
    adapters, heads = platform_heads(model, data, {"good": "adapted", "plain": "heads"})
    np.testing.assert_array_equal(adapters["good"].u, model.adapter.u)
    assert adapters["plain"].is_identity()
    assert heads["good"].names == sorted(set(labels))
    assert heads["plain"].names == sorted(f"p{i}" for i in range(12))


def test_meta_learning_runs_on_one_torch_thread_and_gives_the_threads_back() -> None:
    from metaguide.meta.maml import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
