"""Meta-learning that must help on platforms it was not trained on (``metaguide eval transfer``).

Two targets, every method on the same episodes (all-way, 1, 5 and 10 shots):

- Myntra's held-out article types: meta-training sees other article types only, in episodes of
  one gender each (Myntra's genders stand in for platforms);
- Flipkart, a platform never seen in meta-training (its own catalogue, titles and categories).

Methods: raw prototypes; logistic regression (its L2 chosen on Myntra meta-val episodes of the
same shot count); the metric adapter (MAML, a few steps on each support set); Proto-MAML
heads with the meta-learned adapter; the same heads on the base embeddings; and what the gate
serves: the gate judges each episode from its support set alone (cross-validated within it,
:func:`metaguide.meta.heads.judge`) and serves raw prototypes unless a candidate gains beyond
noise, as a platform with only those labels would be served.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metaguide.eval.fewshot import L2_GRID, TitleSet, summary
from metaguide.meta.heads import HeadConfig, HeadModel, head_accuracy, judge, meta_train_heads
from metaguide.meta.maml import (
    Episode,
    EpisodeSampler,
    MetaConfig,
    category_split,
    episode_accuracy,
    logistic_accuracy,
    meta_train,
)

__all__ = ["METHODS", "eval_transfer", "format_transfer_table"]

METHODS = (
    "raw_prototypes",
    "logistic_regression",
    "maml_adapter",
    "proto_maml",
    "proto_heads_base",
    "gate_serves",
)


def _gate_accuracy(
    candidates: dict[str, HeadModel], x: np.ndarray, episodes: Sequence[Episode], seed: int
) -> tuple[np.ndarray, dict[str, int]]:
    """Per episode: the gate judges from the support set; the chosen method scores the query."""
    out: list[float] = []
    chosen: dict[str, int] = {}
    for i, ep in enumerate(episodes):
        decision = judge(candidates, x[ep.support], ep.support_y, seed=seed + i)["decision"]
        chosen[decision] = chosen.get(decision, 0) + 1
        if decision == "identity":
            out.append(float(episode_accuracy(None, x, [ep])[0]))
        else:
            out.append(float(head_accuracy(candidates[decision], x, [ep])[0]))
    return np.array(out), chosen


def eval_transfer(
    myntra: TitleSet,
    flipkart: TitleSet,
    *,
    shots: Sequence[int] = (1, 5, 10),
    episodes: int = 30,
    min_items: int = 20,
    seed: int = 0,
    heads: HeadConfig | None = None,
    adapter: MetaConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Meta-train once on Myntra's meta-train article types; score every method on Myntra's
    held-out types and on Flipkart, the same episodes for every method."""
    labels = myntra.labels
    genders = [x.attributes.get("gender", "") for x in myntra.listings]
    split = category_split(labels, min_items=min_items, seed=seed)
    started = time.monotonic()
    metric = meta_train(
        myntra.x,
        labels,
        split["train"],
        split["val"],
        adapter or MetaConfig(seed=seed),
        progress=log,
    )
    adapter_s = time.monotonic() - started
    started = time.monotonic()
    report = meta_train_heads(
        myntra.x,
        labels,
        genders,
        split["train"],
        split["val"],
        heads or HeadConfig(seed=seed),
        progress=log,
    )
    heads_s = time.monotonic() - started
    model = report.model
    candidates = {"proto_maml": model, "proto_heads_base": model.without_adapter()}
    mcfg = metric.config
    flip_counts: dict[str, int] = {}
    for label in flipkart.labels:
        flip_counts[label] = flip_counts.get(label, 0) + 1
    targets = {
        "myntra_held_out_types": (myntra, split["test"], 10),
        "flipkart_unseen_platform": (
            flipkart,
            sorted(c for c, n in flip_counts.items() if n >= 15),
            5,
        ),
    }
    results: dict[str, Any] = {}
    for target, (titles, categories, q_query) in targets.items():
        x = titles.x
        results[target] = {"categories": len(categories)}
        for k in shots:
            eps = EpisodeSampler(
                titles.labels,
                categories,
                n_way=None,
                k_shot=k,
                q_query=q_query,
                seed=seed + 100 + k,
            ).episodes(episodes)
            val_eps = EpisodeSampler(
                labels, split["val"], n_way=None, k_shot=k, q_query=10, seed=seed + 8
            ).episodes(20)
            l2 = max(L2_GRID, key=lambda c: logistic_accuracy(myntra.x, val_eps, l2=c).mean())
            accs = {
                "raw_prototypes": episode_accuracy(None, x, eps, temperature=mcfg.temperature),
                "logistic_regression": logistic_accuracy(x, eps, l2=l2),
                "maml_adapter": episode_accuracy(
                    metric.adapter,
                    x,
                    eps,
                    steps=mcfg.inner_steps,
                    lr=mcfg.inner_lr,
                    temperature=mcfg.temperature,
                ),
                "proto_maml": head_accuracy(model, x, eps),
                "proto_heads_base": head_accuracy(candidates["proto_heads_base"], x, eps),
            }
            accs["gate_serves"], chosen = _gate_accuracy(candidates, x, eps, seed)
            raw = accs["raw_prototypes"]
            best_baseline = max(raw.mean(), accs["logistic_regression"].mean())
            results[target][f"{k}-shot"] = {
                **{m: summary(a) for m, a in accs.items()},
                "n_way": eps[0].n_way,
                "logistic_regression_l2": l2,
                "gate_choices": chosen,
                "gate_minus_raw": summary(accs["gate_serves"] - raw),
                "proto_maml_minus_raw": summary(accs["proto_maml"] - raw),
                "proto_maml_minus_best_baseline": round(
                    float(accs["proto_maml"].mean() - best_baseline), 4
                ),
            }
            if log:
                log(
                    f"{target} {k}-shot: "
                    + "  ".join(f"{m} {a.mean():.4f}" for m, a in accs.items())
                    + f"  gate chose {chosen}"
                )
    return {
        "split": {k: len(v) for k, v in split.items()},
        "episodes": episodes,
        "shots": list(shots),
        "training": {
            "metric_adapter_seconds": round(adapter_s, 1),
            "heads_seconds": round(heads_s, 1),
            "heads_episodes_run": report.episodes_run,
            "heads_best_episode": report.best_episode,
            "heads_meta_val_start": round(report.val_accuracy_start, 4),
            "heads_meta_val": round(report.val_accuracy, 4),
            "learned": model.to_json(),
            "heads_config": report.config.to_json(),
        },
        "results": results,
    }


def format_transfer_table(report: dict[str, Any]) -> str:
    names = {
        "raw_prototypes": "raw protos",
        "logistic_regression": "logistic",
        "maml_adapter": "MAML adapter",
        "proto_maml": "Proto-MAML",
        "proto_heads_base": "heads, base",
        "gate_serves": "gate serves",
    }
    lines = []
    for target, res in report["results"].items():
        lines.append(f"{target} ({res['categories']} categories, all-way)")
        lines.append(f"{'shots':<8}" + "".join(f"{names[m]:>16}" for m in METHODS))
        for k in report["shots"]:
            row = res[f"{k}-shot"]
            cells = "".join(f"{row[m]['mean']:>9.3f} ±{row[m]['ci95']:.3f}" for m in METHODS)
            lines.append(f"{k:<8}{cells}")
    return "\n".join(lines)
