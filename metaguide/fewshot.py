"""Few-shot evaluations on Myntra (``metaguide eval fewshot``).

Held-out categories (new article types) and a held-out platform (cross-domain transfer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaguide.data import Listing, load_myntra
from metaguide.embeddings import embed_cached
from metaguide.meta import (
    EpisodeSampler,
    MetaConfig,
    category_split,
    episode_accuracy,
    logistic_accuracy,
    mean_ci,
    meta_train,
)

__all__ = ["TitleSet", "eval_fewshot", "format_fewshot_table", "load_titles", "unique_titles"]


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

EPISODE_KINDS = {  # name -> (n_way, k_shot); None = every held-out category
    "5-way 1-shot": (5, 1),
    "5-way 5-shot": (5, 5),
    "all-way 5-shot": (None, 5),
}


def _summary(values: np.ndarray) -> dict[str, float]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in mean_ci(values).items()}


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
        logreg = logistic_accuracy(titles.x, eps)
        results[name] = {
            "raw_prototypes": _summary(raw),
            "maml_adapter": _summary(maml),
            "maml_init_no_adaptation": _summary(init),
            "logistic_regression": _summary(logreg),
            "maml_minus_raw": _summary(maml - raw),
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
    listings = load_titles(path)
    x = embed_cached(embed_many, model_id, [x.title for x in listings], cache_dir,
                     progress=progress)
    return TitleSet(listings, x)
