"""``metaguide demo``: the whole product, end to end, on the embedded broker and real data.

Starts the embedded broker and one worker, then runs each of metaguide's jobs on the carried
samples (``metaguide/samples``) and reports what happened:

- classification: Myntra and Flipkart listings (two platforms), k labelled examples per
  category, then unlabelled listings whose titles were never labelled;
- feedback: the review requests the worker raised are answered with the held-back labels
  (label events, as a reviewer would send them); the listings nobody reviewed are listed
  again, and their accuracy before and after says what the answers were worth;
- recommendations: Online Retail products as listings and customers' purchases before a
  cut-off as clicks; HR@10 of the worker's HTTP answers on the purchases after it, against
  popularity; a few customers' histories and answers; a new customer's answers after 0, 1
  and 3 clicks;
- adaptation: a training round on the labels the worker saw, the gate's decision for each
  platform, and, if a snapshot is published, the same listings' accuracy after the swap;
- languages, when the encoder is a multilingual one (``METAGUIDE_MODEL``) and the data folder
  has the Chinese product titles and the full Myntra and Flipkart files: a Chinese platform
  learning from Chinese labels, and a Chinese platform grouped with an English one,
  classified by English labels alone.

``quick`` runs classification and feedback only. Everything is shut down at the end.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from metaguide.config import Settings
from metaguide.eval.myntra import (
    SAMPLE_FILE,
    Listing,
    few_shot_split,
    listing_event,
    load_flipkart,
    load_myntra,
)
from metaguide.eval.retail import SAMPLE_FILE as RETAIL_SAMPLE_FILE
from metaguide.eval.retail import SAMPLE_PREFIX as ITEM_PREFIX
from metaguide.kafka.broker import EmbeddedBroker, free_port
from metaguide.kafka.client import read_to_end
from metaguide.kafka.replay import produce_events
from metaguide.waiting import wait_until

__all__ = ["FLIPKART_SAMPLE", "RETAIL_SAMPLE", "run_demo", "format_summary"]

SAMPLES = SAMPLE_FILE.parent
FLIPKART_SAMPLE = SAMPLES / "flipkart_sample.csv.gz"
RETAIL_SAMPLE = RETAIL_SAMPLE_FILE
RETAIL_CUTOFF = "2011-11-15"  # recommendations: clicks before it, held-out purchases after

# the demo's listings arrive in seconds: a budget that asks about a few percent of them
DEMO_REVIEW_BUDGET_PER_HOUR = 90_000.0


def _listings(data_path: str | Path, shots: int, seed: int, max_test: int | None) -> Any:
    """The classification listings of both platforms: (labelled, test, categories)."""
    labelled: list[Listing] = []
    test: list[Listing] = []
    categories: dict[str, int] = {}
    for platform, listings in (
        ("myntra", load_myntra(data_path)),
        ("flipkart", load_flipkart(FLIPKART_SAMPLE)),
    ):
        split = few_shot_split(listings, shots, seed=seed)
        labelled += split.labelled
        test += split.test if max_test is None else split.test[:max_test]
        categories[platform] = len(split.categories)
    return labelled, test, categories


async def run_demo(
    settings: Settings,
    *,
    data_path: str | Path = SAMPLE_FILE,
    shots: int = 5,
    max_test: int | None = None,
    seed: int = 0,
    quick: bool = False,
    timeout_s: float = 540.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the demo and return its summary (see :func:`format_summary`)."""
    from workers.app import create_worker
    from workers.run import tune_process

    say = progress or (lambda line: None)
    started = time.perf_counter()
    labelled, test, categories = _listings(data_path, shots, seed, max_test)
    languages = None if quick else _language_listings(settings, shots, seed)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state_dir:
        settings = settings.with_(
            broker_url=broker.url,
            broker_profile="embedded",
            app_id=f"metaguide-demo-{uuid.uuid4().hex[:8]}",
            state_dir=state_dir,
            web_port=free_port(),
            review_budget_per_hour=DEMO_REVIEW_BUDGET_PER_HOUR,
            train_interval_s=0.0,  # the demo runs its one training round itself
            # English labels classify Chinese listings: one category tree, two platforms
            platform_groups=f"{CROSS_EN},{CROSS_CN}" if languages else settings.platform_groups,
        )
        say("starting the embedded broker and a worker")
        worker = create_worker(settings)
        tune_process()  # once per process; a no-op after the first
        metrics_server = worker.metrics.serve(settings.metrics_port, "127.0.0.1")
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        consumer = AIOKafkaConsumer(
            settings.topic("classifications"),
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
        )
        report: dict[str, Any] = {}
        try:
            await worker.start()
            await producer.start()
            await consumer.start()
            topic = settings.topic("listings")
            say(f"classification: {len(labelled)} labelled listings, then {len(test)} unlabelled")
            await produce_events(
                broker.bootstrap,
                topic,
                (listing_event(x, labelled=True) for x in labelled),
                key_field="item_id",
                producer=producer,
            )
            await wait_until(
                lambda: sum(worker.prototypes.categories().values()) >= len(labelled),
                timeout_s,
                f"{len(labelled)} labelled listings to reach the prototypes",
            )
            labelled_done = time.perf_counter()
            truth = {x.item_id: x.category for x in test}
            results: dict[str, dict[str, Any]] = {}
            t0 = time.time()
            send = asyncio.ensure_future(
                produce_events(
                    broker.bootstrap,
                    topic,
                    (listing_event(x, labelled=False) for x in test),
                    key_field="item_id",
                    producer=producer,
                )
            )
            results = await _collect(consumer, "", len(test), timeout_s)
            await send
            report["classification"] = _classification(
                test, truth, results, categories, shots, len(labelled), t0
            )
            report["classification"]["labelled_phase_s"] = labelled_done - started
            say("feedback: answering the review requests")
            feedback = await _feedback_loop(
                worker, broker, producer, consumer, test, truth, results, timeout_s
            )
            report["feedback"] = {k: v for k, v in feedback.items() if k != "after"}
            if not quick:
                say("recommendations: Online Retail purchases as clicks")
                report["recommendations"] = await _recommendations(
                    worker, broker, producer, settings, timeout_s
                )
                say("adaptation: a training round on the labels the worker saw")
                report["adaptation"] = await _adaptation(
                    worker, broker, producer, consumer, test, truth, feedback, timeout_s
                )
                if languages is not None:
                    say("languages: a Chinese platform, and Chinese listings by English labels")
                    report["languages"] = await _languages(
                        worker, broker, producer, consumer, languages, timeout_s
                    )
        finally:
            await consumer.stop()
            await producer.stop()
            await worker.stop()
            metrics_server.shutdown()  # type: ignore[attr-defined]
    report["data"] = {
        "myntra": str(data_path),
        "flipkart": str(FLIPKART_SAMPLE),
        "online_retail": None if quick else str(RETAIL_SAMPLE),
        "languages": settings.data_dir if languages else None,
    }
    report["total_s"] = time.perf_counter() - started
    return report


async def _collect(
    consumer: AIOKafkaConsumer, prefix: str, count: int, timeout_s: float
) -> dict[str, dict[str, Any]]:
    """Classifications whose event id starts with ``prefix``, by item, until ``count``."""
    out: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        for messages in batch.values():
            for message in messages:
                record = json.loads(message.value)
                if record["event_id"].startswith(prefix):
                    out[record["item_id"]] = record
    return out


def _top1(records: list[dict[str, Any]], truth: dict[str, str]) -> float:
    hits = [bool(r["top_k"]) and r["top_k"][0]["category"] == truth[r["item_id"]] for r in records]
    return float(np.mean(hits)) if hits else 0.0


def _classification(
    test: list[Listing],
    truth: dict[str, str],
    results: dict[str, dict[str, Any]],
    categories: dict[str, int],
    shots: int,
    labelled: int,
    t0: float,
) -> dict[str, Any]:
    records = [results[i] for i in truth if i in results]
    latencies = np.array([r["ts"] - r["listing_ts"] for r in records]) if records else np.zeros(1)
    top3 = [truth[r["item_id"]] in [c["category"] for c in r["top_k"][:3]] for r in records]
    last = max((r["ts"] for r in records), default=t0)
    platform_of = {x.item_id: x.platform for x in test}
    platforms = {}
    for platform in categories:
        own = [r for r in records if platform_of[r["item_id"]] == platform]
        platforms[platform] = {
            "categories": categories[platform],
            "test_listings": sum(1 for x in test if x.platform == platform),
            "accuracy_top1": _top1(own, truth),
        }
    return {
        "shots": shots,
        "labelled_events": labelled,
        "test_events": len(test),
        "classifications": len(records),
        "missing": len(test) - len(records),
        "platforms": platforms,
        "accuracy_top1": _top1(records, truth),
        "accuracy_top3": float(np.mean(top3)) if top3 else 0.0,
        "throughput_items_per_s": len(records) / max(last - t0, 1e-9),
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p99_s": float(np.percentile(latencies, 99)),
        "model_versions": sorted({r["model_version"] for r in records}),
    }


async def _feedback_loop(
    worker: Any,
    broker: EmbeddedBroker,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    test: list[Any],
    truth: dict[str, str],
    before: dict[str, dict[str, Any]],
    timeout_s: float,
) -> dict[str, Any]:
    """Answer the review requests with the held-back labels, then list the unreviewed test
    listings again; their accuracy before and after."""
    settings = worker.settings
    metrics = worker.metrics
    deadline = time.monotonic() + timeout_s
    raised = metrics.total(metrics.review_requests)
    reviews: list[dict[str, Any]] = []
    while len(reviews) < raised and time.monotonic() < deadline:
        records = await read_to_end(broker.bootstrap, settings.topic("review-requests"))
        reviews = [json.loads(r.value) for r in records]
    answers = [
        {
            "event_id": f"answer-{r['review_id']}",
            "platform": r["platform"],
            "item_id": r["item_id"],
            "category": truth[r["item_id"]],
            "source": "reviewer",
            "review_id": r["review_id"],
            "ts": time.time(),
        }
        for r in reviews
    ]
    await produce_events(
        broker.bootstrap, settings.topic("labels"), answers, key_field="item_id", producer=producer
    )
    await wait_until(
        lambda: metrics.total(metrics.labels_applied) >= len(answers),
        max(1.0, deadline - time.monotonic()),
        f"{len(answers)} answers to be applied",
    )
    reviewed = {r["item_id"] for r in reviews}
    rest = [x for x in test if x.item_id not in reviewed]
    after = await _relist(broker, producer, consumer, settings, rest, "again-", deadline)
    both = [i for i in after if i in before]
    return {
        "review_requests": len(reviews),
        "answered": len(answers),
        "novel_listings": int(metrics.total(metrics.novel_listings)),
        "unreviewed_listings": len(rest),
        "relisted_classified": len(after),
        "accuracy_before": _top1([before[i] for i in both], truth),
        "accuracy_after": _top1([after[i] for i in both], truth),
        "after": after,
    }


async def _relist(
    broker: EmbeddedBroker,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    settings: Settings,
    listings: list[Listing],
    prefix: str,
    deadline: float,
) -> dict[str, dict[str, Any]]:
    """List ``listings`` again (event ids starting ``prefix``); their classifications."""
    events = [
        {**listing_event(x, labelled=False), "event_id": f"{prefix}{x.item_id}"} for x in listings
    ]
    send = asyncio.ensure_future(
        produce_events(
            broker.bootstrap,
            settings.topic("listings"),
            events,
            key_field="item_id",
            producer=producer,
        )
    )
    out = await _collect(consumer, prefix, len(events), max(1.0, deadline - time.monotonic()))
    await send
    return out


# --------------------------------------------------------------------------- languages

CN, CROSS_EN, CROSS_CN = "shop-cn", "group-en", "group-cn"
MULTILINGUAL = ("bundled:multilingual-e5-small", "bundled:use-multilingual-v3")
LANGUAGE_QUERIES = 15  # unlabelled listings per category


def _language_listings(
    settings: Settings, shots: int, seed: int
) -> dict[str, tuple[list[Listing], list[Listing]]] | None:
    """(labelled, unlabelled) listings of the languages section's platforms; None unless the
    encoder is a multilingual one and the data folder has Chinese titles (they carry no
    licence to ship: the demo reads them where they are)."""
    from metaguide.eval.languages import CHINESE_FILE, load_chinese_titles, load_english_shared
    from metaguide.eval.myntra import FLIPKART_FILE, MYNTRA_FILE

    data_dir = Path(settings.data_dir)
    needed = (CHINESE_FILE, MYNTRA_FILE, FLIPKART_FILE)
    if settings.model not in MULTILINGUAL or not all((data_dir / f).exists() for f in needed):
        return None
    rng = np.random.default_rng(seed)

    def split(rows: list[Listing], platform: str, n_shots: int, n_queries: int) -> Any:
        by_category: dict[str, list[Listing]] = {}
        for row in rows:
            by_category.setdefault(row.category, []).append(row)
        labelled, unlabelled = [], []
        for category, members in sorted(by_category.items()):
            if len(members) < n_shots + n_queries:
                continue
            picked = [members[i] for i in rng.permutation(len(members))[: n_shots + n_queries]]
            renamed = [
                Listing(platform, f"{platform}-{x.item_id}", x.title, category, {}) for x in picked
            ]
            labelled += renamed[:n_shots]
            unlabelled += renamed[n_shots:]
        return labelled, unlabelled

    chinese = load_chinese_titles(data_dir / CHINESE_FILE)
    english = load_english_shared(data_dir)
    shared = {x.category for x in english}
    cn = split(chinese, CN, shots, LANGUAGE_QUERIES)
    cross_en, _ = split(english, CROSS_EN, shots, 0)
    _, cross_cn = split([x for x in chinese if x.category in shared], CROSS_CN, 0, LANGUAGE_QUERIES)
    return {CN: cn, CROSS_EN: (cross_en, []), CROSS_CN: ([], cross_cn)}


async def _languages(
    worker: Any,
    broker: EmbeddedBroker,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    platforms: dict[str, tuple[list[Listing], list[Listing]]],
    timeout_s: float,
) -> dict[str, Any]:
    """A Chinese platform learns from Chinese labels; a grouped one is classified by English
    labels (centred, metaguide/classify/centring.py), then listed again once its mean holds
    all its listings."""
    settings = worker.settings
    deadline = time.monotonic() + timeout_s
    labelled = [x for rows, _ in platforms.values() for x in rows]
    before = sum(worker.prototypes.categories().values())
    await produce_events(
        broker.bootstrap,
        settings.topic("listings"),
        (listing_event(x, labelled=True) for x in labelled),
        key_field="item_id",
        producer=producer,
    )
    await wait_until(
        lambda: sum(worker.prototypes.categories().values()) >= before + len(labelled),
        max(1.0, deadline - time.monotonic()),
        f"{len(labelled)} labelled listings to reach the prototypes",
    )
    out: dict[str, Any] = {"encoder": settings.model}
    for platform in (CN, CROSS_CN):
        rows = platforms[platform][1]
        truth = {x.item_id: x.category for x in rows}
        first = await _relist(broker, producer, consumer, settings, rows, "lang-", deadline)
        out[platform] = {
            "categories": len(set(truth.values())),
            "labelled": len(platforms[CROSS_EN if platform == CROSS_CN else CN][0]),
            "listings": len(rows),
            "accuracy_top1": _top1(list(first.values()), truth),
        }
        if platform == CROSS_CN:
            again = await _relist(broker, producer, consumer, settings, rows, "lang2-", deadline)
            out[platform]["accuracy_top1_again"] = _top1(list(again.values()), truth)
    return out


def _language_lines(g: dict[str, Any]) -> list[str]:
    cn, cross = g[CN], g[CROSS_CN]
    return [
        f"5. Languages ({g['encoder']}; Chinese titles from the data folder)",
        f"  {CN:<20} {cn['categories']} categories, {cn['labelled']} Chinese labelled listings:"
        f" top-1 {_accuracy_line(cn)}",
        f"  {CROSS_CN:<20} {cross['categories']} categories labelled in English only"
        f" ({cross['labelled']} listings of {CROSS_EN}, one group): top-1 {_accuracy_line(cross)}",
    ]


def _accuracy_line(p: dict[str, Any]) -> str:
    line = f"{p['accuracy_top1']:.3f} on {p['listings']} listings"
    if "accuracy_top1_again" in p:
        line += f", {p['accuracy_top1_again']:.3f} listed again (its mean known)"
    return line


# --------------------------------------------------------------------------- recommendations


async def _recommendations(
    worker: Any,
    broker: EmbeddedBroker,
    producer: AIOKafkaProducer,
    settings: Settings,
    timeout_s: float,
    k: int = 10,
) -> dict[str, Any]:
    """Online Retail's products as listings, purchases before the cut-off as clicks; the
    worker's answers over HTTP for the customers who buy after it, against popularity."""
    import aiohttp

    from metaguide.eval.recommend import ranking_metrics, temporal_split
    from metaguide.eval.retail import (
        PLATFORM,
        _parse_ts,
        click_events,
        listing_events,
        load_online_retail,
    )

    data = load_online_retail(RETAIL_SAMPLE)
    split = temporal_split(data, _parse_ts(f"{RETAIL_CUTOFF} 00:00"))
    catalog = set(split.catalog_items)
    listings = listing_events(data, prefix=ITEM_PREFIX, before=split.cutoff)
    train = click_events(data, prefix=ITEM_PREFIX, before=split.cutoff)
    metrics = worker.metrics
    catalogued = len(worker.clicks.catalog)
    refused = metrics.total(metrics.dead_letters)
    await produce_events(
        broker.bootstrap,
        settings.topic("listings"),
        listings,
        key_field="item_id",
        producer=producer,
    )
    await wait_until(
        lambda: (
            len(worker.clicks.catalog) - catalogued + metrics.total(metrics.dead_letters) - refused
            >= len(listings)
        ),
        timeout_s,
        f"{len(listings)} products listed",
    )
    started = time.perf_counter()
    await produce_events(
        broker.bootstrap, settings.topic("clicks"), train, key_field="user_id", producer=producer
    )
    await wait_until(
        lambda: metrics.total(metrics.user_updates) >= len(train),
        timeout_s,
        f"{len(train)} purchases folded into profiles",
    )
    clicks_s = time.perf_counter() - started
    title = {f"{ITEM_PREFIX}{code}": text for code, text in data.items.items()}
    targets_of = {u: {f"{ITEM_PREFIX}{i}" for i in t} for u, t in split.targets.items()}
    history: dict[str, list[str]] = {}
    for c in train:
        history.setdefault(c["user_id"], []).append(c["item_id"])
    counts = Counter(c["item_id"] for c in train)
    popular = [item for item, _ in counts.most_common()]
    web = f"http://127.0.0.1:{settings.web_port}"
    async with aiohttp.ClientSession() as http:

        async def ask(user: str) -> dict[str, Any]:
            url = f"{web}/recommendations/{PLATFORM}/{user}?k={k}"
            async with http.get(url) as resp:
                body: dict[str, Any] = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"GET {url}: {resp.status} {body}")
                return body

        hits: dict[str, list[float]] = {"metaguide": [], "popularity": []}
        cold: dict[str, list[float]] = {"metaguide": [], "popularity": []}
        shown: list[dict[str, Any]] = []
        for user, targets in sorted(targets_of.items()):
            if user not in history:
                continue
            answer = [i["item_id"] for i in (await ask(user))["items"]]
            bought = set(history[user])
            baseline = [i for i in popular if i not in bought][:k]
            for name, ranked in (("metaguide", answer), ("popularity", baseline)):
                hit, _ = ranking_metrics(ranked, targets, k)
                hits[name].append(hit)
                if len(bought) <= 5:
                    cold[name].append(hit)
            if len(shown) < 2 and 3 <= len(bought) <= 8:
                shown.append(
                    {
                        "user": user,
                        "clicked": [title[i] for i in history[user][-3:]],
                        "recommended": [title[i] for i in answer[:5]],
                        "bought_later": sum(i in targets for i in answer),
                    }
                )
        # a customer first seen after the cut-off: answers after 0, 1 and 3 of their purchases
        newcomer = next(
            u
            for u, targets in sorted(split.targets.items())
            if u not in history and len({p.item_id for p in data.purchases if p.user_id == u}) >= 3
        )
        theirs = [
            c
            for c in click_events(data, prefix=ITEM_PREFIX)
            if c["user_id"] == newcomer and c["item_id"].removeprefix(ITEM_PREFIX) in catalog
        ]
        firsts = list({c["item_id"]: c for c in theirs}.values())[:3]
        steps: list[dict[str, Any]] = []
        sent = 0
        for n in (0, 1, 3):
            new = firsts[sent:n]
            sent = n
            if new:
                await produce_events(
                    broker.bootstrap,
                    settings.topic("clicks"),
                    [
                        {**c, "event_id": f"newcomer-{c['event_id']}", "ts": time.time()}
                        for c in new
                    ],
                    key_field="user_id",
                    producer=producer,
                )
            body = await ask(newcomer)
            deadline = time.monotonic() + timeout_s
            while int(body.get("clicks", 0)) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                body = await ask(newcomer)
            steps.append(
                {
                    "clicks": n,
                    "sent": [title[c["item_id"]] for c in new],
                    "recommended": [title[i["item_id"]] for i in body["items"][:3]],
                }
            )
    return {
        "platform": PLATFORM,
        "cutoff": RETAIL_CUTOFF,
        "products": len(listings),
        "purchases_as_clicks": len(train),
        "clicks_per_s": len(train) / max(clicks_s, 1e-9),
        "test_customers": len(hits["metaguide"]),
        f"hr@{k}": {name: float(np.mean(v)) for name, v in hits.items()},
        f"hr@{k}_at_most_5_purchases": {
            "customers": len(cold["metaguide"]),
            **{name: float(np.mean(v)) if v else 0.0 for name, v in cold.items()},
        },
        "customers": shown,
        "cold_start": {"user": newcomer, "steps": steps},
    }


# --------------------------------------------------------------------------- adaptation


async def _adaptation(
    worker: Any,
    broker: EmbeddedBroker,
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    test: list[Listing],
    truth: dict[str, str],
    feedback: dict[str, Any],
    timeout_s: float,
) -> dict[str, Any]:
    """A training round on what the worker learned; the gate per platform; and, when a
    snapshot is published, the unreviewed listings' accuracy after the swap."""
    from metaguide.meta.trainer import train_once

    settings = worker.settings
    started = time.perf_counter()
    # the demo's categories have 5 to 10 examples: judge those with at least 5
    result = await train_once(settings, encoder_id=worker.encoder.model_id, min_items=5)
    out: dict[str, Any] = {
        "published": result.published,
        "reason": result.reason,
        "train_s": time.perf_counter() - started,
        "meta_val": {
            "start": result.evaluation.get("meta_val_accuracy_start"),
            "best": result.evaluation.get("meta_val_accuracy"),
            "adapter_learned": result.evaluation.get("learned", {}).get("adapter"),
        },
        "platforms": {
            p: {k: v for k, v in g.items() if k in ("decision", "reason", "identity", "candidates")}
            for p, g in result.evaluation.get("platforms", {}).items()
        },
    }
    if not result.published or result.announcement is None:
        return out
    version = str(result.announcement["version"])
    out["version"] = version
    await wait_until(lambda: worker.model_version == version, timeout_s, f"the swap to {version}")
    before: dict[str, dict[str, Any]] = feedback["after"]
    listings = [x for x in test if x.item_id in before]
    deadline = time.monotonic() + timeout_s
    after = await _relist(broker, producer, consumer, settings, listings, f"v{version}-", deadline)
    platform_of = {x.item_id: x.platform for x in test}
    out["accuracy"] = {}
    for platform in sorted({x.platform for x in listings}):
        ids = [i for i in after if platform_of[i] == platform and i in before]
        out["accuracy"][platform] = {
            "listings": len(ids),
            "before": _top1([before[i] for i in ids], truth),
            "after": _top1([after[i] for i in ids], truth),
            "served_by": out["platforms"].get(platform, {}).get("decision", "identity"),
        }
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable report the demo prints."""
    c = s["classification"]
    lines = [
        "metaguide demo: the embedded broker, one worker, the carried samples",
        "",
        "1. Few-shot classification (new listings get a category from a few labelled ones)",
        f"  labelled             {c['shots']} titles per category, {c['labelled_events']} in all",
    ]
    for platform, p in c["platforms"].items():
        lines.append(
            f"  {platform:<20} {p['categories']} categories, {p['test_listings']} unlabelled"
            f" listings: top-1 {p['accuracy_top1']:.3f}"
        )
    lines += [
        f"  all                  top-1 {c['accuracy_top1']:.3f}, top-3 {c['accuracy_top3']:.3f}"
        f" ({c['classifications']} classified, {c['missing']} missing)",
        f"  throughput           {c['throughput_items_per_s']:.0f} listings/s",
        f"  latency              p50 {c['latency_p50_s'] * 1000:.0f} ms,"
        f" p99 {c['latency_p99_s'] * 1000:.0f} ms (event time to classification)",
        "",
        "2. Feedback (reviewers answer what the worker asks about)",
        *_feedback_lines(s["feedback"]),
    ]
    if "recommendations" in s:
        lines += ["", *_recommendation_lines(s["recommendations"])]
    if "adaptation" in s:
        lines += ["", *_adaptation_lines(s["adaptation"])]
    if "languages" in s:
        lines += ["", *_language_lines(s["languages"])]
    lines += ["", f"wall time {s['total_s']:.1f} s"]
    return "\n".join(lines)


def _recommendation_lines(r: dict[str, Any]) -> list[str]:
    hr, cold = r["hr@10"], r["hr@10_at_most_5_purchases"]
    lines = [
        "3. Recommendations (Online Retail: purchases as clicks, HTTP answers)",
        f"  replayed             {r['products']} products, {r['purchases_as_clicks']} purchases"
        f" before {r['cutoff']} ({r['clicks_per_s']:.0f} clicks/s)",
        f"  HR@10                {hr['metaguide']:.3f} against popularity {hr['popularity']:.3f}"
        f" ({r['test_customers']} customers who bought after {r['cutoff']})",
        f"  with 1-5 purchases   {cold['metaguide']:.3f} against popularity"
        f" {cold['popularity']:.3f} ({cold['customers']} customers)",
    ]
    for c in r["customers"]:
        lines += [
            f"  customer {c['user']}: bought {'; '.join(c['clicked'])}",
            f"    recommended {'; '.join(c['recommended'])}"
            f" ({c['bought_later']} of the 10 bought later)",
        ]
    lines.append(f"  a new customer ({r['cold_start']['user']}):")
    for step in r["cold_start"]["steps"]:
        sent = f" after buying {'; '.join(step['sent'])}" if step["sent"] else ""
        lines.append(f"    {step['clicks']} clicks{sent}: {'; '.join(step['recommended'])}")
    return lines


def _adaptation_lines(a: dict[str, Any]) -> list[str]:
    lines = [
        "4. Adaptation (a training round on the labels the worker saw, judged per platform)",
        f"  training round       {a['train_s']:.1f} s: {a['reason']}",
    ]
    m = a.get("meta_val", {})
    if m.get("start") is not None:
        kept = "a learned adapter" if m["adapter_learned"] else "the adapter stayed the identity"
        lines.append(
            f"  meta-validation      {m['start']:.3f} -> {m['best']:.3f} (heads fine-tuned from"
            f" the prototypes; {kept})"
        )
    for platform, g in a["platforms"].items():
        scores = ", ".join(
            f"{name} {c['accuracy']:.3f}" for name, c in g.get("candidates", {}).items()
        )
        identity = f"raw prototypes {g['identity']:.3f}, " if "identity" in g else ""
        lines.append(
            f"  {platform:<20} {g['decision']} ({g['reason']}) {identity}{scores}".rstrip()
        )
    for platform, acc in a.get("accuracy", {}).items():
        lines.append(
            f"  after the swap       {platform}: top-1 {acc['before']:.3f} -> {acc['after']:.3f}"
            f" on {acc['listings']} listings (served by {acc['served_by']},"
            f" snapshot {a['version']})"
        )
    return lines


def _feedback_lines(f: dict[str, Any]) -> list[str]:
    return [
        f"  review requests      {f['review_requests']} raised, {f['answered']} answered"
        " with the held-back labels",
        f"  after the answers    top-1 {f['accuracy_before']:.3f} -> {f['accuracy_after']:.3f}"
        f" on the {f['unreviewed_listings']} listings nobody reviewed, listed again",
        f"  novel listings       {f['novel_listings']} (far from every known category)",
    ]
