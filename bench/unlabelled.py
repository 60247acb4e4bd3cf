"""Do a platform's unlabelled listings help few-shot classification on frozen embeddings?

    METAGUIDE_DATA_DIR=... python bench/unlabelled.py [--episodes 30] [--shots 5,10]

A worker holds every listing of a platform, labelled or not, so a method may use the
unlabelled ones. This measures three such methods against raw prototypes and logistic
regression on the episodes of ``metaguide eval transfer`` (same targets, same sampler and
seeds: Myntra's held-out article types, and Flipkart as a platform never trained on), all-way:

- centring: every embedding less the mean of the platform's unlabelled listings, normalised
  again, then prototypes (and logistic regression on the same features);
- soft k-means (Ren et al., ICLR 2018): the prototypes refined by two rounds of soft
  assignment of unlabelled listings, whose total weight is a share of the support set's;
- self-training: the most confident unlabelled listings of each category (by prototype
  margin) added to the support set as pseudo-labels, then logistic regression.

The unlabelled pool is drawn from listings outside the episode's support and query, either
from the episode's own categories only ("clean", an optimistic case) or from the whole
platform ("platform", what a worker has: other categories' listings among them). The last
line printed is JSON; bench/results/unlabelled.json keeps it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaguide.config import Settings  # noqa: E402
from metaguide.eval import fewshot  # noqa: E402
from metaguide.eval.fewshot import summary  # noqa: E402
from metaguide.eval.myntra import FLIPKART_FILE, MYNTRA_FILE, load_flipkart  # noqa: E402
from metaguide.meta.maml import EpisodeSampler, category_split, fit_logistic  # noqa: E402

POOL = 3000  # unlabelled listings per episode


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def prototypes(s: np.ndarray, sy: np.ndarray, n: int) -> np.ndarray:
    return np.stack([s[sy == c].mean(0) for c in range(n)])


def proto_accuracy(protos: np.ndarray, q: np.ndarray, qy: np.ndarray) -> float:
    return float(((unit(q) @ unit(protos).T).argmax(1) == qy).mean())


def logistic(s: np.ndarray, sy: np.ndarray, q: np.ndarray, qy: np.ndarray, n: int) -> float:
    w, b = fit_logistic(torch.from_numpy(s), torch.from_numpy(sy), n, l2=1e-3)
    return float(((torch.from_numpy(q) @ w + b).argmax(1).numpy() == qy).mean())


def soft_kmeans(
    s: np.ndarray, sy: np.ndarray, pool: np.ndarray, n: int, share: float, temperature: float
) -> np.ndarray:
    """Prototypes refined by the pool's soft assignments; the pool weighs ``share`` of the
    support set in all."""
    protos, pool = unit(prototypes(s, sy, n)), unit(pool)
    sums = np.stack([s[sy == c].sum(0) for c in range(n)])
    counts = np.bincount(sy, minlength=n)[:, None].astype(np.float32)
    weight = share * len(s) / len(pool)
    for _ in range(2):
        logits = pool @ protos.T / temperature
        r = np.exp(logits - logits.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        protos = unit((sums + weight * r.T @ pool) / (counts + weight * r.sum(0)[:, None]))
    return protos


def self_training(
    s: np.ndarray, sy: np.ndarray, pool: np.ndarray, n: int, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    sims = unit(pool) @ unit(prototypes(s, sy, n)).T
    top2 = np.sort(sims, 1)[:, -2:]
    margin, guess = top2[:, 1] - top2[:, 0], sims.argmax(1)
    xs, ys = [s], [sy]
    for c in range(n):
        idx = np.flatnonzero(guess == c)
        idx = idx[np.argsort(-margin[idx])][:per_class]
        xs.append(pool[idx])
        ys.append(np.full(len(idx), c))
    return np.concatenate(xs), np.concatenate(ys)


def run_episode(
    x: np.ndarray, ep: Any, clean: np.ndarray, rng: np.random.Generator
) -> dict[str, float]:
    s, sy, q, qy, n = x[ep.support], ep.support_y, x[ep.query], ep.query_y, ep.n_way
    used = np.zeros(len(x), dtype=bool)
    used[ep.support] = used[ep.query] = True
    pools = {
        "clean": np.flatnonzero(clean & ~used),
        "platform": np.flatnonzero(~used),
    }
    pool = {k: x[rng.choice(v, min(POOL, len(v)), replace=False)] for k, v in pools.items()}
    out = {
        "raw_prototypes": proto_accuracy(prototypes(s, sy, n), q, qy),
        "logistic_regression": logistic(s, sy, q, qy, n),
    }
    mean = pool["platform"].mean(0)
    sc, qc = unit(s - mean), unit(q - mean)
    out["centred_prototypes"] = proto_accuracy(prototypes(sc, sy, n), qc, qy)
    out["centred_logistic"] = logistic(sc, sy, qc, qy, n)
    for name, p in pool.items():
        for share in (0.3, 1.0):
            protos = soft_kmeans(s, sy, p, n, share, temperature=0.02)
            out[f"soft_kmeans_{name}_{share}"] = proto_accuracy(protos, q, qy)
        for per_class in (5, 20):
            s2, y2 = self_training(s, sy, p, n, per_class)
            out[f"self_training_{name}_{per_class}"] = logistic(s2, y2, q, qy, n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--shots", default="5,10")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = Settings()
    data = Path(settings.data_dir)
    encoder = settings.open_encoder()
    cache = Path(settings.state_dir) / "embeddings"
    myntra = fewshot.load_title_set(data / MYNTRA_FILE, encoder.embed_many, encoder.model_id, cache)
    flipkart = fewshot.title_set(
        fewshot.unique_titles(load_flipkart(data / FLIPKART_FILE)),
        encoder.embed_many,
        encoder.model_id,
        cache,
    )
    split = category_split(myntra.labels, min_items=20, seed=args.seed)
    counts: dict[str, int] = {}
    for label in flipkart.labels:
        counts[label] = counts.get(label, 0) + 1
    targets = {  # as metaguide eval transfer draws them
        "myntra_held_out_types": (myntra, split["test"], 10),
        "flipkart_unseen_platform": (flipkart, sorted(c for c, k in counts.items() if k >= 15), 5),
    }
    rng = np.random.default_rng(args.seed)
    results: dict[str, Any] = {}
    for target, (titles, categories, q_query) in targets.items():
        x = titles.x.astype(np.float32)
        clean = np.isin(np.array(titles.labels), categories)
        results[target] = {"categories": len(categories), "listings": len(x)}
        for k in [int(v) for v in args.shots.split(",")]:
            episodes = EpisodeSampler(
                titles.labels,
                categories,
                n_way=None,
                k_shot=k,
                q_query=q_query,
                seed=args.seed + 100 + k,
            ).episodes(args.episodes)
            per: dict[str, list[float]] = {}
            for ep in episodes:
                for method, acc in run_episode(x, ep, clean, rng).items():
                    per.setdefault(method, []).append(acc)
            raw = np.array(per["raw_prototypes"])
            best = max(raw.mean(), float(np.mean(per["logistic_regression"])))
            row = {m: summary(v) for m, v in per.items()}
            row["best_minus_baselines"] = round(
                max(float(np.mean(v)) for v in per.values()) - best, 4
            )
            results[target][f"{k}-shot"] = row
            print(
                f"{target} {k}-shot: " + "  ".join(f"{m} {np.mean(v):.3f}" for m, v in per.items()),
                flush=True,
            )
    result = {"episodes": args.episodes, "pool": POOL, "results": results}
    out = Path(__file__).resolve().parent / "results" / "unlabelled.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
