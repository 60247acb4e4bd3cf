"""``metaguide eval feedback``: labels asked for, corrections applied, new categories found.

Every label goes through the worker's own code: an ``items`` record per title
(``contracts.internal.item_record``), the moves of its embedding between prototypes
(``classify.labels.moves``) folded by ``CategoryPrototypes.update_one``; review priorities,
novelty and candidate categories come from ``classify.feedback``. Titles are Myntra's distinct
titles (no title on two sides of a split), categories with at least ``min_items`` of them.

- **Active learning**: each category's titles split into a pool and a fixed test set; start
  from one labelled title per category; each round labels ``budget`` more from the pool,
  chosen by the review rule or at random (same seed, same start); test accuracy after each
  round. The saving is the share of labels the rule spares to reach the random arm's final
  accuracy.
- **Corrections**: the same titles labelled right, and labelled with 20% wrong and then
  corrected: the prototypes must end equal, and so the accuracy.
- **Novelty**: a fifth of the categories held out entirely; the others learn from
  ``shots`` titles each; their test titles and the held-out categories' titles stream in
  mixed. AUROC of the novelty score for "belongs to no known category"; the listings above the
  threshold are clustered into candidate categories: purity of those with at least
  ``min_members`` members, and the share of held-out categories discovered (a candidate of at
  least ``min_members`` members, at least 80% of them from one held-out category).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from metaguide.classify.feedback import CandidateClusters, confidence, review_priority
from metaguide.classify.labels import apply_moves, moves, relabelled
from metaguide.classify.prototypes import CategoryPrototypes
from metaguide.contracts.internal import Item, item_record
from metaguide.eval.fewshot import TitleSet
from metaguide.eval.stats import mean_ci

__all__ = ["eval_feedback", "format_feedback_table"]

PLATFORM = "myntra"
THRESHOLDS = (0.5, 0.8, 0.9, 0.95)


class Catalogue:
    """Items and prototypes as a worker holds them, labelled through the worker's code."""

    def __init__(self, x: np.ndarray, temperature: float) -> None:
        self.x = x
        self.prototypes = CategoryPrototypes(temperature=temperature)
        self.items: dict[int, Item] = {}
        self._events = 0

    def label(self, i: int, category: str | None) -> None:
        self._events += 1
        event_id = f"e{self._events}"
        before = self.items.get(i)
        if before is None:
            after = item_record(PLATFORM, category, self.x[i], 0.0, event_id)
        else:
            after = relabelled(before, category, event_id)
        d2 = float(self.prototypes.nearest_d2(PLATFORM, self.x[i : i + 1])[0])
        apply_moves(self.prototypes, moves(str(i), before, after, d2))
        self.items[i] = after

    def classify(self, rows: np.ndarray) -> list[list[tuple[str, float]]]:
        return self.prototypes.nearest_many(PLATFORM, self.x[rows], k=3)

    def accuracy(self, rows: np.ndarray, truth: list[str]) -> float:
        top = self.classify(rows)
        return float(np.mean([bool(t) and t[0][0] == y for t, y in zip(top, truth, strict=True)]))

    def means(self) -> dict[str, np.ndarray]:
        out = {}
        for key, count in self.prototypes.categories(PLATFORM).items():
            proto = self.prototypes.get(*key.split("\x1f"))
            if proto is not None and count > 0:
                out[key] = proto.mean
        return out


def _categories(labels: list[str], min_items: int) -> list[str]:
    counts = Counter(labels)
    return sorted(c for c, n in counts.items() if n >= min_items)


def _pool_test(
    labels: list[str], categories: list[str], test_per_category: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    pool, test = [], []
    for c in categories:
        rows = rng.permutation([i for i, y in enumerate(labels) if y == c])
        n_test = min(test_per_category, len(rows) // 2)
        test += rows[:n_test].tolist()
        pool += rows[n_test:].tolist()
    return np.array(pool), np.array(test)


# --------------------------------------------------------------------------- active learning


def _active_arm(
    titles: TitleSet,
    categories: list[str],
    rule: str,
    *,
    rounds: int,
    budget: int,
    seed: int,
    temperature: float,
    few_weight: float,
) -> list[tuple[int, float]]:
    """(labels so far, test accuracy) after the start and after each round."""
    labels = titles.labels
    rng = np.random.default_rng(seed)
    pool, test = _pool_test(labels, categories, 20, rng)
    truth = [labels[i] for i in test]
    cat = Catalogue(titles.x, temperature)
    start = [int(rng.choice([i for i in pool if labels[i] == c])) for c in categories]
    for i in start:
        cat.label(i, labels[i])
    unlabelled = np.array([i for i in pool if i not in set(start)])
    pick_rng = np.random.default_rng(seed + 1)  # the random arm's picks
    curve = [(len(start), cat.accuracy(test, truth))]
    for _ in range(rounds):
        if rule == "random":
            chosen = pick_rng.choice(len(unlabelled), size=budget, replace=False)
        else:
            counts = cat.prototypes.categories(PLATFORM)
            scores = []
            for top in cat.classify(unlabelled):
                _, margin = confidence(top)
                support = counts.get(f"{PLATFORM}\x1f{top[0][0]}", 1) if top else 1
                weight = few_weight if rule == "margin_few" else 0.0
                scores.append(review_priority(margin, support, weight))
            chosen = np.argsort(-np.asarray(scores), kind="stable")[:budget]
        for j in chosen:
            cat.label(int(unlabelled[j]), labels[int(unlabelled[j])])
        unlabelled = np.delete(unlabelled, chosen)
        curve.append((curve[-1][0] + budget, cat.accuracy(test, truth)))
    return curve


def _labels_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    """Labels needed to reach ``target`` accuracy (linear between rounds; inf if never)."""
    for (n0, a0), (n1, a1) in zip(curve, curve[1:], strict=False):
        if a1 >= target:
            if a0 >= target:
                return float(n0)
            return n0 + (n1 - n0) * (target - a0) / (a1 - a0)
    return float("inf") if curve[0][1] < target else float(curve[0][0])


def active_learning(
    titles: TitleSet,
    *,
    min_items: int,
    seeds: int,
    rounds: int,
    budget: int | None,
    temperature: float,
    few_weight: float,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    categories = _categories(titles.labels, min_items)
    budget = budget or len(categories)
    rules = ("random", "margin", "margin_few")
    curves: dict[str, list[list[tuple[int, float]]]] = {r: [] for r in rules}
    for s in range(seeds):
        for rule in rules:
            curves[rule].append(
                _active_arm(
                    titles,
                    categories,
                    rule,
                    rounds=rounds,
                    budget=budget,
                    seed=s,
                    temperature=temperature,
                    few_weight=few_weight,
                )
            )
        if log:
            finals = ", ".join(f"{r} {curves[r][-1][-1][1]:.3f}" for r in rules)
            log(f"active learning seed {s}: final accuracy {finals}")
    out: dict[str, Any] = {
        "categories": len(categories),
        "budget_per_round": budget,
        "rounds": rounds,
        "seeds": seeds,
        "few_weight": few_weight,
    }
    labels_axis = [n for n, _ in curves["random"][0]]
    out["labels"] = labels_axis
    for rule in rules:
        out[rule] = [mean_ci([c[k][1] for c in curves[rule]]) for k in range(len(labels_axis))]
    random_final = float(np.mean([c[-1][1] for c in curves["random"]]))
    total = labels_axis[-1]
    for rule in ("margin", "margin_few"):
        # per seed: labels the rule needs to reach that seed's random final accuracy
        needed = [
            _labels_to_reach(rc, r[-1][1])
            for rc, r in zip(curves[rule], curves["random"], strict=True)
        ]
        savings = [1 - n / total for n in needed]
        out[f"{rule}_saving"] = mean_ci(savings)
        out[f"{rule}_labels_to_random_final"] = mean_ci(needed)
    out["random_final"] = round(random_final, 4)
    return out


# --------------------------------------------------------------------------- corrections


def corrections(
    titles: TitleSet,
    *,
    min_items: int,
    shots: int,
    wrong_share: float,
    seed: int,
    temperature: float,
) -> dict[str, Any]:
    labels = titles.labels
    categories = _categories(labels, min_items)
    rng = np.random.default_rng(seed)
    pool, test = _pool_test(labels, categories, 20, rng)
    truth = [labels[i] for i in test]
    labelled = []
    for c in categories:
        labelled += [i for i in pool if labels[i] == c][:shots]
    wrong = set(rng.choice(labelled, size=int(wrong_share * len(labelled)), replace=False).tolist())
    right_run, fixed_run = Catalogue(titles.x, temperature), Catalogue(titles.x, temperature)
    for i in labelled:
        right_run.label(i, labels[i])
        if i in wrong:
            others = [c for c in categories if c != labels[i]]
            fixed_run.label(i, others[int(rng.integers(len(others)))])
        else:
            fixed_run.label(i, labels[i])
    wrong_accuracy = fixed_run.accuracy(test, truth)
    for i in sorted(wrong):
        fixed_run.label(i, labels[i])
    a, b = right_run.means(), fixed_run.means()
    max_diff = max(float(np.abs(a[k] - b[k]).max()) for k in a) if a.keys() == b.keys() else 1.0
    right_accuracy = right_run.accuracy(test, truth)
    fixed_accuracy = fixed_run.accuracy(test, truth)
    return {
        "labelled": len(labelled),
        "wrong": len(wrong),
        "same_categories": a.keys() == b.keys(),
        "max_prototype_difference": max_diff,
        "accuracy_never_wrong": round(right_accuracy, 4),
        "accuracy_while_wrong": round(wrong_accuracy, 4),
        "accuracy_after_corrections": round(fixed_accuracy, 4),
        "equal": a.keys() == b.keys() and max_diff <= 1e-5 and right_accuracy == fixed_accuracy,
    }


# --------------------------------------------------------------------------- novelty


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half)."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    values = np.concatenate([pos, neg])
    for v in np.unique(values):  # average ranks of ties
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def novelty(
    titles: TitleSet,
    *,
    min_items: int,
    shots: int,
    per_category: int,
    threshold: float,
    radius_quantile: float,
    min_members: int,
    seed: int,
    temperature: float,
) -> dict[str, Any]:
    labels = titles.labels
    categories = _categories(labels, min_items)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(categories))
    held = {categories[i] for i in order[: len(categories) // 5]}
    known = [c for c in categories if c not in held]
    cat = Catalogue(titles.x, temperature)
    stream: list[int] = []
    for c in categories:
        rows = rng.permutation([i for i, y in enumerate(labels) if y == c]).tolist()
        if c in held:
            stream += rows[:per_category]
        else:
            for i in rows[:shots]:
                cat.label(i, c)
            stream += rows[shots : shots + per_category]
    stream = rng.permutation(stream).tolist()
    scores = cat.prototypes.novelty_many(PLATFORM, titles.x[stream])
    is_new = np.array([labels[i] in held for i in stream])
    calibration = cat.prototypes.novelty(PLATFORM)
    radius = calibration.radius(radius_quantile)
    clusters = CandidateClusters(max_members=len(stream))  # every member listed: purity
    flagged = [i for i, s in zip(stream, scores, strict=True) if s >= threshold]
    for i in flagged:
        clusters.add(str(i), titles.listings[i].title, titles.x[i], radius)
    big = [c for c in clusters.candidates if c.size >= min_members]
    purities, discovered = [], set()
    for candidate in big:
        members = candidate.members
        majority, n = Counter(labels[int(m[0])] for m in members).most_common(1)[0]
        purities.append(n / len(members))
        if majority in held and n / len(members) >= 0.8:
            discovered.add(majority)
    return {
        "known_categories": len(known),
        "held_out_categories": len(held),
        "stream": len(stream),
        "calibration_distances": len(calibration.distances),
        "auroc": round(_auroc(scores, is_new), 4),
        "threshold": threshold,
        "flagged_new": int(sum(is_new[scores >= threshold])),
        "flagged_known": int(sum(~is_new[scores >= threshold])),
        "recall_new": round(float((scores[is_new] >= threshold).mean()), 4),
        "false_positive_rate": round(float((scores[~is_new] >= threshold).mean()), 4),
        "by_threshold": {
            str(t): {
                "recall_new": round(float((scores[is_new] >= t).mean()), 4),
                "false_positive_rate": round(float((scores[~is_new] >= t).mean()), 4),
            }
            for t in THRESHOLDS
        },
        "radius_d2": round(radius, 4),
        "candidates": len(clusters.candidates),
        "candidates_with_enough_members": len(big),
        "purity": round(float(np.mean(purities)), 4) if purities else float("nan"),
        "discovered": len(discovered),
        "discovered_share": round(len(discovered) / max(1, len(held)), 4),
    }


def eval_feedback(
    titles: TitleSet,
    *,
    min_items: int = 40,
    seeds: int = 5,
    rounds: int = 10,
    budget: int | None = None,
    temperature: float = 0.05,
    few_weight: float = 1.0,
    novelty_threshold: float = 0.9,
    radius_quantile: float = 0.25,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    started = time.monotonic()
    report: dict[str, Any] = {
        "data": {"titles": len(titles.labels), "min_items": min_items},
        "active_learning": active_learning(
            titles,
            min_items=min_items,
            seeds=seeds,
            rounds=rounds,
            budget=budget,
            temperature=temperature,
            few_weight=few_weight,
            log=log,
        ),
    }
    report["corrections"] = corrections(
        titles, min_items=min_items, shots=5, wrong_share=0.2, seed=0, temperature=temperature
    )
    runs = [
        novelty(
            titles,
            min_items=min_items,
            shots=5,
            per_category=60,
            threshold=novelty_threshold,
            radius_quantile=radius_quantile,
            min_members=5,
            seed=s,
            temperature=temperature,
        )
        for s in range(seeds)
    ]
    report["novelty"] = {
        "runs": runs,
        **{
            key: mean_ci([r[key] for r in runs if r[key] == r[key]])  # nan: no candidate
            for key in ("auroc", "purity", "discovered_share", "recall_new", "false_positive_rate")
        },
    }
    report["seconds"] = round(time.monotonic() - started, 1)
    al, nov = report["active_learning"], report["novelty"]
    report["targets"] = {
        "review_saves_30pct_labels": al["margin_few_saving"]["mean"] >= 0.3,
        "corrections_equal": report["corrections"]["equal"],
        "novelty_auroc_0.85": nov["auroc"]["mean"] >= 0.85,
        "candidate_purity_0.8": nov["purity"]["mean"] >= 0.8,
        "half_of_new_categories_discovered": nov["discovered_share"]["mean"] >= 0.5,
    }
    return report


def _ci(cell: dict[str, float]) -> str:
    return f"{cell['mean']:.3f} ± {cell['ci95']:.3f}"


def format_feedback_table(report: dict[str, Any]) -> str:
    al = report["active_learning"]
    lines = [
        f"active learning: {al['categories']} categories, {al['budget_per_round']} labels a "
        f"round, {al['seeds']} seeds (test accuracy, mean ± 95% CI)",
        f"{'labels':>7} {'random':>15} {'margin':>15} {'margin, few-weighted':>22}",
    ]
    for k, n in enumerate(al["labels"]):
        lines.append(
            f"{n:>7} {_ci(al['random'][k]):>15} {_ci(al['margin'][k]):>15}"
            f" {_ci(al['margin_few'][k]):>22}"
        )
    for rule in ("margin", "margin_few"):
        lines.append(
            f"{rule}: labels saved to reach random's final accuracy {_ci(al[f'{rule}_saving'])}"
        )
    c = report["corrections"]
    lines.append(
        f"corrections: {c['wrong']} of {c['labelled']} labels wrong then corrected; largest "
        f"prototype difference {c['max_prototype_difference']:.2e}; accuracy never wrong "
        f"{c['accuracy_never_wrong']:.4f}, while wrong {c['accuracy_while_wrong']:.4f}, "
        f"corrected {c['accuracy_after_corrections']:.4f}"
    )
    n = report["novelty"]
    lines.append(
        f"novelty: AUROC {_ci(n['auroc'])}; above the threshold: new {_ci(n['recall_new'])}, "
        f"known {_ci(n['false_positive_rate'])}; candidate purity {_ci(n['purity'])}; "
        f"held-out categories discovered {_ci(n['discovered_share'])}"
    )
    sweep = n["runs"][0]["by_threshold"]
    lines.append(
        "novelty threshold sweep (first run): "
        + "; ".join(
            f"{t}: new {v['recall_new']:.3f}, known {v['false_positive_rate']:.3f}"
            for t, v in sweep.items()
        )
    )
    lines.append(
        "targets: "
        + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in report["targets"].items())
    )
    return "\n".join(lines)
