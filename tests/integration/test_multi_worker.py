"""Two worker processes (``metaguide worker``) in one consumer group on the embedded broker.

Each classifies the listings of its own partitions with prototypes that the other worker may
have learned: the global prototype table must be visible to both.
"""

from __future__ import annotations

from typing import Any

import pytest

from metaguide.eval.myntra import few_shot_split, listing_event, load_myntra
from metaguide.kafka.replay import produce_events
from tests.conftest import read_topic, wait_until
from tests.integration.conftest import scrape
from tests.integration.test_click_path import get_recommendations
from tests.integration.test_snapshot_swap import ready

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

CATEGORIES = ["Watches", "Sunglasses", "Tshirts", "Socks", "Handbags", "Casual Shoes", "Ties"]


async def test_every_worker_classifies_with_every_prototype(broker: Any, two_workers: Any) -> None:
    env, ports, web_ports = two_workers
    listings_topic = env["METAGUIDE_TOPIC_PREFIX"] + "listings"
    consumed = f'metaguide_events_consumed_total{{topic="{listings_topic}"}}'
    await wait_until(lambda: all(scrape(p) for p in ports), 90, "both workers serving metrics")
    # both in the group with partitions of their own before any listing: else the first one
    # up may work off every labelled listing before the other joins
    await wait_until(lambda: all(ready(p) for p in web_ports), 90, "both workers ready")

    split = few_shot_split(
        [x for x in load_myntra() if x.category in CATEGORIES], 5, seed=2, max_test_per_category=4
    )
    await produce_events(
        broker.bootstrap,
        listings_topic,
        [listing_event(x, labelled=True) for x in split.labelled],
        key_field="item_id",
    )

    def both_know_every_category() -> bool:
        samples = [scrape(p) for p in ports]
        return all(
            s.get(consumed, 0) > 0 and s.get("metaguide_category_prototypes") == len(CATEGORIES)
            for s in samples
        )

    # each worker got some listings (partitions are shared) and sees all 7 prototypes
    await wait_until(both_know_every_category, 120, "both workers to see every prototype")
    await produce_events(
        broker.bootstrap,
        listings_topic,
        [listing_event(x, labelled=False) for x in split.test],
        key_field="item_id",
    )
    out = await read_topic(
        broker.bootstrap, env["METAGUIDE_TOPIC_PREFIX"] + "classifications", len(split.test), 120
    )
    truth = {x.item_id: x.category for x in split.test}
    correct = sum(r["top_k"][0]["category"] == truth[r["item_id"]] for r in out)
    assert correct / len(out) >= 0.8
    emitted = [
        sum(
            v
            for k, v in scrape(p).items()
            if k.startswith("metaguide_classifications_emitted_total")
        )
        for p in ports
    ]
    assert all(e > 0 for e in emitted), emitted
    assert sum(emitted) >= len(split.test)  # more only if a rebalance redelivered some


async def test_a_request_reaching_the_wrong_worker_is_routed_to_the_users_owner(
    broker: Any, two_workers: Any
) -> None:
    env, ports, web_ports = two_workers
    prefix = env["METAGUIDE_TOPIC_PREFIX"]
    await wait_until(lambda: all(scrape(p) for p in ports), 90, "both workers serving metrics")
    watches = [x for x in load_myntra() if x.category == "Watches"][:6]
    await produce_events(
        broker.bootstrap,
        prefix + "listings",
        [listing_event(x, labelled=False) for x in watches],
        key_field="item_id",
    )
    users = [f"user-{n}" for n in range(12)]
    clicks = [
        {
            "event_id": f"{u}-{x.item_id}",
            "platform": "myntra",
            "user_id": u,
            "item_id": x.item_id,
            "action": "view",
            "ts": 1.7e9,
        }
        for u in users
        for x in watches[:2]
    ]
    await produce_events(broker.bootstrap, prefix + "clicks", clicks, key_field="user_id")

    def applied() -> float:
        return sum(scrape(p).get("metaguide_user_updates_total", 0) for p in ports)

    await wait_until(lambda: applied() >= len(clicks), 120, "every click applied")
    served_by = set()
    for user in users:
        answers = [
            await get_recommendations(port, user, k=3, platform="myntra") for port in web_ports
        ]
        for status, body in answers:
            assert status == 200, body
            assert body["clicks"] == 2, body
        # both workers give the answer of the one owner
        assert answers[0][1]["served_by"] == answers[1][1]["served_by"]
        assert answers[0][1]["items"] == answers[1][1]["items"]
        served_by.add(answers[0][1]["served_by"])
    assert served_by == {f"http://127.0.0.1:{p}" for p in web_ports}
