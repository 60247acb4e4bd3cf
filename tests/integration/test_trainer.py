"""The trainer against the embedded broker: the gate per platform, publishing, rollback."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from metaguide.config import Settings
from metaguide.meta.heads import HeadConfig
from metaguide.meta.snapshots import SnapshotError, load_snapshot
from metaguide.meta.trainer import (
    Labelled,
    latest_announcement,
    publish_adapter,
    rollback,
    snapshot_store,
    train_once,
)
from tests.unit.test_heads import small as small_heads
from tests.unit.test_meta import synthetic

pytestmark = pytest.mark.integration


def small() -> HeadConfig:
    return small_heads(n_way=5, episodes=200)


async def test_a_round_publishes_heads_for_a_platform_that_gains_once_and_rollback_returns(
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
    verdict = first.evaluation["platforms"]["syn"]
    assert verdict["decision"] == "adapted", verdict
    assert verdict["candidates"]["adapted"]["accuracy"] > verdict["identity"]
    serving = await latest_announcement(settings)
    assert serving is not None and serving["version"] == 1
    snap = load_snapshot(snapshot_store(settings), serving["uri"], serving["sha256"])
    heads = snap.heads_for("syn")
    assert heads is not None and heads.names == sorted(set(labels))
    assert snap.manifest["evaluation"]["platforms"]["syn"]["decision"] == "adapted"
    assert snap.heads_for("another-shop") is None  # never seen: the identity

    # the same labelled data again: nothing new to learn, nothing published
    again = await train_once(settings, encoder_id="syn", data=data, config=small())
    assert not again.published
    assert "nothing new: the serving version 1" in again.reason
    assert snapshot_store(settings).versions("adapter") == [1]

    with pytest.raises(SnapshotError, match="no_earlier"):
        await rollback(settings)
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
