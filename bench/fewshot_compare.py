"""Few-shot product classification side by side: metaguide vs SetFit vs logistic regression.

    scripts/bench-setup.sh        # once: .venv-bench with setfit (its pins clash with faust's)
    .venv-bench/bin/python bench/fewshot_compare.py [--episodes 3] [--shots 1 5 10]

One run, the same episodes for every system:
- Myntra: distinct titles; article types split into meta-train / meta-val / held-out test
  (metaguide.meta.category_split, seed 0); episodes are all-way over the held-out types.
- Flipkart (flipkart_sample_1050): product names, depth-2 category paths; episodes are all-way
  over the categories with at least 15 products. No training on Flipkart at all: the adapter
  is the one meta-learned on Myntra's meta-train types (cross-data-set transfer).

Systems, at 1, 5 and 10 shots per class:
- metaguide raw prototypes (base MiniLM embeddings, nearest mean);
- metaguide MAML adapter (meta-trained in this run on Myntra meta-train types, 3 inner steps
  on each support set);
- logistic regression on the same embeddings (L2 chosen on Myntra meta-val episodes);
- SetFit 1.2 (the same bundled all-MiniLM-L6-v2 body; its recipe: contrastive fine-tuning
  of the body on pairs, then a logistic-regression head; one epoch, batch 16, and
  num_iterations=5 pairs per example: the paper's 20 takes about 15 minutes per 10-shot
  all-way episode on 2 CPU cores, the library's default oversampling far longer, and the whole
  benchmark must fit in an hour).

Also measured: how long until a brand-new category can be predicted (metaguide: embed its 5
examples and insert them into the prototype table; SetFit: retrain on the episode's support
set including the new category), and the training compute each used.
Writes bench/results/fewshot_compare.json, .md and .png; the last line printed is the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaguide.classify.prototypes import CategoryPrototypes  # noqa: E402
from metaguide.config import Settings  # noqa: E402
from metaguide.embedding.cache import embed_cached  # noqa: E402
from metaguide.embedding.encoder import TransformerEncoder, default_model_path  # noqa: E402
from metaguide.eval.fewshot import L2_GRID, load_titles, summary, unique_titles  # noqa: E402
from metaguide.eval.myntra import load_flipkart as load_flipkart_listings  # noqa: E402
from metaguide.meta.maml import (
    Adapter,
    Episode,
    EpisodeSampler,
    MetaConfig,
    category_split,
    episode_accuracy,
    logistic_accuracy,
    meta_train,
)

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ["raw_prototypes", "maml_adapter", "logistic_regression", "setfit"]


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def setfit_accuracy(
    texts: list[str], ep: Episode, model_path: str, seed: int, iterations: int
) -> tuple[float, float]:
    """Train SetFit on the support set, score the query set: (accuracy, training seconds)."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    model = SetFitModel.from_pretrained(model_path)
    train = Dataset.from_dict(
        {"text": [texts[i] for i in ep.support], "label": [int(y) for y in ep.support_y]}
    )
    args = TrainingArguments(
        batch_size=16,
        num_epochs=1,
        num_iterations=iterations,
        seed=seed,
        report_to="none",
        save_strategy="no",
        output_dir=str(Path(tempfile.gettempdir()) / "setfit-bench"),
    )
    trainer = Trainer(model=model, args=args, train_dataset=train)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    predicted = np.asarray(model.predict([texts[i] for i in ep.query]))
    return float((predicted == ep.query_y).mean()), seconds


def new_category_seconds(encoder: TransformerEncoder, texts: list[str]) -> float:
    """Embed a new category's examples and insert them: then it can be predicted."""
    table = CategoryPrototypes()
    started = time.monotonic()
    vectors = encoder.embed_many(texts)
    for i, v in enumerate(vectors):
        table.update_one("shop", "new-category", v, event_id=f"e{i}")
    table.nearest_one("shop", vectors[0])
    return time.monotonic() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    data_dir = Path(args.data_dir or settings.data_dir)
    encoder = TransformerEncoder(settings.model, device="cpu")
    cache = Path(settings.state_dir) / "bench-embeddings"
    model_path = default_model_path()

    myntra = load_titles(data_dir / "myntra_styles.csv.gz")
    flipkart = unique_titles(load_flipkart_listings(data_dir / "flipkart_sample_1050.csv.gz"))
    sets = {}
    for name, listings in (("myntra", myntra), ("flipkart", flipkart)):
        texts = [x.title for x in listings]
        x = embed_cached(encoder.embed_many, encoder.model_id, texts, cache, progress=log)
        sets[name] = (texts, [x.category for x in listings], x)

    # the adapter: meta-trained once, on Myntra's meta-train article types
    texts, labels, x = sets["myntra"]
    split = category_split(labels, min_items=20, seed=args.seed)
    cfg = MetaConfig(seed=args.seed)
    started = time.monotonic()
    report = meta_train(x, labels, split["train"], split["val"], cfg, progress=log)
    maml_seconds = time.monotonic() - started
    adapter: Adapter = report.adapter
    val_eps = EpisodeSampler(
        labels, split["val"], n_way=None, k_shot=5, q_query=10, seed=args.seed + 8
    ).episodes(30)
    l2 = max(L2_GRID, key=lambda c: logistic_accuracy(x, val_eps, l2=c).mean())

    counts: dict[str, dict[Any, int]] = {name: {} for name in sets}
    for name, (_, labs, _) in sets.items():
        for lab in labs:
            counts[name][lab] = counts[name].get(lab, 0) + 1
    test_categories = {
        "myntra": split["test"],
        "flipkart": sorted(c for c, n in counts["flipkart"].items() if n >= 15),
    }
    queries = {"myntra": 10, "flipkart": 5}
    results: dict[str, Any] = {}
    setfit_train_s: list[float] = []
    for name, (texts, labels, x) in sets.items():
        results[name] = {"categories": len(test_categories[name])}
        for k in args.shots:
            eps = EpisodeSampler(
                labels,
                test_categories[name],
                n_way=None,
                k_shot=k,
                q_query=queries[name],
                seed=args.seed + 100 + k,
            ).episodes(args.episodes)
            accs: dict[str, list[float]] = {m: [] for m in METHODS}
            seconds = []
            for i, ep in enumerate(eps):
                accs["raw_prototypes"].append(float(episode_accuracy(None, x, [ep])[0]))
                accs["maml_adapter"].append(
                    float(
                        episode_accuracy(adapter, x, [ep], steps=cfg.inner_steps, lr=cfg.inner_lr)[
                            0
                        ]
                    )
                )
                accs["logistic_regression"].append(float(logistic_accuracy(x, [ep], l2=l2)[0]))
                acc, secs = setfit_accuracy(
                    texts, ep, model_path, seed=args.seed + i, iterations=args.setfit_iterations
                )
                accs["setfit"].append(acc)
                seconds.append(secs)
                setfit_train_s.append(secs)
                log(
                    f"{name} {k}-shot episode {i}: "
                    + ", ".join(f"{m} {v[-1]:.3f}" for m, v in accs.items())
                    + f" (SetFit trained {secs:.0f}s)"
                )
            results[name][f"{k}-shot"] = {
                **{m: summary(v) for m, v in accs.items()},
                "setfit_train_seconds": round(float(np.mean(seconds)), 1),
                "n_way": eps[0].n_way,
                "queries": int(len(eps[0].query)),
            }
    # a new category: five titles of a held-out Myntra type
    texts, labels, _ = sets["myntra"]
    new = [t for t, lab in zip(texts, labels, strict=True) if lab == split["test"][0]][:5]
    new_category_s = float(np.median([new_category_seconds(encoder, new) for _ in range(5)]))
    five_shot = [results[n]["5-shot"]["setfit_train_seconds"] for n in sets]
    return {
        "episodes": args.episodes,
        "setfit_iterations": args.setfit_iterations,
        "shots": args.shots,
        "logistic_regression_l2": l2,
        "results": results,
        "time_to_new_category_s": {
            "metaguide": round(new_category_s, 4),
            "setfit_retrain_5shot": round(float(np.mean(five_shot)), 1),
            "ratio": round(new_category_s / float(np.mean(five_shot)), 6),
        },
        "training_compute_s": {
            "metaguide_maml_meta_training_once": round(maml_seconds, 1),
            "setfit_all_episodes": round(float(np.sum(setfit_train_s)), 1),
        },
        "maml": {"episodes_run": report.episodes_run, "best_episode": report.best_episode},
    }


def markdown(result: dict[str, Any]) -> str:
    from report import fewshot_section  # bench/report.py: the docs' table, the same rows

    return "\n".join(fewshot_section(result))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result["results"]), figsize=(11, 4), sharey=True)
    for ax, (name, res) in zip(np.atleast_1d(axes), result["results"].items(), strict=True):
        for m in METHODS:
            means = [res[f"{k}-shot"][m]["mean"] for k in result["shots"]]
            cis = [res[f"{k}-shot"][m]["ci95"] for k in result["shots"]]
            ax.errorbar(result["shots"], means, yerr=cis, marker="o", capsize=3, label=m)
        ax.set_title(f"{name}: all-way ({res['categories']} categories)")
        ax.set_xlabel("labelled examples per category")
        ax.set_xticks(result["shots"])
    np.atleast_1d(axes)[0].set_ylabel("query accuracy (95% CI)")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--setfit-iterations",
        type=int,
        default=5,
        help="SetFit pairs per example and epoch (its paper: 20; 5 fits the 60-minute budget)",
    )
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fewshot_compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "fewshot_compare.md").write_text(markdown(result) + "\n")
    plot(result, RESULTS / "fewshot_compare.png")
    print(markdown(result), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
