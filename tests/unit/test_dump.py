"""The saved broker state's file format: records round-trip, a bad save is refused clearly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from metaguide.errors import BrokerError
from metaguide.kafka.dump import MANIFEST, RECORDS, _pack, _unpack, load_broker, saved


def test_records_round_trip_with_null_keys_and_values() -> None:
    records = [
        SimpleNamespace(partition=3, offset=7, timestamp=1_700_000_000_000, key=b"k", value=b"v"),
        SimpleNamespace(partition=0, offset=0, timestamp=0, key=None, value=b"{}"),
        SimpleNamespace(partition=1, offset=2**40, timestamp=-1, key=b"", value=None),
    ]
    data = b"".join(_pack(i, r) for i, r in enumerate(records))
    assert list(_unpack(data)) == [
        (0, 3, 7, 1_700_000_000_000, b"k", b"v"),
        (1, 0, 0, 0, None, b"{}"),
        (2, 1, 2**40, -1, b"", None),
    ]


def test_a_save_of_another_format_or_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert not saved(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something.else", "topics": {}}))
    (tmp_path / RECORDS).write_bytes(b"")
    assert saved(tmp_path)
    with pytest.raises(BrokerError, match="want metaguide.broker-dump.v1"):
        asyncio.run(load_broker("127.0.0.1:9", tmp_path))
    (tmp_path / RECORDS).unlink()
    with pytest.raises(BrokerError, match="cannot read the saved broker state"):
        asyncio.run(load_broker("127.0.0.1:9", tmp_path))
