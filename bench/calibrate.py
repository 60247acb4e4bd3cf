"""Choose the softmax temperature of nearest-prototype scores on real data.

    python bench/calibrate.py [--data PATH] [--shots 5]

Split by title as the demo does (seed 0): the labelled titles build the prototypes; the test
titles are cut in two halves. The first half picks the temperature with the lowest negative
log-likelihood; the second reports accuracy and the expected calibration error (ECE, 10 bins)
of the top-1 score, at that temperature and at the default 0.05. Prints a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaguide.classify.prototypes import CategoryPrototypes  # noqa: E402
from metaguide.embedding.encoder import TransformerEncoder  # noqa: E402
from metaguide.eval.myntra import SAMPLE_FILE, few_shot_split, load_myntra  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(SAMPLE_FILE))
    parser.add_argument("--shots", type=int, default=5)
    args = parser.parse_args()
    split = few_shot_split(load_myntra(args.data), args.shots, seed=0)
    encoder = TransformerEncoder(device="cpu")
    support = encoder.embed_many([x.title for x in split.labelled])
    protos = CategoryPrototypes()
    for x, v in zip(split.labelled, support, strict=True):
        protos.update_one(x.platform, x.category, v)
    names, means, _ = protos._matrix("myntra")
    index = {n: i for i, n in enumerate(names)}
    test = [x for x in split.test if x.category in index]
    half = len(test) // 2
    calib, held = test[:half], test[half:]

    def neg_d2(items: list) -> tuple[np.ndarray, np.ndarray]:
        x = encoder.embed_many([t.title for t in items])
        d2 = (x * x).sum(1, keepdims=True) - 2 * x @ means.T + (means * means).sum(1)[None, :]
        return -d2, np.array([index[t.category] for t in items])

    def probs(logits: np.ndarray, temperature: float) -> np.ndarray:
        z = logits / temperature
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    lc, yc = neg_d2(calib)
    lh, yh = neg_d2(held)
    grid = [0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5]
    nll = {t: float(-np.log(probs(lc, t)[np.arange(len(yc)), yc] + 1e-12).mean()) for t in grid}
    best = min(nll, key=nll.__getitem__)

    def ece(p: np.ndarray, y: np.ndarray) -> float:
        conf, pred = p.max(1), p.argmax(1)
        bins = np.minimum((conf * 10).astype(int), 9)
        total = 0.0
        for b in range(10):
            m = bins == b
            if m.any():
                total += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
        return float(total)

    result = {
        "categories": len(names),
        "calibration_listings": len(calib),
        "held_out_listings": len(held),
        "nll_by_temperature": {str(k): round(v, 4) for k, v in nll.items()},
        "best_temperature": best,
        "held_out_accuracy": float((probs(lh, best).argmax(1) == yh).mean()),
        "held_out_ece_best": round(ece(probs(lh, best), yh), 4),
        "held_out_ece_at_0.05": round(ece(probs(lh, 0.05), yh), 4),
    }
    out = Path(__file__).resolve().parent / "results" / "calibration.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
