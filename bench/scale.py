"""Memory and scoring cost against scale: up to 1M users and 100k items on one worker.

    python bench/scale.py [--max-users 1000000] [--max-items 100000]

Synthetic ids over real item embeddings (Online Retail's 4,000 product descriptions, embedded
by the bundled MiniLM; item i reuses description i mod 4,000, with a little noise so no two
items are equal). What is measured is what a worker keeps in its tables (Faust's memory store
is a dict of key -> value):
- per item: the ``items`` table value (the encoded item: platform, category, listing time,
  the event id that set it, and the fp16 embedding's raw bytes) plus its copy in the catalog
  replica;
- per user, after 1 to 5 clicks, as cold-start users have: the ``users`` table value at rest
  (its changelog record: up to 3 prototypes as fp16 directions in base64 and their lengths,
  click count, last event ids, purchases, JSON) and live (the profile object a click makes of
  it: float32 rows, one per prototype);
- scoring: one recommendation (prototypes against the bounded candidate set) as the catalog
  grows; the candidate set is capped (2,000 popular + 500 newest), so this stays flat.
Memory is traced with tracemalloc (Python objects, not the process RSS). Writes
bench/results/scale.json and scale.png; the last line printed is the JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaguide.config import Settings  # noqa: E402
from metaguide.contracts.codec import encode_json  # noqa: E402
from metaguide.contracts.internal import item_record  # noqa: E402
from metaguide.embedding.cache import embed_cached  # noqa: E402
from metaguide.embedding.encoder import TransformerEncoder  # noqa: E402
from metaguide.eval.retail import RETAIL_FILE, load_online_retail  # noqa: E402
from metaguide.recommend.profiles import ProfileConfig, UserProfile, user_key  # noqa: E402
from metaguide.recommend.scoring import Catalog, RecommendConfig, recommend  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def base_embeddings(settings: Settings) -> np.ndarray:
    data = load_online_retail(Path(settings.data_dir) / RETAIL_FILE)
    texts = [data.items[c] for c in sorted(data.items)]
    encoder = TransformerEncoder(settings.model, device="cpu")
    return embed_cached(
        encoder.embed_many, encoder.model_id, texts, Path(settings.state_dir) / "embeddings"
    )


def item_vectors(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    rows = base[np.arange(n) % len(base)] + 0.01 * gen.standard_normal((n, base.shape[1]))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def measure_items(vectors: np.ndarray) -> float:
    """Bytes per item held in the items table and the catalog replica: the encoded item
    (``contracts.internal.Item``) under its key, as both hold it."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    items: dict[bytes, Any] = {}
    catalog: dict[bytes, Any] = {}
    for i, v in enumerate(vectors):
        # an event id as producers make them (a UUID)
        value = item_record("shop", None, v, 1.7e9 + i, str(uuid.UUID(int=i))).encode()
        key = f"item-{i}".encode()
        items[key] = value
        catalog[key] = value  # same object in-process; a separate copy on another worker
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(vectors)


def cold_start_profiles(n: int, vectors: np.ndarray, seed: int = 0) -> list[UserProfile]:
    """``n`` profiles after 1 to 5 clicks each, as cold-start users have."""
    rng = random.Random(seed)
    config = ProfileConfig()
    out = []
    for u in range(n):
        profile = UserProfile()
        for c in range(rng.randint(1, 5)):
            i = rng.randrange(len(vectors))
            profile.apply(
                vectors[i],
                action=rng.choice(["view", "click", "purchase"]),
                ts=1.7e9 + c,
                event_id=f"e-{u}-{c}",
                item_id=f"item-{i}",
                config=config,
            )
        out.append(profile)
    return out


def measure_users(n: int, vectors: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Bytes per cold-start user in the users table, in its two forms: at rest (the
    changelog's JSON bytes, as a recovered worker holds them until the user clicks) and live
    (the profile object a click turns it into)."""
    profiles = cold_start_profiles(n, vectors, seed)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    users: dict[bytes, Any] = {}
    for u, profile in enumerate(profiles):
        # a copy exactly as long as the record, as a consumer's record value is
        users[user_key("shop", f"user-{u}").encode()] = bytes(
            bytearray(encode_json(profile.to_state()))
        )
    at_rest = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del profiles, users
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    live = {
        user_key("shop", f"user-{u}").encode(): profile
        for u, profile in enumerate(cold_start_profiles(n, vectors, seed))
    }
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(live) == n
    return at_rest / n, used / n


def scoring_ms(vectors: np.ndarray, seed: int = 0) -> float:
    rng = random.Random(seed)
    config = RecommendConfig()
    popularity = {f"item-{i}": rng.random() for i in range(len(vectors))}
    catalog = Catalog.build(
        ((f"item-{i}", v, 1.7e9 + i) for i, v in enumerate(vectors)),
        popularity,
        {},
        now=1.7e9 + len(vectors),
        config=config,
    )
    profile = UserProfile()
    for c in range(3):
        profile.apply(
            vectors[rng.randrange(len(vectors))],
            action="click",
            ts=1.7e9 + c,
            event_id=f"e{c}",
            item_id="x",
            config=config.profile,
        )
    times = []
    for _ in range(200):
        started = time.perf_counter()
        recommend(profile, catalog, 10, now=1.7e9 + 10, config=config)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-users", type=int, default=1_000_000)
    parser.add_argument("--max-items", type=int, default=100_000)
    args = parser.parse_args()
    settings = Settings.from_env()
    base = base_embeddings(settings)
    item_counts = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= args.max_items]
    user_counts = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= args.max_users]
    vectors = item_vectors(base, max(item_counts))
    items = []
    for n in item_counts:
        per_item = measure_items(vectors[:n])
        items.append(
            {
                "items": n,
                "bytes_per_item": round(per_item),
                "total_mb": round(per_item * n / 2**20, 1),
                "recommend_ms_p50": round(scoring_ms(vectors[:n]), 3),
            }
        )
        print(f"items {n}: {items[-1]}", file=sys.stderr, flush=True)
    users = []
    for n in user_counts:
        at_rest, live = measure_users(n, vectors[:10_000])
        users.append(
            {
                "users": n,
                "bytes_per_user": round(at_rest),
                "bytes_per_live_user": round(live),
                "total_mb": round(at_rest * n / 2**20, 1),
            }
        )
        print(f"users {n}: {users[-1]}", file=sys.stderr, flush=True)
    result = {"items": items, "users": users}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "scale.png")
    print(json.dumps(result))


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the worker's environment has no matplotlib; .venv-bench has
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8))
    a.loglog(
        [r["users"] for r in result["users"]], [r["total_mb"] for r in result["users"]], marker="o"
    )
    a.set_xlabel("users"), a.set_ylabel("table memory, MB"), a.set_title("user profiles")
    b.loglog(
        [r["items"] for r in result["items"]], [r["total_mb"] for r in result["items"]], marker="o"
    )
    b.set_xlabel("items"), b.set_title("items + catalog replica")
    c.semilogx(
        [r["items"] for r in result["items"]],
        [r["recommend_ms_p50"] for r in result["items"]],
        marker="o",
    )
    c.set_xlabel("items in the catalog"), c.set_ylabel("ms"), c.set_title("one recommendation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
