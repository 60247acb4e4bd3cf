"""Final worker state read from the table changelogs, and how two such states must compare."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from metaguide.events import vector_from_b64

__all__ = ["complete", "compare_states", "final_state"]


async def _read_changelog(bootstrap: str, topic: str) -> dict[bytes, Any]:
    """The last value of every key of a changelog topic (what a recovering worker would load)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return {}
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return {}  # metadata not in yet: the caller asks again
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        state: dict[bytes, Any] = {}
        pending = {tp for tp in tps if end[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    state[m.key] = None if m.value is None else json.loads(m.value)
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
        return state
    finally:
        await consumer.stop()


async def final_state(bootstrap: str, app_id: str) -> dict[str, Any]:
    sums = await _read_changelog(bootstrap, f"{app_id}-category-sums-changelog")
    users = await _read_changelog(bootstrap, f"{app_id}-users-changelog")
    protos = {
        k.decode(): (v["count"], np.asarray(v["sum"], dtype=np.float64))
        for k, v in sums.items()
        if v
    }
    profiles = {}
    for k, v in users.items():
        if not v:
            continue
        vectors = [vector_from_b64(p["s"], np.float32) for p in v["p"]]
        profiles[k.decode()] = {
            "n": v["n"],
            "recent": sorted(v["recent"]),
            "bought": v["bought"],
            "mass": np.sum(vectors, axis=0) if vectors else np.zeros(1),
            "weight": sum(p["w"] for p in v["p"]),
        }
    return {"prototypes": protos, "users": profiles}


def complete(state: dict[str, Any], listings: int, clicks: int) -> bool:
    return (
        sum(c for c, _ in state["prototypes"].values()) >= listings
        and sum(u["n"] for u in state["users"].values()) >= clicks
    )


def compare_states(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal up to what arrival order may change (see tests/integration/test_crash_safety.py)."""
    assert got["prototypes"].keys() == expected["prototypes"].keys()
    for key, (count, total) in expected["prototypes"].items():
        assert got["prototypes"][key][0] == count, key  # none lost, none twice
        # the encoder's float32 output varies by ~1e-7 with the batch it ran in
        np.testing.assert_allclose(got["prototypes"][key][1], total, rtol=0, atol=1e-5)
    assert got["users"].keys() == expected["users"].keys()
    for key, want in expected["users"].items():
        have = got["users"][key]
        assert (have["n"], have["recent"], have["bought"]) == (
            want["n"],
            want["recent"],
            want["bought"],
        ), key
        # weights decay with event time, applied as clicks arrive: a click that arrives after
        # a later one is decayed from the later time. Over a stream of minutes (against a
        # 30-day half-life) arrival order moves the totals by under 2e-4.
        np.testing.assert_allclose(have["mass"], want["mass"], rtol=1e-3, atol=1e-3)
        assert have["weight"] == pytest.approx(want["weight"], rel=1e-3)
