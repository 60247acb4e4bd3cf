"""The trainer against the embedded broker: the champion/challenger gate and rollback."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from metaguide.config import Settings
from metaguide.meta.maml import MetaConfig
from metaguide.meta.snapshots import SnapshotError
from metaguide.meta.trainer import (
    Labelled,
    latest_announcement,
    publish_adapter,
    rollback,
    snapshot_store,
    train_once,
)
from tests.unit.test_meta import config, synthetic

pytestmark = pytest.mark.integration


def small() -> MetaConfig:
    return config(n_way=5, episodes=200, val_episodes=30)


async def test_gate_publishes_only_a_better_adapter_and_rollback_returns(
    broker: Any, tmp_path: Path
) -> None:
    settings = Settings(
        broker_url=broker.url,
        broker_profile="embedded",
        topic_prefix=f"tr{uuid.uuid4().hex[:8]}.",
        state_dir=str(tmp_path),
    )
    x, labels = synthetic()
    data = Labelled(x, ["syn"] * len(labels), labels, {"source": "synthetic"})

    first = await train_once(settings, encoder_id="syn", data=data, config=small())
    assert first.published, first.reason
    assert first.evaluation["challenger_accuracy"] > first.evaluation["raw_accuracy"]
    assert (await latest_announcement(settings))["version"] == 1  # type: ignore[index]

    # the same data and seed give the same adapter: it does not beat itself, so nothing new
    again = await train_once(settings, encoder_id="syn", data=data, config=small())
    assert not again.published
    assert "does not beat the serving 1" in again.reason
    assert snapshot_store(settings).versions("adapter") == [1]

    with pytest.raises(SnapshotError, match="no_earlier"):
        await rollback(settings)
    from metaguide.meta.snapshots import load_snapshot

    serving = await latest_announcement(settings)
    assert serving is not None
    snap = load_snapshot(snapshot_store(settings), serving["uri"], serving["sha256"])
    await publish_adapter(
        settings,
        snapshot_store(settings),
        snap.init,
        {},
        encoder_id="syn",
        data_window={},
        training={},
        evaluation={},
        parent=1,
    )
    assert (await latest_announcement(settings))["version"] == 2  # type: ignore[index]
    value = await rollback(settings)
    latest = await latest_announcement(settings)
    assert value["version"] == 1 and latest is not None
    assert latest["version"] == 1 and latest["action"] == "rollback"


async def test_too_few_categories_is_a_clear_refusal(broker: Any, tmp_path: Path) -> None:
    settings = Settings(
        broker_url=broker.url,
        broker_profile="embedded",
        topic_prefix=f"tr{uuid.uuid4().hex[:8]}.",
        state_dir=str(tmp_path),
    )
    x, labels = synthetic(categories=3)
    data = Labelled(x, ["syn"] * len(labels), labels, {})
    result = await train_once(settings, encoder_id="syn", data=data, config=small())
    assert not result.published
    assert "not enough labelled categories" in result.reason
