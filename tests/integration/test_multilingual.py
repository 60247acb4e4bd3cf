"""A Chinese platform: a worker running multilingual-e5-small, built offline from the installed
packages, on the embedded broker. The titles are tests/data/chinese_titles.tsv and
english_titles.tsv (written for these tests: four categories, twelve Chinese and five English
products each)."""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metaguide.errors import StateError
from metaguide.kafka.replay import produce_events
from metaguide.meta.maml import Adapter
from metaguide.meta.snapshots import MANIFEST, MODEL_NAME, announcement, build_snapshot
from metaguide.meta.trainer import announce, snapshot_store
from tests.conftest import read_topic, wait_until

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
E5 = "bundled:multilingual-e5-small"
SHOTS = 5


def _titles(name: str = "chinese_titles.tsv") -> dict[str, list[str]]:
    by_category: dict[str, list[str]] = defaultdict(list)
    with (DATA / name).open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            by_category[row["category"]].append(row["title"])
    return by_category


def _listing(n: int, title: str, category: str | None, platform: str = "shop-cn") -> dict[str, Any]:
    event = {"event_id": f"e{n}", "platform": platform, "item_id": f"cn{n}", "ts": time.time()}
    event["title"] = title
    if category is not None:
        event["category"] = category
    return event


async def _learn(
    broker: Any,
    settings: Any,
    worker: Any,
    platform: str,
    labelled: list[tuple[str, str]],
    first: int,
) -> None:
    """Send ``platform``'s labelled listings (item ids from ``first`` on) and wait until
    they are folded into its prototypes."""
    events = [_listing(first + n, t, c, platform) for n, (t, c) in enumerate(labelled)]
    await produce_events(broker.bootstrap, settings.topic("listings"), events, key_field="item_id")
    await wait_until(
        lambda: sum(worker.prototypes.categories(platform).values()) == len(labelled),
        60,
        f"{platform}'s labelled listings folded into prototypes",
    )


async def _classify(
    broker: Any,
    settings: Any,
    platform: str,
    queries: list[tuple[str, str]],
    first: int,
    before: int,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Send ``queries`` unlabelled on ``platform``; their classifications (the topic held
    ``before`` others) and their true categories by item id."""
    events = [_listing(first + n, t, None, platform) for n, (t, _) in enumerate(queries)]
    await produce_events(broker.bootstrap, settings.topic("listings"), events, key_field="item_id")
    out = await read_topic(
        broker.bootstrap, settings.topic("classifications"), before + len(queries)
    )
    truth = {f"cn{first + n}": c for n, (_, c) in enumerate(queries)}
    return [r for r in out if r["item_id"] in truth], truth


class _OtherEncoder:
    """Stands for any other encoder: another id, another space."""

    model_id = "bundled:all-MiniLM-L6-v2"
    dim = 384
    streams = 1

    def embed_many(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - never runs
        raise AssertionError("a refused worker embeds nothing")


async def test_a_chinese_platform_learns_from_chinese_examples_on_e5(
    broker: Any, worker_settings: Any, tmp_path: Path
) -> None:
    from metaguide.embedding.e5 import verify_e5
    from workers.app import create_worker

    # shop-en's labels classify shop-cnx's listings: a group, scored centred
    settings = worker_settings(
        model=E5, models_dir=str(tmp_path / "models"), platform_groups="shop-en,shop-cnx"
    )
    worker = create_worker(settings)  # builds the model folder from the packages, offline
    # the built model agrees with the package's own runtime
    assert verify_e5(worker.encoder) > 0.999
    await worker.start()
    try:
        titles = _titles()
        labelled, queries = [], []
        for category, rows in titles.items():
            labelled += [(title, category) for title in rows[:SHOTS]]
            queries += [(title, category) for title in rows[SHOTS:]]
        await _learn(broker, settings, worker, "shop-cn", labelled, 0)
        out, truth = await _classify(broker, settings, "shop-cn", queries, 1000, 0)
        right = sum(r["top_k"][0]["category"] == truth[r["item_id"]] for r in out)
        accuracy = right / len(queries)
        print(f"Chinese listings, {SHOTS} labelled per category: top-1 {accuracy:.3f}")
        assert accuracy >= 0.8  # 4-way; chance is 0.25

        # English labels only, Chinese listings of the grouped platform
        english = [(t, c) for c, rows in _titles("english_titles.tsv").items() for t in rows]
        await _learn(broker, settings, worker, "shop-en", english, 2000)
        cross, truth = await _classify(broker, settings, "shop-cnx", queries, 3000, len(queries))
        assert len(cross) == len(queries) and {r["platform"] for r in cross} == {"shop-cnx"}
        right = sum(r["top_k"][0]["category"] == truth[r["item_id"]] for r in cross)
        print(f"Chinese listings by English labels: top-1 {right / len(queries):.3f}")
        assert right / len(queries) >= 0.6

        # a snapshot built for another encoder is refused; the worker keeps serving its own
        store = snapshot_store(settings)
        files = build_snapshot(
            Adapter.identity(384, 8),
            {},
            version=1,
            encoder_id="bundled:all-MiniLM-L6-v2",
            data_window={},
            training={},
            evaluation={},
        )
        uri = store.put(MODEL_NAME, 1, files)
        await announce(settings, announcement(1, uri, files[MANIFEST]))
        metrics = worker.metrics
        await wait_until(
            lambda: metrics.value(metrics.snapshot_refused, reason="encoder_mismatch") == 1,
            30,
            "the snapshot refused",
        )
        assert worker.model_version == "base"
    finally:
        await worker.stop()

    # a worker running another encoder refuses this deployment's state before it reads any
    other = create_worker(settings, encoder=_OtherEncoder())
    with pytest.raises(StateError, match="built by the encoder 'bundled:multilingual-e5-small'"):
        await other.start()
    assert not other.app.started
