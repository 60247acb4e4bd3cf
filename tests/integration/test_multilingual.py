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
        events = [_listing(n, t, c) for n, (t, c) in enumerate(labelled)]
        await produce_events(
            broker.bootstrap, settings.topic("listings"), events, key_field="item_id"
        )
        await wait_until(
            lambda: sum(worker.prototypes.categories("shop-cn").values()) == len(labelled),
            60,
            "the labelled listings folded into prototypes",
        )
        events = [_listing(1000 + n, t, None) for n, (t, _) in enumerate(queries)]
        await produce_events(
            broker.bootstrap, settings.topic("listings"), events, key_field="item_id"
        )
        out = await read_topic(broker.bootstrap, settings.topic("classifications"), len(events))
        truth = {f"cn{1000 + n}": c for n, (_, c) in enumerate(queries)}
        right = sum(r["top_k"][0]["category"] == truth[r["item_id"]] for r in out)
        accuracy = right / len(queries)
        print(f"Chinese listings, {SHOTS} labelled per category: top-1 {accuracy:.3f}")
        assert accuracy >= 0.8  # 4-way; chance is 0.25

        # English labels only, Chinese listings of the grouped platform
        english = [(t, c) for c, rows in _titles("english_titles.tsv").items() for t in rows]
        events = [_listing(2000 + n, t, c, "shop-en") for n, (t, c) in enumerate(english)]
        await produce_events(
            broker.bootstrap, settings.topic("listings"), events, key_field="item_id"
        )
        await wait_until(
            lambda: sum(worker.prototypes.categories("shop-en").values()) == len(english),
            60,
            "the English labelled listings folded into prototypes",
        )
        events = [_listing(3000 + n, t, None, "shop-cnx") for n, (t, _) in enumerate(queries)]
        await produce_events(
            broker.bootstrap, settings.topic("listings"), events, key_field="item_id"
        )
        out = await read_topic(
            broker.bootstrap, settings.topic("classifications"), 2 * len(queries)
        )
        truth = {f"cn{3000 + n}": c for n, (_, c) in enumerate(queries)}
        cross = [r for r in out if r["item_id"] in truth]
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
