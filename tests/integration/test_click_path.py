"""The click path end to end on the embedded broker: real encoder, real Myntra listings.

Listings are embedded by the listing path; clicks are joined with those embeddings in the
item's partition and folded into the user's prototypes in the user's partition; the HTTP API
answers from there.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import aiohttp
import jsonschema
import pytest

from metaguide.eval.myntra import listing_event, load_myntra
from metaguide.kafka.replay import produce_events
from tests.conftest import load_schema, read_topic, wait_until

pytestmark = pytest.mark.integration

PLATFORM = "myntra"
KINDS = ["Watches", "Tshirts", "Sunglasses", "Socks"]
PER_KIND = 8


def _items() -> dict[str, list[Any]]:
    listings = load_myntra()
    out: dict[str, list[Any]] = {}
    for kind in KINDS:
        seen: set[str] = set()
        group = []
        for x in listings:
            if x.category == kind and x.title not in seen:
                seen.add(x.title)
                group.append(x)
        out[kind] = group[:PER_KIND]
    return out


def click(user: str, item_id: str, n: int, action: str = "click", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": extra.get("event_id", f"{user}-{item_id}-{n}"),
        "platform": PLATFORM,
        "user_id": user,
        "item_id": item_id,
        "action": action,
        "ts": extra.get("ts", time.time()),
    }


async def _send(broker: Any, topic: str, events: list[dict[str, Any]], key: str) -> None:
    await produce_events(broker.bootstrap, topic, events, key_field=key)


async def _list_items(broker: Any, settings: Any, worker: Any, items: list[Any]) -> None:
    await _send(
        broker,
        settings.topic("listings"),
        [listing_event(x, labelled=False) for x in items],
        "item_id",
    )
    await wait_until(
        lambda: len(worker.clicks.catalog) >= len(items), 120, "listings in the catalog"
    )


async def get_recommendations(
    port: int, user: str, k: int | str = 5, platform: str = PLATFORM
) -> Any:
    url = f"http://127.0.0.1:{port}/recommendations/{platform}/{user}?k={k}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, json.loads(await response.text())


def _user_clicks(worker: Any, user: str) -> int:
    return int(worker.clicks.profile(f"{PLATFORM}\x1f{user}".encode()).clicks)


async def test_a_user_who_clicked_one_kind_gets_that_kind_first(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings()
    worker = await start_worker(settings)
    items = _items()
    await _list_items(broker, settings, worker, [x for group in items.values() for x in group])
    kind_of = {x.item_id: kind for kind, group in items.items() for x in group}
    # other users click every kind evenly: popularity alone favours no kind
    background = [
        click(f"bg{u}", x.item_id, 0)
        for u in range(3)
        for kind in KINDS
        for x in items[kind][u * 2 : u * 2 + 2]
    ]
    watches = items["Watches"]
    fan = [click("fan", x.item_id, 0) for x in watches[:3]]
    await _send(broker, settings.topic("clicks"), background + fan, "user_id")
    await wait_until(lambda: _user_clicks(worker, "fan") == 3, 60, "the fan's 3 clicks applied")

    status, body = await get_recommendations(settings.web_port, "fan", k=8)
    assert status == 200, body
    jsonschema.validate(body, load_schema("recommendation"))
    assert body["clicks"] == 3 and body["model_version"] == "base"
    ranked = [kind_of[i["item_id"]] for i in body["items"]]
    assert ranked[:5] == ["Watches"] * 5, ranked
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)

    # a user with no clicks gets the platform prior: the clicked items, not the unclicked ones
    status, cold = await get_recommendations(settings.web_port, "nobody", k=5)
    assert status == 200 and cold["clicks"] == 0 and cold["user_weight"] == 0
    clicked = {c["item_id"] for c in background + fan}
    assert all(i["item_id"] in clicked for i in cold["items"]), cold


async def test_bad_requests_get_specific_4xx_errors(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings()
    worker = await start_worker(settings)
    await _list_items(broker, settings, worker, _items()["Socks"][:2])
    port = settings.web_port
    assert (await get_recommendations(port, "u", k=0))[1]["error"] == "bad_k"
    assert (await get_recommendations(port, "u", k="ten"))[1]["error"] == "bad_k"
    assert (await get_recommendations(port, "u", k=101))[0] == 400
    status, body = await get_recommendations(port, "u", platform="no such")
    assert (status, body["error"]) == (400, "bad_platform")
    status, body = await get_recommendations(port, "u", platform="elsewhere")
    assert (status, body["error"]) == (404, "unknown_platform")
    status, body = await get_recommendations(port, "u" * 200)
    assert (status, body["error"]) == (400, "bad_user_id")


async def test_a_redelivered_click_leaves_the_user_unchanged(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings()
    worker = await start_worker(settings)
    items = _items()["Sunglasses"][:3]
    await _list_items(broker, settings, worker, items)
    first = click("dup", items[0].item_id, 0)
    await _send(broker, settings.topic("clicks"), [first], "user_id")
    await wait_until(lambda: _user_clicks(worker, "dup") == 1, 60, "the first click applied")
    key = f"{PLATFORM}\x1fdup".encode()
    before = worker.clicks.profile(key).to_state()
    # the same event again (redelivery), then a new one on an item of the same user
    await _send(broker, settings.topic("clicks"), [first], "user_id")
    await wait_until(
        lambda: (
            worker.metrics.value(
                worker.metrics.duplicates_skipped, topic=settings.topic("user-updates")
            )
            == 1
        ),
        60,
        "the redelivered click recognised",
    )
    assert worker.clicks.profile(key).to_state() == before
    await _send(broker, settings.topic("clicks"), [click("dup", items[1].item_id, 1)], "user_id")
    await wait_until(lambda: _user_clicks(worker, "dup") == 2, 60, "the second click applied")


async def test_a_click_before_its_listing_is_applied_when_the_listing_arrives(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings()
    worker = await start_worker(settings)
    early, later = _items()["Watches"][:2]
    await _list_items(broker, settings, worker, [later])
    await _send(broker, settings.topic("clicks"), [click("early", early.item_id, 0)], "user_id")
    await wait_until(lambda: len(worker.clicks.waiting) == 1, 60, "the click waiting")
    assert _user_clicks(worker, "early") == 0
    await _send(
        broker, settings.topic("listings"), [listing_event(early, labelled=False)], "item_id"
    )
    await wait_until(lambda: _user_clicks(worker, "early") == 1, 60, "the click applied")
    assert not worker.clicks.waiting
    popular = [
        record["items"]
        for record in worker.clicks.summaries.values()
        if record["kind"] == "pop" and early.item_id in record["items"]
    ]
    assert len(popular) == 1 and popular[0][early.item_id] > 0


async def test_a_click_on_an_item_never_listed_ends_on_the_dead_letter_topic(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings(click_wait_s=1.0)
    worker = await start_worker(settings)
    bad = {"event_id": "x", "platform": PLATFORM, "user_id": "u", "item_id": "u"}  # no action
    orphan = click("lost", "no-such-item", 0)
    await _send(broker, settings.topic("clicks"), [bad, orphan], "user_id")
    letters = await read_topic(broker.bootstrap, settings.topic("dead-letters"), 2)
    reasons = sorted(r["reason"] for r in letters)
    assert reasons == ["item_not_found", "missing_field"], letters
    schema = load_schema("dead_letter")
    for record in letters:
        jsonschema.validate(record, schema)
        assert record["source_topic"] == settings.topic("clicks")
    await wait_until(lambda: not worker.clicks.waiting, 10, "nothing left waiting")


async def test_a_killed_click_router_is_started_again_and_no_click_is_lost(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings()
    worker = await start_worker(settings)
    items = _items()["Tshirts"][:4]
    await _list_items(broker, settings, worker, items)
    first = [click("k", x.item_id, n) for n, x in enumerate(items)]
    await _send(broker, settings.topic("clicks"), first, "user_id")
    await wait_until(lambda: _user_clicks(worker, "k") == 4, 60, "the first clicks applied")
    router = worker.clicks.router
    killed = router.pid
    assert killed is not None and killed != os.getpid()
    os.kill(killed, signal.SIGKILL)
    await wait_until(lambda: router.pid not in (None, killed), 60, "the click router started again")
    assert worker.metrics.value(worker.metrics.router_restarts) == 1
    more = [click("k", x.item_id, 10 + n) for n, x in enumerate(items)]
    await _send(broker, settings.topic("clicks"), more, "user_id")
    await wait_until(lambda: _user_clicks(worker, "k") == 8, 60, "the later clicks applied")
    assert (
        worker.metrics.value(worker.metrics.clicks, action="click") >= 8
    )  # each counted, once or more

    running = router.pid
    await worker.stop()
    assert router.pid is None
    with pytest.raises(ProcessLookupError):  # it went with its worker
        os.kill(running, 0)


async def test_recommendations_on_request_topic(
    broker: Any, worker_settings: Any, start_worker: Any
) -> None:
    settings = worker_settings()
    worker = await start_worker(settings)
    items = _items()["Tshirts"][:3]
    await _list_items(broker, settings, worker, items)
    request = {"request_id": "r1", "platform": PLATFORM, "user_id": "asker", "k": 2}
    await _send(broker, settings.topic("recommendation-requests"), [request], "user_id")
    [answer] = await read_topic(broker.bootstrap, settings.topic("recommendations"), 1)
    jsonschema.validate(answer, load_schema("recommendation"))
    assert answer["request_id"] == "r1" and len(answer["items"]) == 2
