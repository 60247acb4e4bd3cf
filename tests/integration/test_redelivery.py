"""Duplicated and reordered events leave the same final state as the clean stream.

Two runs over the same listings and clicks: once in order, once with a third of the events
delivered two or three times (the copies later in the same partition, as a redelivery after a
failed commit would be) and the stream shuffled across keys, each key's own events kept in
order (all Kafka guarantees within a partition). Final tables, from their changelogs, must
compare equal (tests/integration/state.py says how).
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from typing import Any

import pytest

from metaguide.waiting import wait_until_async
from tests.integration.state import compare_states, complete, final_state, send, stream_events

pytestmark = pytest.mark.integration


def _duplicated_and_reordered(
    events: list[tuple[str, dict[str, Any]]], seed: int
) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    by_key: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for topic, event in events:
        key = event["item_id"] if topic == "listings" else event["user_id"]
        copies = rng.choice([1, 1, 2, 3])
        by_key[(topic, key)].append((topic, event))
        for _ in range(copies - 1):  # redelivered later, after some of the key's later events
            by_key[(topic, key)].append((topic, event))
    for seq in by_key.values():
        head, dups = seq[:1], seq[1:]
        rng.shuffle(dups)
        seq[:] = head + dups if len(seq) > 1 else seq
    # interleave the keys at random; each key's sequence keeps its order
    queues = list(by_key.values())
    out: list[tuple[str, dict[str, Any]]] = []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    # listings before the clicks on them, as in the clean stream (a click may wait, but
    # not for longer than the test)
    return [e for e in out if e[0] == "listings"] + [e for e in out if e[0] == "clicks"]


async def test_duplicates_and_cross_key_reordering_change_nothing(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    events = stream_events(seed=5)
    n_listings = sum(1 for t, _ in events if t == "listings")
    n_clicks = len(events) - n_listings
    states = []
    run = uuid.uuid4().hex[:6]
    for i, stream in enumerate((events, _duplicated_and_reordered(events, seed=6))):
        settings = worker_settings(app_id=f"rd{i}-{run}", topic_prefix=f"rd{i}{run}.")
        worker = await start_worker(settings)
        await send(broker.bootstrap, settings.topic(""), stream)

        async def done(app_id: str = settings.app_id) -> bool:
            return complete(await final_state(broker.bootstrap, app_id), n_listings, n_clicks)

        await wait_until_async(done, 240, "every event applied")
        states.append(await final_state(broker.bootstrap, settings.app_id))
        await worker.stop()
    compare_states(states[1], states[0])
    assert len(_duplicated_and_reordered(events, seed=6)) > len(events)
