"""``metaguide train``: labelled listings -> MAML -> champion/challenger gate -> snapshot.

Labelled data comes from the ``category-updates`` topic (every labelled item's base
embedding, its platform and category, written by the workers: nothing is re-embedded; a
correction's update takes an item out of its old category again), or
from a data set for offline runs. Labels are (platform, category) pairs, split into
meta-train and meta-validation categories. The challenger is meta-trained on the first and
early-stopped on the second; then it and the serving snapshot (the champion; the identity
when there is none) are scored on the same fresh validation episodes, and the challenger is
published only if it scores higher. Then each platform is judged on its own validation
categories (``platform_gate``): only a platform where the challenger beats the identity beyond
noise is served with learned weights (the initialisation adapted in a few steps on its
labelled listings); every other platform, and any platform the round never saw, keeps raw
prototypes. One pooled score would hide a platform that loses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaguide.classify.prototypes import prototype_key, split_key
from metaguide.config import Settings
from metaguide.contracts.codec import vector_from_b64
from metaguide.kafka.client import kafka_client_options, read_to_end
from metaguide.meta.maml import (
    Adapter,
    EpisodeSampler,
    MetaConfig,
    adapt,
    category_split,
    episode_accuracy,
    meta_train,
)
from metaguide.meta.snapshots import (
    MANIFEST,
    MODEL_NAME,
    FolderStore,
    Snapshot,
    SnapshotError,
    SnapshotStore,
    announcement,
    build_snapshot,
    load_snapshot,
    parse_announcement,
)

__all__ = [
    "Labelled",
    "TrainResult",
    "announce",
    "format_gate",
    "platform_gate",
    "latest_announcement",
    "read_labelled",
    "rollback",
    "snapshot_store",
    "train_once",
    "publish_adapter",
]

log = logging.getLogger("metaguide.trainer")

GATE_EPISODES = 100
ADAPT_PER_CATEGORY = 20  # labelled examples per category used to adapt a platform


@dataclass
class Labelled:
    """Labelled base embeddings: one row per labelled event, and per distinct title."""

    x: np.ndarray
    platforms: list[str]
    categories: list[str]
    window: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [prototype_key(p, c) for p, c in zip(self.platforms, self.categories, strict=True)]

    @classmethod
    def from_rows(cls, rows: list[tuple[Any, ...]], window: dict[str, Any]) -> Labelled:
        """From (event id, platform, category, embedding[, sign]) rows: what is labelled now.

        A redelivered event (at least once) repeats its event id; its embedding may differ in
        the last bits (another micro-batch), so the id, not the vector, says it is the same.
        A row of sign -1 takes an item out of a category (a correction): what remains is what
        was added and not taken out again, whatever the order. Then one row per vector and
        category: the same title listed twice embeds the same.
        """
        seen_ids: set[str] = set()
        net: dict[tuple[str, str, bytes], list[Any]] = {}
        for row in rows:
            event_id, platform, category, emb = row[:4]
            if event_id in seen_ids:
                continue
            seen_ids.add(event_id)
            digest = np.asarray(emb, dtype=np.float16).tobytes()
            entry = net.setdefault((platform, category, digest), [0, emb])
            entry[0] += row[4] if len(row) > 4 else 1
        keep = [(p, c, entry[1]) for (p, c, _), entry in net.items() if entry[0] > 0]
        if not keep:
            return cls(np.zeros((0, 0), np.float32), [], [], window)
        return cls(
            np.stack([r[2] for r in keep]).astype(np.float32),
            [r[0] for r in keep],
            [r[1] for r in keep],
            {**window, "examples": len(keep), "duplicates_dropped": len(rows) - len(keep)},
        )


def snapshot_store(settings: Settings) -> FolderStore:
    return FolderStore(settings.snapshot_dir or str(Path(settings.state_dir) / "snapshots"))


def _bootstrap(settings: Settings) -> str:
    return settings.broker_url.removeprefix("kafka://")


async def _read_topic(settings: Settings, topic: str) -> list[Any]:
    return await read_to_end(_bootstrap(settings), topic, **kafka_client_options(settings))


async def read_labelled(settings: Settings) -> Labelled:
    """The labelled embeddings the workers published on ``category-updates``."""
    records = await _read_topic(settings, settings.topic("category-updates"))
    rows = []
    first, last = float("inf"), 0.0
    for rec in records:
        try:
            update = json.loads(rec.value)
            rows.append(
                (
                    update["event_id"],
                    update["platform"],
                    update["category"],
                    vector_from_b64(update["emb"], np.float32),
                    update.get("sign", 1),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable category update at offset %s: %s", rec.offset, exc)
            continue
        first, last = min(first, rec.timestamp / 1000), max(last, rec.timestamp / 1000)
    window = {"source": settings.topic("category-updates"), "records": len(records)}
    if rows:
        window.update(first_ts=first, last_ts=last)
    return Labelled.from_rows(rows, window)


async def latest_announcement(settings: Settings) -> dict[str, Any] | None:
    """The serving snapshot's announcement: the last valid record for the model name."""
    latest = None
    for rec in await _read_topic(settings, settings.topic("snapshots")):
        try:
            value = parse_announcement(rec.value)
        except SnapshotError:
            continue
        if value["model"] == MODEL_NAME:
            latest = value
    return latest


async def announce(settings: Settings, value: dict[str, Any]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=_bootstrap(settings), acks="all", **kafka_client_options(settings)
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic("snapshots"), key=MODEL_NAME.encode(), value=json.dumps(value).encode()
        )
    finally:
        await producer.stop()


async def publish_adapter(
    settings: Settings,
    store: SnapshotStore,
    init: Adapter,
    platforms: dict[str, Adapter],
    *,
    encoder_id: str,
    data_window: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    parent: int | None = None,
) -> dict[str, Any]:
    """Write a new version to the store and announce it; returns the announcement."""
    version = max(store.versions(MODEL_NAME), default=0) + 1
    files = build_snapshot(
        init,
        platforms,
        version=version,
        encoder_id=encoder_id,
        data_window=data_window,
        training=training,
        evaluation=evaluation,
        parent=parent,
    )
    uri = store.put(MODEL_NAME, version, files)
    value = announcement(version, uri, files[MANIFEST], metrics=evaluation)
    await announce(settings, value)
    return value


def adapt_platforms(
    init: Adapter, data: Labelled, config: MetaConfig, seed: int = 0
) -> dict[str, Adapter]:
    """Each platform's labelled listings adapt the initialisation (the inner loop, once)."""
    rng = np.random.default_rng(seed)
    out = {}
    for platform in sorted(set(data.platforms)):
        by_cat: dict[str, list[int]] = {}
        for i, (p, c) in enumerate(zip(data.platforms, data.categories, strict=True)):
            if p == platform:
                by_cat.setdefault(c, []).append(i)
        by_cat = {c: v for c, v in by_cat.items() if len(v) >= 2}
        if len(by_cat) < 2:
            continue  # nothing to adapt on: the platform is served by the initialisation
        idx, ys = [], []
        for y, rows in enumerate(by_cat.values()):
            take = rng.permutation(rows)[:ADAPT_PER_CATEGORY]
            idx += list(take)
            ys += [y] * len(take)
        x = torch.as_tensor(data.x[idx])
        params = {k: t.requires_grad_(True) for k, t in init.tensors().items()}
        fast = adapt(
            params,
            x,
            torch.tensor(ys),
            len(by_cat),
            steps=config.inner_steps,
            lr=config.inner_lr,
            temperature=config.temperature,
        )
        out[platform] = Adapter.from_tensors(fast)
    return out


def platform_gate(
    adapter: Adapter, data: Labelled, val_categories: list[str], config: MetaConfig
) -> dict[str, dict[str, Any]]:
    """Each platform judged on its own validation categories: the challenger (with its
    per-episode adaptation) against the identity on the same episodes. A platform is served
    with learned weights only when the lower end of the 95% interval of the paired difference
    is above zero; one with fewer than two validation categories is not judged (identity)."""
    labels = data.labels
    out: dict[str, dict[str, Any]] = {}
    for platform in sorted(set(data.platforms)):
        own = [c for c in val_categories if split_key(c)[0] == platform]
        try:
            sampler = EpisodeSampler(
                labels,
                own,
                n_way=min(20, len(own)),
                k_shot=config.k_shot,
                q_query=config.q_query,
                seed=config.seed + 103,
            )
        except ValueError:
            out[platform] = {
                "decision": "identity",
                "reason": f"too few labels to judge ({len(own)} validation categories)",
            }
            continue
        episodes = sampler.episodes(GATE_EPISODES)
        learned = episode_accuracy(
            adapter,
            data.x,
            episodes,
            steps=config.inner_steps,
            lr=config.inner_lr,
            temperature=config.temperature,
        )
        identity = episode_accuracy(None, data.x, episodes, temperature=config.temperature)
        paired = learned - identity
        half = 1.96 * float(paired.std(ddof=1)) / math.sqrt(len(paired))
        difference = {"mean": round(float(paired.mean()), 4), "ci95": round(half, 4)}
        gains = float(paired.mean()) - half > 0
        out[platform] = {
            "decision": "adapted" if gains else "identity",
            "reason": "gain beyond noise" if gains else "no gain beyond noise",
            "learned": round(float(learned.mean()), 4),
            "identity": round(float(identity.mean()), 4),
            "difference": difference,
            "episodes": len(episodes),
            "way": sampler.n_way,
        }
    return out


def format_gate(platforms: dict[str, dict[str, Any]]) -> str:
    """The per-platform gate as a table (``metaguide train``)."""
    lines = [f"{'platform':<20} {'learned':>8} {'identity':>9} {'difference':>18}  decision"]
    for platform, g in platforms.items():
        if "learned" in g:
            d = g["difference"]
            diff = f"{d['mean']:+.4f} ± {d['ci95']:.4f}"
            lines.append(
                f"{platform:<20} {g['learned']:>8.4f} {g['identity']:>9.4f} {diff:>18}"
                f"  {g['decision']} ({g['reason']})"
            )
        else:
            lines.append(
                f"{platform:<20} {'':>8} {'':>9} {'':>18}  {g['decision']} ({g['reason']})"
            )
    return "\n".join(lines)


@dataclass
class TrainResult:
    published: bool
    reason: str
    evaluation: dict[str, Any]
    announcement: dict[str, Any] | None = None


async def train_once(
    settings: Settings,
    *,
    encoder_id: str,
    data: Labelled | None = None,
    config: MetaConfig | None = None,
    store: SnapshotStore | None = None,
    min_items: int = 10,
    publish: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """One training round: read, meta-train, gate against the serving snapshot, publish."""
    cfg = config or MetaConfig()
    store = store or snapshot_store(settings)
    data = data if data is not None else await read_labelled(settings)
    labels = data.labels
    split = category_split(
        labels, min_items=min_items, val_fraction=0.25, test_fraction=0.0, seed=cfg.seed
    )
    usable_train = [c for c in split["train"] if labels.count(c) > cfg.k_shot]
    # training episodes cannot be wider than the categories there are to train on
    cfg = replace(cfg, n_way=min(cfg.n_way, len(usable_train)))
    if len(split["val"]) < 2 or cfg.n_way < 2:
        return TrainResult(
            False,
            f"not enough labelled categories: {len(usable_train)} to train on, "
            f"{len(split['val'])} to validate on (need categories with >= {min_items} "
            "distinct examples)",
            {"categories": len(set(labels)), "examples": len(labels)},
        )
    serving = await latest_announcement(settings)
    champion: Snapshot | None = None
    if serving is not None:
        try:
            champion = load_snapshot(
                store, serving["uri"], serving["sha256"], encoder_id=encoder_id, dim=data.x.shape[1]
            )
        except SnapshotError as exc:
            log.warning(
                "serving snapshot %s unusable (%s); gating against the identity",
                serving["version"],
                exc,
            )
    started = time.monotonic()
    report = await asyncio.to_thread(
        meta_train, data.x, labels, split["train"], split["val"], cfg, progress=progress
    )
    gate = EpisodeSampler(
        labels,
        split["val"],
        n_way=min(20, len(split["val"])),
        k_shot=cfg.k_shot,
        q_query=cfg.q_query,
        seed=cfg.seed + 101,
    )
    episodes = gate.episodes(GATE_EPISODES)

    def score(adapter: Adapter | None) -> float:
        steps = cfg.inner_steps if adapter is not None else 0
        return float(
            episode_accuracy(
                adapter, data.x, episodes, steps=steps, lr=cfg.inner_lr, temperature=cfg.temperature
            ).mean()
        )

    challenger_acc = score(report.adapter)
    champion_acc = score(champion.init if champion else None)
    evaluation = {
        "gate_episodes": GATE_EPISODES,
        "gate_way": gate.n_way,
        "challenger_accuracy": round(challenger_acc, 4),
        "champion_accuracy": round(champion_acc, 4),
        "champion_version": champion.version if champion else "base",
        "raw_accuracy": round(score(None), 4),
        "meta_val_accuracy": round(report.val_accuracy, 4),
        "episodes_run": report.episodes_run,
        "train_seconds": round(time.monotonic() - started, 1),
        "categories": {k: len(v) for k, v in split.items()},
    }
    gate_by_platform = platform_gate(report.adapter, data, split["val"], cfg)
    evaluation["platforms"] = gate_by_platform
    if challenger_acc <= champion_acc:
        return TrainResult(
            False,
            f"challenger {challenger_acc:.4f} does not beat the serving "
            f"{evaluation['champion_version']} ({champion_acc:.4f}) on the gate episodes",
            evaluation,
        )
    approved = {p for p, g in gate_by_platform.items() if g["decision"] == "adapted"}
    if not approved:
        return TrainResult(
            False,
            "no platform gains beyond noise on its own validation episodes: every platform "
            "stays with raw prototypes",
            evaluation,
        )
    if not publish:
        return TrainResult(False, "won the gate; not published (--no-publish)", evaluation)
    adapted = adapt_platforms(report.adapter, data, cfg, seed=cfg.seed)
    platforms = {p: adapted.get(p, report.adapter) for p in sorted(approved)}
    value = await publish_adapter(
        settings,
        store,
        report.adapter,
        platforms,
        encoder_id=encoder_id,
        data_window=data.window,
        training=cfg.to_json(),
        evaluation=evaluation,
        parent=int(champion.version) if champion else None,
    )
    return TrainResult(True, f"published version {value['version']}", evaluation, value)


async def rollback(
    settings: Settings, *, to: int | None = None, store: SnapshotStore | None = None
) -> dict[str, Any]:
    """Announce an earlier version again (default: the one before the serving version)."""
    store = store or snapshot_store(settings)
    serving = await latest_announcement(settings)
    versions = store.versions(MODEL_NAME)
    if to is None:
        if serving is None:
            raise SnapshotError("no_serving", "nothing is serving: nothing to roll back from")
        earlier = [v for v in versions if v < serving["version"]]
        if not earlier:
            raise SnapshotError("no_earlier", f"no version before {serving['version']}")
        to = earlier[-1]
    if to not in versions:
        raise SnapshotError("unknown_version", f"version {to} is not in the store ({versions})")
    uri = store.uri(MODEL_NAME, to)
    manifest = store.read(uri, MANIFEST)
    value = announcement(to, uri, manifest, action="rollback")
    load_snapshot(store, uri, value["sha256"])  # refuse to announce what a worker would refuse
    await announce(settings, value)
    return value
