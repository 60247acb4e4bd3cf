"""A seeded corpus of malformed events, each with the dead-letter reason it must get.

Every malformed payload is unique (a serial number is woven into it), so a dead-letter record
(which keeps the original bytes) can be matched back to the event and its expected reason.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Raw", "bad_clicks", "bad_listings"]

SCRIPTS = "Aa Жж 中文 عرب हिन्दी 👟 Ωω ñ ß"


@dataclass(frozen=True)
class Raw:
    """One record to produce: key and value bytes, and the reason it must be dead-lettered for."""

    key: bytes | None
    value: bytes | None
    reason: str


def _listing(n: int, rng: random.Random) -> dict[str, Any]:
    words = "".join(rng.choice(SCRIPTS) for _ in range(rng.randint(3, 12)))
    return {
        "event_id": f"fuzz-l-{n}",
        "platform": "fuzz",
        "item_id": f"fuzz-item-{n}",
        "title": f"{words} {n}",
        "ts": 1.7e9 + n,
    }


def _click(n: int, rng: random.Random) -> dict[str, Any]:
    return {
        "event_id": f"fuzz-c-{n}",
        "platform": "fuzz",
        "user_id": f"fuzz-user-{n % 50}",
        "item_id": f"fuzz-item-{rng.randint(0, 99)}",
        "action": rng.choice(["view", "click", "cart", "purchase"]),
        "ts": 1.7e9 + n,
    }


def _garbage(n: int, rng: random.Random) -> bytes:
    choices = [
        lambda: b'{"event_id": "' + str(n).encode() + b'", ',  # cut short
        lambda: (
            bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))) + b"\xff" + str(n).encode()
        ),
        lambda: f"{{'single': 'quotes', 'n': {n}}}".encode(),
        lambda: f'{{"n": {n},}}'.encode(),
    ]
    return rng.choice(choices)()


def _mutate(
    base: dict[str, Any], n: int, rng: random.Random, key_field: str, kinds: list[str]
) -> tuple[dict[str, Any] | bytes, str, bytes | None]:
    """A mutation of ``base``: (the event or raw bytes, expected reason, message key)."""
    event = dict(base)
    key: bytes | None = str(base[key_field]).encode()
    kind = rng.choice(kinds)
    if kind == "invalid_json":
        return _garbage(n, rng), "invalid_json", key
    if kind == "not_object":
        return json.dumps(rng.choice([[n], n, f"s{n}", [n, None]])).encode(), "wrong_type", key
    if kind == "missing_field":
        required = [f for f in base if f != "event_id"]
        del event[rng.choice(required)]
    elif kind == "unknown_field":
        event[rng.choice(["colour", "Title", "x", "priority"])] = n
    elif kind == "wrong_type":
        field = rng.choice([f for f in base if f not in ("event_id", "action")])
        event[field] = rng.choice([n, [n], {"n": n}, True, None]) if field != "ts" else f"{n}"
    elif kind == "empty_field":
        event[rng.choice([f for f in base if f not in ("event_id", "ts", "action")])] = ""
    elif kind == "too_long":
        field = "title" if "title" in base else "user_id"
        event[field] = "x" * rng.randint(2001, 50_000)
        key = str(event[key_field]).encode()
    elif kind == "control_characters":
        field = "title" if "title" in base else "item_id"
        event[field] = f"{event[field]}{chr(rng.choice([0, 1, 7, 27, 127]))}"
    elif kind == "invalid_unicode":  # a lone surrogate: JSON escapes it, UTF-8 cannot hold it
        field = "title" if "title" in base else "item_id"
        surrogate = chr(rng.randint(0xD800, 0xDFFF))
        event[field] = f"{event[field][:3]}{surrogate}{event[field][3:]}"
        return event, "invalid_unicode", key
    elif kind == "blank_title":
        event["title"] = rng.choice([" ", "\t", " \n ", "\u00a0\u2003", "   \r\n"])
        return event, "empty_field", key
    elif kind == "negative_price":
        event["price"] = -rng.random() * 100 - 0.01
        return event, "out_of_range", key
    elif kind == "nan_price":
        text = (
            json.dumps(event)[:-1] + f', "price": {rng.choice(["NaN", "Infinity", "-Infinity"])}}}'
        )
        return text.encode(), "out_of_range", key
    elif kind == "ts_out_of_range":
        event["ts"] = rng.choice([0, 12.5, 1e5, 5e9, 1e12, -1.0])
        return event, "out_of_range", key
    elif kind == "bad_platform":
        event["platform"] = rng.choice(["my shop", "-x", "a/b", "ümlaut", "x" * 65])
        return event, "too_long" if len(event["platform"]) > 64 else "bad_identifier", key
    elif kind == "unknown_action":
        event["action"] = rng.choice(["like", "CLICK", "", "buy", n])
        return event, "unknown_action", key
    elif kind == "key_mismatch":
        key = f"other-{n}".encode()
        return event, "key_mismatch", key
    elif kind == "wrong_schema":
        event["schema"] = rng.choice(["listing.v2", "click.v0", "x"])
        return event, "wrong_schema", key
    elif kind == "tombstone":
        return b"", "empty_value", f"tombstone-{n}".encode()
    reasons = {
        "missing_field": "missing_field",
        "unknown_field": "unknown_field",
        "wrong_type": "wrong_type",
        "empty_field": "empty_field",
        "too_long": "too_long",
        "control_characters": "control_characters",
    }
    return event, reasons[kind], key


COMMON_KINDS = [
    "invalid_json",
    "not_object",
    "missing_field",
    "unknown_field",
    "wrong_type",
    "empty_field",
    "too_long",
    "control_characters",
    "invalid_unicode",
    "ts_out_of_range",
    "bad_platform",
    "key_mismatch",
    "wrong_schema",
    "tombstone",
]
LISTING_KINDS = [*COMMON_KINDS, "negative_price", "nan_price", "blank_title"]
CLICK_KINDS = [*COMMON_KINDS, "unknown_action"]


def _corpus(
    count: int,
    seed: int,
    make: Callable[[int, random.Random], dict[str, Any]],
    key_field: str,
    kinds: list[str],
    offset: int,
) -> list[Raw]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        n = offset + i
        event, reason, key = _mutate(make(n, rng), n, rng, key_field, kinds)
        if reason == "empty_value":
            out.append(Raw(key, None, reason))
            continue
        value = event if isinstance(event, bytes) else json.dumps(event).encode()
        out.append(Raw(key, value, reason))
    return out


def bad_listings(count: int, seed: int = 0) -> list[Raw]:
    return _corpus(count, seed, _listing, "item_id", LISTING_KINDS, 0)


def bad_clicks(count: int, seed: int = 0) -> list[Raw]:
    return _corpus(count, seed + 1, _click, "user_id", CLICK_KINDS, 10**6)
