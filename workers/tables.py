"""Faust tables as the worker uses them: bytes keys, writes to a named partition."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

__all__ = ["StrKeys", "global_table", "table", "write_in_partition"]


def table(app: Any, name: str, partitions: int, help: str, value_type: Any = None) -> Any:
    """A partitioned table with raw bytes keys: the partitioner then hashes the same bytes
    for a table key and a message key (str keys would be JSON-encoded first)."""
    return app.Table(name, key_type=bytes, value_type=value_type, partitions=partitions, help=help)


def global_table(app: Any, name: str, partitions: int, help: str) -> Any:
    """A GlobalTable (every worker holds all of it) with bytes keys, applied one changelog
    record at a time: with Faust's default buffer of 1000, replicas lag far behind."""
    return app.GlobalTable(
        name,
        key_type=bytes,
        value_type=None,
        partitions=partitions,
        recovery_buffer_size=1,
        help=help,
    )


class StrKeys(MutableMapping[str, Any]):
    """A str-keyed view of a bytes-keyed Faust table (UTF-8)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __getitem__(self, key: str) -> Any:
        return self.table[key.encode()]

    def __setitem__(self, key: str, value: Any) -> None:
        self.table[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self.table[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in list(self.table.keys()))

    def __len__(self) -> int:
        return len(self.table)


def write_in_partition(table: Any, partition: int, key: bytes, value: Any) -> None:
    """Set a table key and changelog it in ``partition``.

    A batch holds events of several partitions, so Faust's way (the partition of the event
    being processed) would be wrong for all but one; the partition is named instead.
    """
    table.data[key] = value
    table.send_changelog(partition, key, value)
