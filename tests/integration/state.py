"""A stream of listings and clicks, the final worker state read from the table changelogs,
and how two such states must compare."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from metaguide.eval.myntra import listing_event, load_myntra
from metaguide.kafka.client import read_to_end
from metaguide.kafka.replay import produce_events
from metaguide.recommend.profiles import UserProfile

__all__ = ["complete", "compare_states", "final_state", "send", "stream_events"]

CATEGORIES = ["Watches", "Tshirts", "Socks", "Handbags", "Sunglasses", "Casual Shoes"]
PER_CATEGORY = 20
USERS = 20
CLICKS = 400


def stream_events(seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """(topic name, event) in send order: listings first in each stretch, then clicks on them."""
    rng = random.Random(seed)
    pool: dict[str, list[Any]] = defaultdict(list)
    seen: set[str] = set()
    for x in load_myntra():
        if (
            x.category in CATEGORIES
            and x.title not in seen
            and len(pool[x.category]) < PER_CATEGORY
        ):
            seen.add(x.title)
            pool[x.category].append(x)
    listings = [x for c in CATEGORIES for x in pool[c]]
    rng.shuffle(listings)
    out: list[tuple[str, dict[str, Any]]] = []
    listed: list[str] = []
    per_stretch = len(listings) // 10
    clicks_per_stretch = CLICKS // 10
    n = 0
    for stretch in range(10):
        for x in listings[stretch * per_stretch : (stretch + 1) * per_stretch]:
            out.append(("listings", listing_event(x, labelled=True, ts=1.7e9 + n)))
            listed.append(x.item_id)
            n += 1
        for _ in range(clicks_per_stretch):
            user = f"user-{rng.randrange(USERS)}"
            action = rng.choice(["view", "click", "cart", "purchase"])
            out.append(
                (
                    "clicks",
                    {
                        "event_id": f"c-{n}",
                        "platform": "myntra",
                        "user_id": user,
                        "item_id": rng.choice(listed),
                        "action": action,
                        "ts": 1.7e9 + n,
                    },
                )
            )
            n += 1
    return out


async def send(bootstrap: str, prefix: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    for topic, key in (("listings", "item_id"), ("clicks", "user_id")):
        chunk = [e for t, e in events if t == topic]
        if chunk:
            await produce_events(bootstrap, prefix + topic, chunk, key_field=key)


async def _read_changelog(bootstrap: str, topic: str) -> dict[bytes, Any]:
    """The last value of every key of a changelog topic (what a recovering worker would load)."""
    return {
        m.key: None if m.value is None else json.loads(m.value)
        for m in await read_to_end(bootstrap, topic)
    }


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
        vectors = UserProfile.from_state(v).sums  # fp16 directions and their lengths
        profiles[k.decode()] = {
            "n": v["n"],
            "recent": sorted(v["recent"]),
            "bought": v["bought"],
            "mass": np.sum(vectors, axis=0) if vectors else np.zeros(1),
            "length": float(sum(np.linalg.norm(x) for x in vectors)),
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
        # the encoder's float32 output varies by ~1e-7 with the batch it ran in, which can
        # round an item's stored fp16 embedding (what its prototype adds) one step (6e-5 at
        # most) the other way; an item lost or counted twice moves a sum by ~0.05
        np.testing.assert_allclose(got["prototypes"][key][1], total, rtol=0, atol=2e-3)
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
        # 30-day half-life) arrival order moves the totals by under 2e-4. The changelog
        # holds each sum as an fp16 direction and a length: an element is then off by up to
        # half an fp16 step of its sum's length (2^-12 of it) on each side, and again after
        # each restart that reloads the profile and writes it back (one per SIGKILL cycle):
        # 2^-8 of the length is 16 such steps, the most that 100 cycles' random rounding
        # errors add up to in practice (their sum grows as the square root). A click lost or
        # counted twice moves the mass by a whole weighted unit vector, and the counts and
        # event ids above would differ.
        tolerance = 1e-3 + 2.0**-8 * max(have["length"], want["length"])
        np.testing.assert_allclose(have["mass"], want["mass"], rtol=1e-3, atol=tolerance)
        assert have["weight"] == pytest.approx(want["weight"], rel=1e-3)
