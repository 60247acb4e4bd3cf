"""The click router's routing rule, and the settings it is handed over a pipe."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from pydantic import SecretStr

from metaguide.config import Settings
from metaguide.contracts.internal import PACK_MAX_ROWS, chunks, decode_click_pack, encode_click_pack
from workers.clicks.router import route


def record(offset: int, value: Any, key: bytes | None) -> SimpleNamespace:
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return SimpleNamespace(topic="t.clicks", partition=1, offset=offset, key=key, value=raw)


def click(n: int, user: str = "u1", action: str = "click") -> dict[str, Any]:
    return {
        "event_id": f"e{n}",
        "platform": "shop",
        "user_id": user,
        "item_id": f"item-{n % 7}",
        "action": action,
        "ts": 1_700_000_000 + n,
    }


def test_clicks_are_packed_by_their_items_partition_as_producers_partition_them() -> None:
    records = [record(n, click(n), b"u1") for n in range(40)]
    routed = route(records, partitions=4)
    partitioner = DefaultPartitioner()
    for partition, rows in routed.packs.items():
        for row in rows:
            expected = partitioner(row.item_id.encode(), [0, 1, 2, 3], [0, 1, 2, 3])
            assert partition == expected
    rows = sorted((r for rs in routed.packs.values() for r in rs), key=lambda r: r.source_offset)
    assert [r.source_offset for r in rows] == list(range(40))  # every one, once
    assert all(json.loads(r.raw) == click(r.source_offset) for r in rows)  # the raw event
    assert routed.actions == {"click": 40} and not routed.rejected
    for rows in routed.packs.values():  # what the join agent reads back is what was routed
        assert decode_click_pack(encode_click_pack(rows)) == rows


def test_bad_clicks_are_set_aside_with_their_reason_and_the_rest_still_routed() -> None:
    records = [
        record(0, click(0), b"u1"),
        record(1, b"{not json", b"u1"),
        record(2, click(2), b"someone-else"),
        record(3, None, b"u1"),
        record(4, click(4, action="stare"), b"u1"),
        record(5, click(5, action="purchase"), b"u1"),
        record(6, {**click(6), "item_id": "item-\ud800"}, b"u1"),  # no UTF-8 form: no key
    ]
    routed = route(records, partitions=4)
    assert [(r.offset, reason) for r, reason, _ in routed.rejected] == [
        (1, "invalid_json"),
        (2, "key_mismatch"),
        (3, "empty_value"),
        (4, "unknown_action"),
        (6, "invalid_unicode"),
    ]
    assert routed.actions == {"click": 1, "purchase": 1}
    assert sorted(r.source_offset for rs in routed.packs.values() for r in rs) == [0, 5]


def test_a_pack_holds_at_most_pack_max_rows() -> None:
    rows = [[n] for n in range(2 * PACK_MAX_ROWS + 1)]
    sizes = [len(chunk) for chunk in chunks(rows)]
    assert sizes == [PACK_MAX_ROWS, PACK_MAX_ROWS, 1]
    assert [row for chunk in chunks(rows) for row in chunk] == rows


def test_settings_survive_the_round_trip_through_environment_variables() -> None:
    settings = Settings(
        broker_url="kafka://a:1;b:2",
        partitions=7,
        click_batch_latency_s=0.125,
        sasl_password=SecretStr("s3cret"),
        topic_prefix="x.",
    )
    back = Settings.from_env(settings.to_env())
    assert back.sasl_password.get_secret_value() == "s3cret"
    assert back == settings
