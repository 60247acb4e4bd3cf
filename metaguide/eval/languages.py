"""Encoders across languages (``metaguide eval languages``): few-shot accuracy within a
language and across two, and embedding speed, for each encoder on the same episodes.

- **In-language**: all-way 5-shot prototypes over a random half of the categories with at
  least 20 distinct titles, 15 queries per category, on Chinese product titles (data folder:
  ``chinese_product_titles.tsv.gz``) and on Myntra (English).
- **Cross-language**: prototypes from English listings (Myntra and Flipkart), queries from
  Chinese ones, over the categories both sides share (:data:`SHARED_CATEGORIES`, a map
  written for this evaluation), 5 English shots and 15 Chinese queries per category.
- **Centring**: each side's (each platform's) mean embedding taken out of its prototypes and
  queries, which are then compared by cosine, as a worker scores a centred platform
  (``metaguide.classify.centring``; it needs no labels: the mean is a running one over the
  platform's listings). Reported with and without.

Episodes are drawn from the labels alone (seeded), so every encoder is scored on the same
ones; the figures are means over episodes with 95% intervals.
"""

from __future__ import annotations

import gzip
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaguide.eval.fewshot import TitleSet, title_set, unique_titles
from metaguide.eval.myntra import (
    FLIPKART_FILE,
    MYNTRA_FILE,
    Listing,
    load_flipkart,
    read_csv_gz,
)
from metaguide.eval.stats import mean_ci

__all__ = [
    "CHINESE_FILE",
    "SHARED_CATEGORIES",
    "all_way_episodes",
    "centred",
    "cross_language_episodes",
    "embedding_speed",
    "episode_accuracy",
    "eval_languages",
    "format_languages_table",
    "load_chinese_titles",
    "load_english_shared",
]

CHINESE_FILE = "chinese_product_titles.tsv.gz"

# Chinese category -> the English listings that belong to it: Myntra's (master category,
# sub category) pairs and Flipkart's first two category levels ("" = every second level)
SHARED_CATEGORIES: dict[str, dict[str, list[tuple[str, str]]]] = {
    "服饰内衣": {
        "myntra": [
            ("Apparel", s)
            for s in ("Topwear", "Bottomwear", "Innerwear", "Dress", "Saree", "Apparel Set")
        ]
    },
    "鞋靴箱包": {
        "myntra": [("Footwear", s) for s in ("Shoes", "Sandal", "Flip Flops")]
        + [("Accessories", "Bags")]
    },
    "钟表配饰": {
        "myntra": [("Accessories", "Watches"), ("Accessories", "Jewellery")],
        "flipkart": [("Watches", "")],
    },
    "美妆": {
        "myntra": [("Personal Care", s) for s in ("Lips", "Eyes", "Nails", "Makeup", "Skin Care")],
        "flipkart": [("Beauty and Personal Care", "Makeup")],
    },
    "个护": {
        "myntra": [("Personal Care", s) for s in ("Hair", "Bath and Body", "Skin")],
        "flipkart": [
            ("Beauty and Personal Care", s)
            for s in ("Hair Care", "Bath and Spa", "Body and Skin Care", "Men's Grooming")
        ],
    },
    "母婴": {
        "flipkart": [
            ("Baby Care", s)
            for s in (
                "Baby Bath & Skin",
                "Baby Bedding",
                "Baby Grooming",
                "Diapering & Potty Training",
                "Feeding & Nursing",
            )
        ]
    },
    "3C数码": {"flipkart": [("Computers", "")]},
    "家居": {
        "flipkart": [
            ("Home Furnishing", ""),
            ("Home Decor & Festive Needs", ""),
            ("Kitchen & Dining", ""),
        ]
    },
    "运动": {"myntra": [("Sporting Goods", "")]},
}


def load_chinese_titles(path: str | Path, platform: str = "cn") -> list[Listing]:
    """Distinct Chinese product titles and their categories (``label``, ``text_a``)."""
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        next(fh, None)  # header
        for n, line in enumerate(fh):
            category, _, title = line.rstrip("\n").partition("\t")
            if category.strip() and title.strip():
                out.append(Listing(platform, f"cn-{n}", title.strip(), category.strip(), {}))
    return unique_titles(out)


def _shared(category: str, source: str, first: str, second: str) -> bool:
    return any(
        first == a and (b in ("", second)) for a, b in SHARED_CATEGORIES[category].get(source, [])
    )


def load_english_shared(data_dir: Path) -> list[Listing]:
    """Distinct English titles of Myntra and Flipkart whose category maps to a Chinese one,
    labelled with it."""
    out = []
    for row in read_csv_gz(data_dir / MYNTRA_FILE):
        title = (row.get("productDisplayName") or "").strip()
        for category in SHARED_CATEGORIES:
            if title and _shared(category, "myntra", row["masterCategory"], row["subCategory"]):
                out.append(Listing("en", row["id"], title, category, {}))
    for listing in load_flipkart(data_dir / FLIPKART_FILE):
        first, _, second = listing.category.partition(" >> ")
        for category in SHARED_CATEGORIES:
            if _shared(category, "flipkart", first, second):
                out.append(Listing("en", listing.item_id, listing.title, category, {}))
    return unique_titles(out)


def _by_label(labels: Sequence[str]) -> dict[str, np.ndarray]:
    rows: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        rows[label].append(i)
    return {label: np.array(ix) for label, ix in sorted(rows.items())}


Episode = tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray
]  # support, its labels, queries, theirs


def all_way_episodes(
    labels: Sequence[str],
    *,
    episodes: int = 100,
    shots: int = 5,
    queries: int = 15,
    min_titles: int = 20,
    fraction: float = 0.5,
    seed: int = 0,
) -> list[Episode]:
    """Episodes over a random ``fraction`` of the categories with ``min_titles`` titles:
    ``shots`` support rows and ``queries`` query rows per category (row indices)."""
    rng = np.random.default_rng(seed)
    rows = {c: ix for c, ix in _by_label(labels).items() if len(ix) >= min_titles}
    names = sorted(rows)
    ways = max(2, round(len(names) * fraction))
    out = []
    for _ in range(episodes):
        chosen = rng.choice(len(names), size=ways, replace=False)
        support, s_y, query, q_y = [], [], [], []
        for way, c in enumerate(chosen):
            picked = rng.choice(rows[names[c]], size=shots + queries, replace=False)
            support.append(picked[:shots])
            query.append(picked[shots:])
            s_y += [way] * shots
            q_y += [way] * queries
        out.append((np.concatenate(support), np.array(s_y), np.concatenate(query), np.array(q_y)))
    return out


def cross_language_episodes(
    support_labels: Sequence[str],
    query_labels: Sequence[str],
    *,
    episodes: int = 100,
    shots: int = 5,
    queries: int = 15,
    seed: int = 0,
) -> list[Episode]:
    """Every category both sides have (at least ``shots`` support rows and ``queries`` query
    rows): ``shots`` rows of one side, ``queries`` of the other, per category."""
    rng = np.random.default_rng(seed)
    left, right = _by_label(support_labels), _by_label(query_labels)
    names = [c for c in sorted(left) if len(left[c]) >= shots and len(right.get(c, ())) >= queries]
    out = []
    for _ in range(episodes):
        support, s_y, query, q_y = [], [], [], []
        for way, c in enumerate(names):
            support.append(rng.choice(left[c], size=shots, replace=False))
            query.append(rng.choice(right[c], size=queries, replace=False))
            s_y += [way] * shots
            q_y += [way] * queries
        out.append((np.concatenate(support), np.array(s_y), np.concatenate(query), np.array(q_y)))
    return out


def centred(x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """Rows less ``mean`` (their own mean by default), renormalised to unit length."""
    shifted = x - (x.mean(axis=0) if mean is None else mean)
    return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)


def episode_accuracy(
    support: np.ndarray,
    s_y: np.ndarray,
    query: np.ndarray,
    q_y: np.ndarray,
    means: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Nearest prototype (the mean of a category's support rows), scored as a worker
    scores: by squared distance, or with ``means`` (the support side's and the query
    side's) by cosine between the prototype less its side's mean and the query less its own
    (``CategoryPrototypes.nearest_centred``)."""
    ways = int(s_y.max()) + 1
    protos = np.stack([support[s_y == w].mean(axis=0) for w in range(ways)])
    if means is None:
        d2 = (protos**2).sum(axis=1)[None, :] - 2 * query @ protos.T
        return float((d2.argmin(axis=1) == q_y).mean())
    cos = centred(query, means[1]) @ centred(protos, means[0]).T
    return float((cos.argmax(axis=1) == q_y).mean())


def _accuracy(
    episodes: list[Episode],
    x_support: np.ndarray,
    x_query: np.ndarray,
    centre: bool = False,
) -> dict[str, float]:
    """Mean accuracy over episodes; ``centre``: each side less its mean over all its rows
    (a platform's running mean, once it has seen its listings)."""
    means = (x_support.mean(axis=0), x_query.mean(axis=0)) if centre else None
    return mean_ci(
        [episode_accuracy(x_support[s], sy, x_query[q], qy, means) for s, sy, q, qy in episodes]
    )


def embedding_speed(
    embed_many: Callable[[list[str]], np.ndarray], texts: Sequence[str], batch_size: int = 32
) -> float:
    """Texts per second in batches of ``batch_size`` (after one batch to warm up)."""
    embed_many(list(texts[:batch_size]))
    started = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        embed_many(list(texts[i : i + batch_size]))
    return len(texts) / (time.perf_counter() - started)


def eval_languages(
    encoders: dict[str, Any],
    data_dir: Path,
    cache_dir: Path | None,
    *,
    episodes: int = 100,
    speed_texts: int = 1024,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The report for each encoder (name -> an object with ``embed_many`` and ``model_id``):
    in-language accuracy on Chinese titles and on Myntra, cross-language accuracy, each
    with and without centring, and titles per second in Chinese and in English."""
    chinese = load_chinese_titles(data_dir / CHINESE_FILE)
    myntra = unique_titles(
        [
            Listing("myntra", r["id"], r["productDisplayName"].strip(), r["articleType"], {})
            for r in read_csv_gz(data_dir / MYNTRA_FILE)
            if (r.get("productDisplayName") or "").strip() and r.get("articleType")
        ]
    )
    english = load_english_shared(data_dir)
    labels = {
        "chinese": [x.category for x in chinese],
        "myntra": [x.category for x in myntra],
    }
    plans = {name: all_way_episodes(labels[name], episodes=episodes, seed=seed) for name in labels}
    cross = cross_language_episodes(
        [x.category for x in english], labels["chinese"], episodes=episodes, seed=seed
    )
    report: dict[str, Any] = {
        "protocol": {
            "episodes": episodes,
            "shots": 5,
            "queries_per_category": 15,
            "in_language_ways": {n: int(p[0][1].max()) + 1 for n, p in plans.items()},
            "cross_language_ways": int(cross[0][1].max()) + 1 if cross else 0,
            "titles": {"chinese": len(chinese), "myntra": len(myntra), "english": len(english)},
            "speed_batch_size": 32,
        },
        "encoders": {},
    }
    for name, encoder in encoders.items():
        if progress:
            progress(f"{name}: embedding")
        sets: dict[str, TitleSet] = {
            key: title_set(rows, encoder.embed_many, encoder.model_id, cache_dir)
            for key, rows in (("chinese", chinese), ("myntra", myntra), ("english", english))
        }
        row: dict[str, Any] = {"model_id": encoder.model_id}
        for key in ("chinese", "myntra"):
            x = sets[key].x
            row[key] = _accuracy(plans[key], x, x)
            row[f"{key}_centred"] = _accuracy(plans[key], x, x, centre=True)
        en, cn = sets["english"].x, sets["chinese"].x
        row["cross"] = _accuracy(cross, en, cn)
        row["cross_centred"] = _accuracy(cross, en, cn, centre=True)
        if progress:
            progress(f"{name}: speed")
        row["titles_per_s"] = {
            "chinese": round(
                embedding_speed(encoder.embed_many, [x.title for x in chinese[:speed_texts]]), 1
            ),
            "english": round(
                embedding_speed(encoder.embed_many, [x.title for x in myntra[:speed_texts]]), 1
            ),
        }
        report["encoders"][name] = row
    return report


def format_languages_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table, one column per encoder."""
    names = list(report["encoders"])
    rows = report["encoders"]
    p = report["protocol"]

    def cell(r: dict[str, Any], key: str) -> str:
        return f"{r[key]['mean']:.3f} ± {r[key]['ci95']:.3f}"

    lines = [
        "| | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for key, label in (
        ("chinese", f"Chinese titles, {p['in_language_ways']['chinese']}-way"),
        ("chinese_centred", "the same, centred"),
        ("myntra", f"Myntra (English), {p['in_language_ways']['myntra']}-way"),
        ("myntra_centred", "the same, centred"),
        ("cross", f"English prototypes, Chinese queries, {p['cross_language_ways']}-way"),
        ("cross_centred", "the same, each language centred"),
    ):
        lines.append(f"| {label} | " + " | ".join(cell(rows[n], key) for n in names) + " |")
    speeds = [
        f"{rows[n]['titles_per_s']['chinese']:,.0f} / {rows[n]['titles_per_s']['english']:,.0f}"
        for n in names
    ]
    lines.append("| titles/s, batch 32 (Chinese / English) | " + " | ".join(speeds) + " |")
    return "\n".join(lines)
