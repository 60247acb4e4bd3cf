"""Decoders: specific reasons for bad input, and agreement with the JSON Schemas."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaguide.contracts.events import (
    _checked_click,
    _valid_click,
    check_key,
    decode_click,
    decode_label,
    decode_listing,
    decode_recommendation_request,
)
from metaguide.contracts.records import classification_record, dead_letter_record
from metaguide.errors import SchemaViolation
from tests.conftest import load_schema
from tests.corpus import bad_clicks

LISTING = {
    "event_id": "e1",
    "platform": "myntra",
    "item_id": "15970",
    "title": "Turtle Check Men Navy Blue Shirt",
    "ts": 1767225600.0,
}
CLICK = {
    "event_id": "c1",
    "platform": "myntra",
    "user_id": "u1",
    "item_id": "15970",
    "action": "purchase",
    "ts": 1767225600.0,
}


def test_valid_listing_decodes() -> None:
    event = decode_listing(json.dumps({**LISTING, "category": "Shirts", "price": 9.5}).encode())
    assert event.category == "Shirts"
    assert event.price == 9.5
    assert event.text == LISTING["title"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "wrong_type"),
        (None, "empty_value"),
        (json.dumps({k: v for k, v in LISTING.items() if k != "title"}), "missing_field"),
        (json.dumps({**LISTING, "colour": "red"}), "unknown_field"),
        (json.dumps({**LISTING, "title": 42}), "wrong_type"),
        (json.dumps({**LISTING, "title": ""}), "empty_field"),
        (json.dumps({**LISTING, "title": "x" * 2001}), "too_long"),
        (json.dumps({**LISTING, "price": -1}), "out_of_range"),
        ('{"event_id":"e","platform":"p","item_id":"i","title":"t","ts":NaN}', "out_of_range"),
        (json.dumps({**LISTING, "ts": 12}), "out_of_range"),
        (json.dumps({**LISTING, "ts": True}), "wrong_type"),
        (json.dumps({**LISTING, "platform": "my shop"}), "bad_identifier"),
        (json.dumps({**LISTING, "schema": "listing.v2"}), "wrong_schema"),
        (json.dumps({**LISTING, "title": "Shirt\u0000"}), "control_characters"),
        (json.dumps({**LISTING, "item_id": "a\tb"}), "control_characters"),
        (json.dumps({**LISTING, "attributes": {"c": "\u001b[31m"}}), "control_characters"),
        (json.dumps({**LISTING, "title": "toy \ud800 car"}), "invalid_unicode"),
        (json.dumps({**LISTING, "item_id": "i\udfff"}), "invalid_unicode"),
        (json.dumps({**LISTING, "attributes": {"c\ud800": "red"}}), "invalid_unicode"),
        (json.dumps({**LISTING, "title": " \t\n "}), "empty_field"),
        (json.dumps({**LISTING, "category": "   "}), "empty_field"),
    ],
)
def test_bad_listing_gets_a_specific_reason(raw: Any, reason: str) -> None:
    with pytest.raises(SchemaViolation) as info:
        decode_listing(raw)
    assert info.value.reason == reason
    assert info.value.detail


def test_text_may_hold_newlines_and_any_script() -> None:
    title = "Nike 跑步鞋 Кроссовки\tحذاء 👟\nline two"
    assert decode_listing(json.dumps({**LISTING, "title": title})).title == title


def test_click_rejects_unknown_action() -> None:
    with pytest.raises(SchemaViolation) as info:
        decode_click(json.dumps({**CLICK, "action": "like"}))
    assert info.value.reason == "unknown_action"
    assert decode_click(json.dumps(CLICK)).action == "purchase"


def test_key_must_match_payload() -> None:
    check_key(b"15970", "15970", "item_id")
    with pytest.raises(SchemaViolation) as info:
        check_key(b"other", "15970", "item_id")
    assert info.value.reason == "key_mismatch"


def test_outputs_match_their_schemas() -> None:
    listing = decode_listing(json.dumps(LISTING))
    record = classification_record(listing, [("Shirts", 0.9), ("Tshirts", 0.1)], "base")
    jsonschema.validate(record, load_schema("classification"))
    letter = dead_letter_record(
        source_topic="t", partition=0, offset=3, key=b"k", value=b"\x00", reason="x", detail="y"
    )
    jsonschema.validate(letter, load_schema("dead_letter"))


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    # what the tokenizer cannot take: lone surrogates (JSON escapes them), only whitespace
    st.sampled_from([" ", "\t\n ", "toy \ud800 car", "\udc00", " a ", "\u00a0"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


def _mutations(base: dict[str, Any], optional: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    fields = list(base) + list(optional) + ["extra"]
    return st.dictionaries(st.sampled_from(fields), _values, max_size=4).flatmap(
        lambda changes: st.sets(st.sampled_from(list(base)), max_size=2).map(
            lambda dropped: {
                **{k: v for k, v in base.items() if k not in dropped},
                **changes,
            }
        )
    )


def _agrees_with_schema(decode: Any, schema: str, event: dict[str, Any]) -> None:
    schema_ok = jsonschema.Draft202012Validator(load_schema(schema)).is_valid(event)
    try:
        decode(json.dumps(event))
        decoder_ok = True
    except SchemaViolation:
        decoder_ok = False
    assert decoder_ok == schema_ok, event


@settings(max_examples=400, deadline=None)
@given(_mutations(LISTING, {"category": "c", "price": 1.0, "description": "", "attributes": {}}))
def test_listing_decoder_agrees_with_schema(event: dict[str, Any]) -> None:
    _agrees_with_schema(decode_listing, "listing", event)


@settings(max_examples=300, deadline=None)
@given(_mutations(CLICK, {}))
def test_click_decoder_agrees_with_schema(event: dict[str, Any]) -> None:
    _agrees_with_schema(decode_click, "click", event)


@settings(max_examples=400, deadline=None)
@given(_mutations(CLICK, {"schema": "click.v1"}))
def test_the_one_pass_click_check_agrees_with_the_field_by_field_one(event: dict[str, Any]) -> None:
    try:
        checked = _checked_click(event)
    except SchemaViolation:
        checked = None
    assert _valid_click(event) == checked  # same event, or both reject (with a reason)


def test_malformed_clicks_all_take_the_field_by_field_check() -> None:
    for raw in bad_clicks(300):
        if raw.value is None or raw.reason == "key_mismatch":  # a key problem, a valid value
            continue
        try:
            obj = json.loads(raw.value)
        except ValueError:
            continue
        if isinstance(obj, dict):
            assert _valid_click(obj) is None, raw
            with pytest.raises(SchemaViolation) as info:
                _checked_click(obj)
            assert info.value.reason == raw.reason


REQUEST = {"request_id": "r1", "platform": "shop", "user_id": "u1", "k": 5}


@settings(max_examples=300, deadline=None)
@given(_mutations(REQUEST, {"schema": "recommendation_request.v1"}))
def test_recommendation_request_decoder_agrees_with_schema(event: dict[str, Any]) -> None:
    _agrees_with_schema(
        lambda raw: decode_recommendation_request(raw, 100), "recommendation_request", event
    )


def test_a_whole_float_k_is_an_integer_as_in_json_schema() -> None:
    event = {**REQUEST, "k": 5.0}
    _agrees_with_schema(
        lambda raw: decode_recommendation_request(raw, 100), "recommendation_request", event
    )
    assert decode_recommendation_request(json.dumps(event), 100).k == 5


LABEL = {
    "event_id": "l1",
    "platform": "myntra",
    "item_id": "15970",
    "category": "Shirts",
    "source": "reviewer",
    "ts": 1767225600.0,
}


@settings(max_examples=400, deadline=None)
@given(_mutations(LABEL, {"item_ids": ["a", "b"], "review_id": "r1", "schema": "label.v1"}))
def test_label_decoder_agrees_with_schema(event: dict[str, Any]) -> None:
    _agrees_with_schema(decode_label, "label", event)


def test_a_label_names_one_item_or_many_and_may_take_a_label_off() -> None:
    one = decode_label(json.dumps(LABEL))
    assert (one.item_ids, one.category, one.bulk) == (("15970",), "Shirts", False)
    bulk = {k: v for k, v in LABEL.items() if k != "item_id"}
    many = decode_label(json.dumps({**bulk, "item_ids": ["a", "b"], "category": None}))
    assert (many.item_ids, many.category, many.bulk) == (("a", "b"), None, True)
    for event, reason in [
        ({**LABEL, "item_ids": ["a"]}, "missing_field"),
        (bulk, "missing_field"),
        ({**LABEL, "source": "crowd"}, "unknown_source"),
        ({**bulk, "item_ids": []}, "wrong_type"),
        ({**bulk, "item_ids": [str(i) for i in range(1001)]}, "too_long"),
    ]:
        with pytest.raises(SchemaViolation) as info:
            decode_label(json.dumps(event))
        assert info.value.reason == reason, event
