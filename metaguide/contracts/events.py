"""Input events: decoding and validation of what producers send.

The JSON Schemas in ``schemas/`` are the contract; the decoders here implement them by hand
(fast enough for the click path, and with a specific reason for every rejection). A test
checks that both accept and reject the same events.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from metaguide.errors import SchemaViolation

__all__ = [
    "ACTIONS",
    "ClickEvent",
    "LabelEvent",
    "LABEL_SOURCES",
    "ListingEvent",
    "RecommendationRequest",
    "check_key",
    "check_platform",
    "check_user_id",
    "decode_click",
    "decode_label",
    "decode_listing",
    "decode_recommendation_request",
    "parse_k",
]

ACTIONS = ("view", "click", "cart", "purchase")
LABEL_SOURCES = ("merchant", "reviewer", "rule")
MAX_BULK_ITEMS = 1000
TS_MIN = 946684800.0  # 2000-01-01
TS_MAX = 4102444800.0  # 2100-01-01
MAX_TITLE_CHARS = 2000
MAX_DESCRIPTION_CHARS = 20000
MAX_ID_CHARS = 128
MAX_CATEGORY_CHARS = 200
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_CHARS = 1000
_PLATFORM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# control characters: none at all in ids (they become table keys); tab and newlines in text
_ID_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# a lone UTF-16 surrogate (JSON lets "\ud800" through): no UTF-8 form, no key, no tokens
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ID_BAD = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # the click check's one pass


@dataclass(frozen=True, slots=True)
class ListingEvent:
    """A product listing; ``category`` set means a labelled example."""

    event_id: str
    platform: str
    item_id: str
    title: str
    ts: float
    description: str | None = None
    attributes: dict[str, str] | None = None
    price: float | None = None
    category: str | None = None

    @property
    def text(self) -> str:
        """What the encoder sees: the title, then the description when there is one."""
        if self.description:
            return f"{self.title}. {self.description}"
        return self.title


@dataclass(frozen=True, slots=True)
class ClickEvent:
    """A user's interaction with an item (no text: the item embedding is joined)."""

    event_id: str
    platform: str
    user_id: str
    item_id: str
    action: str
    ts: float


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """A label, or a corrected label, for listed items: one (``item_ids`` of one) or many (a
    bulk label: a candidate category named at once). ``category`` None takes the label off."""

    event_id: str
    platform: str
    item_ids: tuple[str, ...]
    category: str | None
    source: str
    ts: float
    review_id: str | None = None  # the review request it answers, if any
    bulk: bool = False


def _load_object(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        raise SchemaViolation("empty_value", "the event has no value (tombstone or null)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # strict JSON failed: Python's reader says why, and reads NaN and Infinity (which
        # the range checks then reject with a more specific reason)
        try:
            obj = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SchemaViolation("invalid_json", f"value is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise SchemaViolation(
            "wrong_type", f"value must be a JSON object, got {type(obj).__name__}"
        )
    return obj


def _check_fields(
    obj: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    for name in required:
        if name not in obj:
            raise SchemaViolation("missing_field", f"required field {name!r} is missing")
    if len(obj) == len(required):
        return  # exactly the required fields
    allowed = set(required) | set(optional) | {"schema"}
    extra = sorted(set(obj) - allowed)
    if extra:
        raise SchemaViolation("unknown_field", f"unknown field(s) {extra[:5]!r}")


def _string(
    obj: dict[str, Any], name: str, max_chars: int, *, min_chars: int = 1, text: bool = False
) -> str:
    """A string field; ``text`` allows tab and newlines, an id allows no control character."""
    value = obj[name]
    if not isinstance(value, str):
        raise SchemaViolation(
            "wrong_type", f"field {name!r} must be a string, got {type(value).__name__}"
        )
    if len(value) < min_chars:
        raise SchemaViolation("empty_field", f"field {name!r} must not be empty")
    if len(value) > max_chars:
        raise SchemaViolation(
            "too_long", f"field {name!r} has {len(value)} characters, the limit is {max_chars}"
        )
    _check_unicode(name, value)
    if text and min_chars and not value.strip():
        raise SchemaViolation("empty_field", f"field {name!r} is only whitespace")
    bad = (_TEXT_CONTROL if text else _ID_CONTROL).search(value)
    if bad:
        raise SchemaViolation(
            "control_characters",
            f"field {name!r} holds control character U+{ord(bad.group()):04X} at {bad.start()}",
        )
    return value


def _check_unicode(name: str, value: str) -> None:
    bad = _SURROGATE.search(value)
    if bad:
        raise SchemaViolation(
            "invalid_unicode",
            f"field {name!r} holds an unpaired surrogate U+{ord(bad.group()):04X} at {bad.start()}",
        )


def _number(obj: dict[str, Any], name: str) -> float:
    value = obj[name]
    # bool is an int in Python but not a number in JSON Schema
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaViolation(
            "wrong_type", f"field {name!r} must be a number, got {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise SchemaViolation("out_of_range", f"field {name!r} must be finite, got {value!r}")
    return float(value)


def _timestamp(obj: dict[str, Any]) -> float:
    ts = _number(obj, "ts")
    if not TS_MIN <= ts <= TS_MAX:
        raise SchemaViolation(
            "out_of_range",
            f"field 'ts' is {ts!r}, expected Unix seconds in [{TS_MIN:.0f}, {TS_MAX:.0f}]",
        )
    return ts


def _platform(obj: dict[str, Any]) -> str:
    value = _string(obj, "platform", 64)
    if not _PLATFORM_RE.fullmatch(value):
        raise SchemaViolation(
            "bad_identifier",
            f"field 'platform' is {value[:80]!r}: letters, digits, '_', '.', '-' only",
        )
    return value


def _check_schema_tag(obj: dict[str, Any], expected: str) -> None:
    tag = obj.get("schema", expected)
    if tag != expected:
        raise SchemaViolation("wrong_schema", f"field 'schema' is {tag!r}, expected {expected!r}")


def decode_listing(raw: bytes | str | None) -> ListingEvent:
    """Parse and validate one listing event (``schemas/listing.v1.json``)."""
    obj = _load_object(raw)
    _check_fields(
        obj,
        ("event_id", "platform", "item_id", "title", "ts"),
        ("description", "attributes", "price", "category"),
    )
    _check_schema_tag(obj, "listing.v1")
    description = None
    if "description" in obj:
        description = _string(obj, "description", MAX_DESCRIPTION_CHARS, min_chars=0, text=True)
    attributes = None
    if "attributes" in obj:
        attributes = obj["attributes"]
        if not isinstance(attributes, dict):
            raise SchemaViolation("wrong_type", "field 'attributes' must be an object of strings")
        if len(attributes) > MAX_ATTRIBUTES:
            raise SchemaViolation("too_long", f"field 'attributes' has {len(attributes)} entries")
        for key, value in attributes.items():
            if not isinstance(value, str):
                raise SchemaViolation(
                    "wrong_type",
                    f"attribute {key[:40]!r} must be a string, got {type(value).__name__}",
                )
            if len(value) > MAX_ATTRIBUTE_CHARS:
                raise SchemaViolation("too_long", f"attribute {key[:40]!r} is too long")
            _check_unicode(f"attributes.{key[:40]}", key + value)
            if _TEXT_CONTROL.search(value):
                raise SchemaViolation(
                    "control_characters", f"attribute {key[:40]!r} holds a control character"
                )
    price = None
    if "price" in obj:
        price = _number(obj, "price")
        if price < 0:
            raise SchemaViolation("out_of_range", f"field 'price' is {price!r}, must be >= 0")
    category = (
        _string(obj, "category", MAX_CATEGORY_CHARS, text=True) if "category" in obj else None
    )
    return ListingEvent(
        event_id=_string(obj, "event_id", MAX_ID_CHARS),
        platform=_platform(obj),
        item_id=_string(obj, "item_id", MAX_ID_CHARS),
        title=_string(obj, "title", MAX_TITLE_CHARS, text=True),
        ts=_timestamp(obj),
        description=description,
        attributes=attributes,
        price=price,
        category=category,
    )


def decode_label(raw: bytes | str | None) -> LabelEvent:
    """Parse and validate one label event (``schemas/label.v1.json``)."""
    obj = _load_object(raw)
    _check_fields(
        obj,
        ("event_id", "platform", "category", "source", "ts"),
        ("item_id", "item_ids", "review_id"),
    )
    _check_schema_tag(obj, "label.v1")
    if ("item_id" in obj) == ("item_ids" in obj):
        raise SchemaViolation(
            "missing_field", "exactly one of 'item_id' and 'item_ids' is required"
        )
    if "item_id" in obj:
        item_ids: tuple[str, ...] = (_string(obj, "item_id", MAX_ID_CHARS),)
    else:
        ids = obj["item_ids"]
        if not isinstance(ids, list) or not ids:
            raise SchemaViolation("wrong_type", "field 'item_ids' must be a non-empty array")
        if len(ids) > MAX_BULK_ITEMS:
            raise SchemaViolation(
                "too_long", f"field 'item_ids' has {len(ids)} ids, the limit is {MAX_BULK_ITEMS}"
            )
        item_ids = tuple(_string({"item_ids": i}, "item_ids", MAX_ID_CHARS) for i in ids)
    category = obj["category"]
    if category is not None:
        category = _string(obj, "category", MAX_CATEGORY_CHARS, text=True)
    source = obj["source"]
    if source not in LABEL_SOURCES:
        raise SchemaViolation(
            "unknown_source",
            f"field 'source' is {str(source)[:40]!r}, expected one of {LABEL_SOURCES}",
        )
    review_id = _string(obj, "review_id", MAX_ID_CHARS) if "review_id" in obj else None
    return LabelEvent(
        event_id=_string(obj, "event_id", MAX_ID_CHARS),
        platform=_platform(obj),
        item_ids=item_ids,
        category=category,
        source=source,
        ts=_timestamp(obj),
        review_id=review_id,
        bulk="item_ids" in obj,
    )


def decode_click(raw: bytes | str | None) -> ClickEvent:
    """Parse and validate one click event (``schemas/click.v1.json``)."""
    obj = _load_object(raw)
    return _valid_click(obj) or _checked_click(obj)


def _valid_click(obj: dict[str, Any]) -> ClickEvent | None:
    """The click when every check passes, in one pass (the click path's hot spot); None
    sends it through :func:`_checked_click`, which finds the reason."""
    n = len(obj)
    if n != 6 and not (n == 7 and obj.get("schema") == "click.v1"):
        return None
    event_id, user_id, item_id = obj.get("event_id"), obj.get("user_id"), obj.get("item_id")
    platform, action = obj.get("platform"), obj.get("action")
    ts: Any = obj.get("ts")
    if (
        type(event_id) is str
        and type(user_id) is str
        and type(item_id) is str
        and 0 < len(event_id) <= MAX_ID_CHARS
        and 0 < len(user_id) <= MAX_ID_CHARS
        and 0 < len(item_id) <= MAX_ID_CHARS
        and not _ID_BAD.search(event_id + user_id + item_id)
        and type(platform) is str
        and (platform in _VALID_PLATFORMS or _valid_platform(platform))
        and action in ACTIONS
        and type(ts) in (int, float)
        and TS_MIN <= ts <= TS_MAX
    ):
        return ClickEvent(event_id, platform, user_id, item_id, action, float(ts))
    return None


_VALID_PLATFORMS: set[str] = set()  # platform names seen valid (a few; at most 1,000 kept)


def _valid_platform(platform: str) -> bool:
    if not _PLATFORM_RE.fullmatch(platform):
        return False
    if len(_VALID_PLATFORMS) < 1000:
        _VALID_PLATFORMS.add(platform)
    return True


def _checked_click(obj: dict[str, Any]) -> ClickEvent:
    """Field by field, each failure with its own reason."""
    _check_fields(obj, ("event_id", "platform", "user_id", "item_id", "action", "ts"), ())
    _check_schema_tag(obj, "click.v1")
    action = obj["action"]
    if action not in ACTIONS:
        raise SchemaViolation(
            "unknown_action", f"field 'action' is {str(action)[:40]!r}, expected one of {ACTIONS}"
        )
    return ClickEvent(
        event_id=_string(obj, "event_id", MAX_ID_CHARS),
        platform=_platform(obj),
        user_id=_string(obj, "user_id", MAX_ID_CHARS),
        item_id=_string(obj, "item_id", MAX_ID_CHARS),
        action=action,
        ts=_timestamp(obj),
    )


@dataclass(frozen=True, slots=True)
class RecommendationRequest:
    """A request for a user's top-k, answered on the ``recommendations`` topic."""

    request_id: str
    platform: str
    user_id: str
    k: int


def parse_k(value: object, max_k: int) -> int:
    """k from a query string (digits) or a JSON integer: 1..``max_k``."""
    k: int | None = None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value):
        k = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        k = value
    if k is None or not 1 <= k <= max_k:
        raise SchemaViolation("bad_k", f"k is {str(value)[:40]!r}, expected an integer 1..{max_k}")
    return k


def check_platform(value: str) -> str:
    if not _PLATFORM_RE.fullmatch(value):
        raise SchemaViolation(
            "bad_platform", f"platform {value[:80]!r} must match {_PLATFORM_RE.pattern}"
        )
    return value


def check_user_id(value: str) -> str:
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise SchemaViolation("bad_user_id", f"user_id must be 1..{MAX_ID_CHARS} characters")
    return value


def decode_recommendation_request(raw: bytes | str | None, max_k: int) -> RecommendationRequest:
    """Parse and validate one request (``schemas/recommendation_request.v1.json``)."""
    obj = _load_object(raw)
    _check_fields(obj, ("request_id", "platform", "user_id"), ("k",))
    _check_schema_tag(obj, "recommendation_request.v1")
    return RecommendationRequest(
        request_id=_string(obj, "request_id", MAX_ID_CHARS),
        platform=_platform(obj),
        user_id=_string(obj, "user_id", MAX_ID_CHARS),
        k=_request_k(obj, max_k),
    )


def _request_k(obj: dict[str, Any], max_k: int) -> int:
    value = obj.get("k", 10)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's integer: 5.0 is one
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaViolation(
            "wrong_type", f"field 'k' must be an integer, got {type(value).__name__}"
        )
    return parse_k(value, max_k)


def check_key(key: bytes | None, expected: str, field: str) -> None:
    """Reject an event whose message key disagrees with the id in its payload."""
    if key is None:
        return
    if key != expected.encode():
        raise SchemaViolation(
            "key_mismatch",
            f"message key {key[:80]!r} differs from the payload's {field} {expected[:80]!r}",
        )
