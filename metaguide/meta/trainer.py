"""``metaguide train``: labelled listings -> Proto-MAML -> a gate per platform -> snapshot.

Labelled data comes from the ``category-updates`` topic (every labelled item's base
embedding, its platform and category, written by the workers: nothing is re-embedded; a
correction's update takes an item out of its old category again), or from a data set for
offline runs. Labels are (platform, category) pairs, split into meta-train and
meta-validation categories. Proto-MAML (:mod:`metaguide.meta.heads`) meta-learns, on episodes
of one platform each, an adapter, a step size and a temperature such that heads initialised
from the prototypes and fine-tuned a few steps classify well.

Then each platform is judged on its own validation categories (``platform_gate``), which
meta-training never saw: two candidates, the heads on the meta-learned adapter and the heads
on the base embeddings, are cross-validated against raw prototypes on the same examples. A
platform is served by the candidate that gains beyond noise (its heads fine-tuned on all its
labelled listings); every other platform, and any platform the round never saw, keeps raw
prototypes. One pooled score would hide a platform that loses. A round whose labelled data
is the same as the serving snapshot's publishes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from metaguide.classify.prototypes import prototype_key, split_key
from metaguide.config import Settings
from metaguide.contracts.codec import vector_from_b64
from metaguide.errors import StateError
from metaguide.kafka.client import kafka_client_options, read_to_end
from metaguide.meta.heads import (
    HeadConfig,
    HeadModel,
    HeadReport,
    Residuals,
    fit_residuals,
    judge,
    meta_train_heads,
)
from metaguide.meta.maml import Adapter, category_split, torch_threads
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
    "platform_heads",
    "STATE_ENCODER_KEY",
    "announce",
    "claim_state_encoder",
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

# the snapshots topic's record naming the encoder whose vectors the deployment's state holds
STATE_ENCODER_KEY = b"state-encoder"
GATE_PER_CATEGORY = 20  # a platform's validation examples per category the gate uses
HEADS_PER_CATEGORY = 100  # labelled examples per category its heads are fine-tuned on


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

    def digest(self) -> str:
        """What was learned from, as a hash: the same labelled data gives the same digest."""
        h = hashlib.sha256()
        rows = [r.tobytes() for r in self.x.astype(np.float16)]
        for p, c, v in sorted(zip(self.platforms, self.categories, rows, strict=True)):
            h.update(f"{p}\x1f{c}\x1f".encode() + v)
        return h.hexdigest()

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


async def announce(settings: Settings, value: dict[str, Any], key: bytes = b"") -> None:
    """Send ``value`` to the snapshots topic under ``key`` (the model name by default)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=_bootstrap(settings), acks="all", **kafka_client_options(settings)
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic("snapshots"),
            key=key or MODEL_NAME.encode(),
            value=json.dumps(value).encode(),
        )
    finally:
        await producer.stop()


async def claim_state_encoder(settings: Settings, encoder_id: str, dim: int) -> bool:
    """Check that this deployment's state (items, prototypes, profiles, snapshots: vectors
    of one encoder's space) was built by ``encoder_id``; a deployment's first worker names
    it (True). The claim is a record of the snapshots topic under :data:`STATE_ENCODER_KEY`.
    Raises StateError when another encoder built the state: its vectors cannot be compared
    with this encoder's (docs/operations.md says how to move a deployment)."""
    claimed = None
    for rec in await _read_topic(settings, settings.topic("snapshots")):
        if rec.key == STATE_ENCODER_KEY:
            try:
                claimed = json.loads(rec.value)
            except ValueError:
                log.warning("unreadable state encoder record at offset %s", rec.offset)
    if claimed is None:
        await announce(settings, {"encoder": encoder_id, "dim": dim}, key=STATE_ENCODER_KEY)
        return True
    if claimed.get("encoder") != encoder_id or claimed.get("dim") != dim:
        raise StateError(
            f"this deployment's state was built by the encoder {claimed.get('encoder')!r}"
            f" ({claimed.get('dim')} dimensions) and this worker runs {encoder_id!r} ({dim}):"
            " their vectors cannot be compared. Run the worker with"
            f" METAGUIDE_MODEL={claimed.get('encoder')}, or move the deployment to the new"
            " encoder (docs/operations.md, 'Changing the encoder')"
        )
    return False


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
    heads: dict[str, Residuals] | None = None,
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
        heads=heads,
    )
    uri = store.put(MODEL_NAME, version, files)
    value = announcement(version, uri, files[MANIFEST], metrics=evaluation)
    await announce(settings, value)
    return value


def _rows_by_category(
    data: Labelled, platform: str, categories: set[str] | None, cap: int, seed: int
) -> tuple[list[int], list[str]]:
    """A platform's labelled rows (at most ``cap`` per category, seeded), and their labels."""
    by_cat: dict[str, list[int]] = {}
    for i, (p, c) in enumerate(zip(data.platforms, data.categories, strict=True)):
        if p == platform and (categories is None or c in categories):
            by_cat.setdefault(c, []).append(i)
    rng = np.random.default_rng(seed)
    rows, names = [], []
    for c in sorted(by_cat):
        take = sorted(rng.permutation(by_cat[c])[:cap].tolist())
        rows += take
        names += [c] * len(take)
    return rows, names


def platform_heads(
    model: HeadModel, data: Labelled, decisions: dict[str, str], seed: int = 0
) -> tuple[dict[str, Adapter], dict[str, Residuals]]:
    """What each approved platform is served with: its adapter (the meta-learned one for
    ``adapted``, the identity for ``heads``) and heads fine-tuned on its labelled listings."""
    adapters, heads = {}, {}
    for platform, decision in sorted(decisions.items()):
        chosen = model if decision == "adapted" else model.without_adapter()
        rows, names = _rows_by_category(data, platform, None, HEADS_PER_CATEGORY, seed)
        adapters[platform] = chosen.adapter
        heads[platform] = fit_residuals(chosen, data.x[rows], names)
    return adapters, heads


def platform_gate(
    model: HeadModel, data: Labelled, val_categories: list[str], seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Each platform judged on its own validation categories (never seen in meta-training):
    the heads on the meta-learned adapter (``adapted``) and on the base embeddings
    (``heads``), cross-validated against raw prototypes on the same examples
    (:func:`metaguide.meta.heads.judge`). A platform is served by a candidate only when the
    lower end of the 95% interval of its paired difference is above zero; one with fewer
    than two validation categories is not judged (identity)."""
    out: dict[str, dict[str, Any]] = {}
    for platform in sorted(set(data.platforms)):
        own = {split_key(c)[1] for c in val_categories if split_key(c)[0] == platform}
        rows, names = _rows_by_category(data, platform, own, GATE_PER_CATEGORY, seed)
        if len(set(names)) < 2:
            out[platform] = {
                "decision": "identity",
                "reason": f"too few labels to judge ({len(set(names))} validation categories)",
            }
            continue
        candidates = {"heads": model.without_adapter()}
        if not model.adapter.is_identity():  # meta-training kept a learned adapter
            candidates["adapted"] = model
        verdict = judge(
            candidates,
            data.x[rows],
            np.array(names),
            seed=seed,
        )
        out[platform] = {**verdict, "categories": len(set(names))}
    return out


def format_gate(platforms: dict[str, dict[str, Any]]) -> str:
    """The per-platform gate as a table (``metaguide train``)."""
    lines = [
        f"{'platform':<20} {'identity':>9} {'adapted':>18} {'heads':>18}  decision",
    ]
    for platform, g in platforms.items():
        cells = []
        for name in ("adapted", "heads"):
            c = g.get("candidates", {}).get(name)
            if c is None:
                cells.append(f"{'':>18}")
            else:
                d = c["difference"]
                cells.append(f"{c['accuracy']:.4f} {d['mean']:+.3f}±{d['ci95']:.3f}".rjust(18))
        identity = f"{g['identity']:>9.4f}" if "identity" in g else f"{'':>9}"
        lines.append(
            f"{platform:<20} {identity} {cells[0]} {cells[1]}  {g['decision']} ({g['reason']})"
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
    config: HeadConfig | None = None,
    store: SnapshotStore | None = None,
    min_items: int = 10,
    publish: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """One training round: read, meta-train, judge each platform, publish what gains."""
    cfg = config or HeadConfig(episodes=settings.train_episodes)
    store = store or snapshot_store(settings)
    data = data if data is not None else await read_labelled(settings)
    labels = data.labels
    split = category_split(
        labels, min_items=min_items, val_fraction=0.25, test_fraction=0.0, seed=cfg.seed
    )
    usable_train = [c for c in split["train"] if labels.count(c) > min(cfg.shots)]
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
    digest = data.digest()
    serving = await latest_announcement(settings)
    champion: Snapshot | None = None
    if serving is not None:
        try:
            champion = load_snapshot(
                store, serving["uri"], serving["sha256"], encoder_id=encoder_id, dim=data.x.shape[1]
            )
        except SnapshotError as exc:
            log.warning("serving snapshot %s unusable (%s)", serving["version"], exc)
    if champion is not None and champion.manifest.get("data_window", {}).get("digest") == digest:
        return TrainResult(
            False,
            f"nothing new: the serving version {champion.version} was trained on the same "
            "labelled data",
            {"champion_version": champion.version, "examples": len(labels)},
        )
    started = time.monotonic()

    def learn() -> tuple[HeadReport, dict[str, dict[str, Any]]]:
        with torch_threads(1):
            report = meta_train_heads(
                data.x, labels, data.platforms, split["train"], split["val"], cfg, progress=progress
            )
            return report, platform_gate(report.model, data, split["val"], cfg.seed)

    report, gate = await asyncio.to_thread(learn)
    evaluation = {
        "method": "proto-maml",
        "learned": {**report.model.to_json(), "adapter": not report.model.adapter.is_identity()},
        "meta_val_accuracy_start": round(report.val_accuracy_start, 4),
        "meta_val_accuracy": round(report.val_accuracy, 4),
        "episodes_run": report.episodes_run,
        "train_seconds": round(time.monotonic() - started, 1),
        "categories": {k: len(v) for k, v in split.items()},
        "champion_version": champion.version if champion else "base",
        "platforms": gate,
    }
    approved = {p: g["decision"] for p, g in gate.items() if g["decision"] != "identity"}
    if not approved:
        return TrainResult(
            False,
            "no platform gains beyond noise on its own validation categories: every platform "
            "stays with raw prototypes",
            evaluation,
        )
    if not publish:
        return TrainResult(False, "a platform gains; not published (--no-publish)", evaluation)
    adapters, heads = await asyncio.to_thread(
        platform_heads, report.model, data, approved, cfg.seed
    )
    value = await publish_adapter(
        settings,
        store,
        report.model.adapter,
        adapters,
        heads=heads,
        encoder_id=encoder_id,
        data_window={**data.window, "digest": digest},
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
