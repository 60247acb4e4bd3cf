"""Few-shot evaluations on Myntra (``metaguide eval fewshot``).

Held-out categories (new article types) and a held-out platform (cross-domain transfer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaguide.embedding.cache import embed_cached
from metaguide.eval.myntra import Listing, load_myntra
from metaguide.eval.stats import mean_ci
from metaguide.meta.maml import (
    EpisodeSampler,
    MetaConfig,
    Params,
    adapt,
    category_split,
    episode_accuracy,
    fit_logistic,
    logistic_accuracy,
    meta_train,
    proto_loss,
)

__all__ = [
    "TitleSet",
    "eval_crossdomain",
    "eval_fewshot",
    "format_crossdomain_table",
    "format_fewshot_table",
    "load_title_set",
    "load_titles",
    "title_set",
    "unique_titles",
]


@dataclass
class TitleSet:
    """One row per distinct title (the first listing seen with it), with its embedding."""

    listings: list[Listing]
    x: np.ndarray

    @property
    def labels(self) -> list[str]:
        return [x.category for x in self.listings]


def unique_titles(listings: list[Listing]) -> list[Listing]:
    """The first listing of every distinct (case-folded) title: no product on two sides."""
    seen: dict[str, Listing] = {}
    for listing in listings:
        seen.setdefault(listing.title.casefold(), listing)
    return list(seen.values())


def load_titles(path: str | Path) -> list[Listing]:
    return unique_titles(load_myntra(path))


# --------------------------------------------------------------------------- held-out categories

L2_GRID = (1e-2, 1e-3, 1e-4, 1e-5)

EPISODE_KINDS = {  # name -> (n_way, k_shot); None = every held-out category
    "5-way 1-shot": (5, 1),
    "5-way 5-shot": (5, 5),
    "all-way 5-shot": (None, 5),
}


def summary(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Per-episode accuracies: mean, 95% CI, and how many episodes."""
    return {**mean_ci(values), "episodes": len(values)}


def eval_fewshot(
    titles: TitleSet,
    config: MetaConfig,
    *,
    min_items: int = 20,
    q_query: int = 15,
    episodes: int = 600,
    all_way_episodes: int = 100,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Meta-train on some article types, test on held-out ones; every method on the same episodes.

    Methods: raw-embedding prototypes; the MAML adapter adapted on each support set (and its
    initialisation alone); logistic regression fitted on each support set. Each cell is the mean
    query accuracy over the episodes with a 95% confidence interval; ``maml - raw`` is the paired
    difference on the same episodes, the figure that says whether the adapter helps.
    """
    labels = titles.labels
    split = category_split(labels, min_items=min_items, seed=seed)
    if log:
        log(
            f"categories: {len(split['train'])} meta-train, {len(split['val'])} meta-val, "
            f"{len(split['test'])} meta-test (held out); {len(labels)} distinct titles"
        )
    started = time.monotonic()
    report = meta_train(titles.x, labels, split["train"], split["val"], config, progress=log)
    train_s = time.monotonic() - started
    results: dict[str, Any] = {}
    for name, (n_way, k_shot) in EPISODE_KINDS.items():
        n = all_way_episodes if n_way is None else episodes
        eps = EpisodeSampler(
            labels, split["test"], n_way=n_way, k_shot=k_shot, q_query=q_query, seed=seed + 7
        ).episodes(n)
        # the baseline's regularisation is chosen on meta-val episodes of the same kind
        val_eps = EpisodeSampler(
            labels,
            split["val"],
            n_way=min(n_way or 99, len(split["val"])),
            k_shot=k_shot,
            q_query=q_query,
            seed=seed + 8,
        ).episodes(50)
        l2 = max(L2_GRID, key=lambda c: logistic_accuracy(titles.x, val_eps, l2=c).mean())
        raw = episode_accuracy(None, titles.x, eps, temperature=config.temperature)
        init = episode_accuracy(report.adapter, titles.x, eps, temperature=config.temperature)
        maml = episode_accuracy(
            report.adapter,
            titles.x,
            eps,
            steps=config.inner_steps,
            lr=config.inner_lr,
            temperature=config.temperature,
        )
        logreg = logistic_accuracy(titles.x, eps, l2=l2)
        results[name] = {
            "logistic_regression_l2": l2,
            "raw_prototypes": summary(raw),
            "maml_adapter": summary(maml),
            "maml_init_no_adaptation": summary(init),
            "logistic_regression": summary(logreg),
            "maml_minus_raw": summary(maml - raw),
            "n_way": eps[0].n_way,
        }
        if log:
            log(f"{name}: raw {raw.mean():.4f}  maml {maml.mean():.4f}  logreg {logreg.mean():.4f}")
    wins = {
        k: v["maml_minus_raw"]["mean"] - v["maml_minus_raw"]["ci95"] > 0 for k, v in results.items()
    }
    return {
        "data": {"titles": len(labels), "categories": {k: len(v) for k, v in split.items()}},
        "split": split,
        "config": config.to_json(),
        "training": {
            "episodes_run": report.episodes_run,
            "best_episode": report.best_episode,
            "meta_val_raw": round(report.val_accuracy_identity, 4),
            "meta_val_adapter": round(report.val_accuracy, 4),
            "seconds": round(train_s, 1),
            "curve": report.curve,
        },
        "results": results,
        "adapter_beats_raw": wins,
    }


def _cell(row: dict[str, Any], key: str) -> str:
    return f"{row[key]['mean']:.3f} ± {row[key]['ci95']:.3f}"


def format_fewshot_table(report: dict[str, Any]) -> str:
    lines = [
        "held-out categories: "
        + ", ".join(f"{k} {v}" for k, v in report["data"]["categories"].items()),
        f"{'episodes':<16} {'raw protos':>15} {'MAML adapter':>15} {'MAML init only':>15}"
        f" {'logistic reg.':>15} {'MAML - raw':>16}",
    ]
    for name, row in report["results"].items():
        lines.append(
            f"{name:<16} {_cell(row, 'raw_prototypes'):>15} {_cell(row, 'maml_adapter'):>15}"
            f" {_cell(row, 'maml_init_no_adaptation'):>15}"
            f" {_cell(row, 'logistic_regression'):>15}"
            f" {row['maml_minus_raw']['mean']:+.3f} ± {row['maml_minus_raw']['ci95']:.3f}"
        )
    won = [k for k, v in report["adapter_beats_raw"].items() if v]
    lines.append(
        "MAML adapter beats raw prototypes (95% CI of the paired difference above 0) on: "
        + (", ".join(won) if won else "none")
    )
    return "\n".join(lines)


def load_title_set(
    path: str | Path,
    embed_many: Callable[[list[str]], np.ndarray],
    model_id: str,
    cache_dir: str | Path | None,
    *,
    progress: Callable[[str], None] | None = None,
) -> TitleSet:
    """Myntra's distinct titles and their base embeddings (cached on disk)."""
    return title_set(load_titles(path), embed_many, model_id, cache_dir, progress=progress)


def title_set(
    listings: list[Listing],
    embed_many: Callable[[list[str]], np.ndarray],
    model_id: str,
    cache_dir: str | Path | None,
    *,
    progress: Callable[[str], None] | None = None,
) -> TitleSet:
    """Distinct listings and their base embeddings (cached on disk)."""
    x = embed_cached(
        embed_many, model_id, [x.title for x in listings], cache_dir, progress=progress
    )
    return TitleSet(listings, x)


# --------------------------------------------------------------------------- held-out platform


def eval_crossdomain(
    titles: TitleSet,
    config: MetaConfig,
    *,
    target: str = "Women",
    shots: int = 5,
    min_items: int = 20,
    episodes: int = 100,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Myntra's genders as platforms: meta-train on the others, adapt to ``target`` from 5 shots.

    The target's titles of each category (with at least ``min_items`` of them) are split in
    half: an adaptation pool and a test pool. An episode draws ``shots`` labelled titles per
    category from the pool and classifies the whole test pool among all those categories.
    Methods: raw prototypes from the shots; the meta-learned adapter before adaptation (its
    initialisation) and after (a few steps on the shots); and, as the "retrain" reference,
    prototypes and logistic regression on the target's whole adaptation pool.
    """
    platform = [x.attributes.get("gender", "") for x in titles.listings]
    labels = titles.labels
    source = [i for i, p in enumerate(platform) if p != target]
    target_rows = [i for i, p in enumerate(platform) if p == target]
    if not target_rows:
        raise ValueError(f"no titles for target platform {target!r}")
    # meta-train on the source platforms: categories split train/val for early stopping
    src_labels = [labels[i] for i in source]
    src_split = category_split(
        src_labels, min_items=min_items, val_fraction=0.2, test_fraction=0.0, seed=seed
    )
    report = meta_train(
        titles.x[source], src_labels, src_split["train"], src_split["val"], config, progress=log
    )
    adapter = report.adapter

    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[int]] = {}
    for i in target_rows:
        by_cat.setdefault(labels[i], []).append(i)
    cats = sorted(c for c, rows in by_cat.items() if len(rows) >= min_items)
    pool: dict[str, list[int]] = {}
    test_idx, test_y = [], []
    for y, c in enumerate(cats):
        rows = list(rng.permutation(by_cat[c]))
        half = len(rows) // 2
        pool[c] = rows[:half]
        test_idx += rows[half:]
        test_y += [y] * (len(rows) - half)
    xt = torch.as_tensor(titles.x)
    q, qy = xt[torch.tensor(test_idx)], torch.tensor(test_y)
    if log:
        log(
            f"target {target}: {len(cats)} categories, {len(test_idx)} test titles; "
            f"source: {len(source)} titles"
        )

    def accuracy(params: Params, s: torch.Tensor, sy: torch.Tensor) -> float:
        with torch.no_grad():
            _, acc = proto_loss(params, s, sy, q, qy, len(cats), config.temperature)
        return float(acc)

    identity = {"u": torch.zeros(xt.shape[1], 1), "v": torch.zeros(xt.shape[1], 1)}
    accs: dict[str, list[float]] = {"raw": [], "before": [], "after": []}
    for _ in range(episodes):
        s_idx, s_y = [], []
        for y, c in enumerate(cats):
            s_idx += list(rng.choice(pool[c], size=shots, replace=False))
            s_y += [y] * shots
        s, sy = xt[torch.tensor(s_idx)], torch.tensor(s_y)
        init = {k: t.requires_grad_(True) for k, t in adapter.tensors().items()}
        fast = adapt(
            init,
            s,
            sy,
            len(cats),
            steps=config.inner_steps,
            lr=config.inner_lr,
            temperature=config.temperature,
        )
        accs["raw"].append(accuracy(identity, s, sy))
        accs["before"].append(accuracy(adapter.tensors(), s, sy))
        accs["after"].append(accuracy(fast, s, sy))
    full_idx = [i for c in cats for i in pool[c]]
    full_y = torch.tensor([y for y, c in enumerate(cats) for _ in pool[c]])
    fs = xt[torch.tensor(full_idx)]
    # the full-data baseline's regularisation: chosen on a fifth of the pool held out
    order = torch.from_numpy(rng.permutation(len(full_idx)))
    fit, held = order[len(order) // 5 :], order[: len(order) // 5]

    def held_out_accuracy(l2: float) -> float:
        w, b = fit_logistic(fs[fit], full_y[fit], len(cats), l2=l2, iterations=300)
        return float(((fs[held] @ w + b).argmax(1) == full_y[held]).float().mean())

    l2 = max(L2_GRID, key=held_out_accuracy)
    w, b = fit_logistic(fs, full_y, len(cats), l2=l2, iterations=300)
    full_logreg = float(((q @ w + b).argmax(1) == qy).float().mean())
    res = {
        "raw_prototypes_5shot": summary(np.array(accs["raw"])),
        "adapter_before_adaptation_5shot": summary(np.array(accs["before"])),
        "adapter_after_adaptation_5shot": summary(np.array(accs["after"])),
        "after_minus_raw": summary(np.array(accs["after"]) - np.array(accs["raw"])),
        "full_data_raw_prototypes": round(accuracy(identity, fs, full_y), 4),
        "full_data_logistic_regression": round(full_logreg, 4),
        "full_data_logistic_regression_l2": l2,
    }
    if log:
        log(", ".join(f"{k} {v['mean'] if isinstance(v, dict) else v:.4f}" for k, v in res.items()))
    return {
        "target": target,
        "sources": sorted(set(platform) - {target}),
        "categories": cats,
        "data": {
            "source_titles": len(source),
            "target_pool": len(full_idx),
            "target_test": len(test_idx),
        },
        "shots": shots,
        "training": {
            "episodes_run": report.episodes_run,
            "best_episode": report.best_episode,
            "meta_val_raw": round(report.val_accuracy_identity, 4),
            "meta_val_adapter": round(report.val_accuracy, 4),
        },
        "results": res,
    }


def format_crossdomain_table(report: dict[str, Any]) -> str:
    r = report["results"]
    lines = [
        f"target platform {report['target']} (meta-trained on {', '.join(report['sources'])}):"
        f" {len(report['categories'])} categories, {report['data']['target_test']} test titles",
    ]
    for key, value in r.items():
        if key.endswith("_l2"):
            continue
        text = (
            f"{value['mean']:.3f} ± {value['ci95']:.3f}"
            if isinstance(value, dict)
            else (f"{value:.3f}")
        )
        lines.append(f"  {key:<34} {text}")
    return "\n".join(lines)
