"""Item statistics of a partition, kept as mergeable summaries rather than one record per item.

Popularity (in item partitions) and purchases / repeat purchases (in user partitions) are
one record per (kind, platform, partition) in the owner's ``summaries`` table, copied to the
``platform-summaries`` GlobalTable that every worker scores from.
"""

from __future__ import annotations

from typing import Any

from workers.tables import write_in_partition

__all__ = ["SUMMARY_MAX_ITEMS", "Summaries"]

SUMMARY_MAX_ITEMS = 5000  # per platform and partition: the most popular / most purchased


class Summaries:
    """The summaries of this worker's partitions, in memory, and their tables."""

    def __init__(self, owned: Any, replica: Any) -> None:
        self.owned = owned  # partitioned: this worker's own partition summaries
        self.replica = replica  # global: every partition's summaries, for scoring
        # by partition then platform: item -> (popularity, as of) in item partitions,
        # item -> (purchases, repeats) in user partitions
        self.popularity: dict[int, dict[str, dict[str, tuple[float, float]]]] = {}
        self.purchases: dict[int, dict[str, dict[str, tuple[int, int]]]] = {}

    def of_partition(self, kind: str, partition: int) -> dict[str, dict[str, Any]]:
        """One partition's summary by platform (``pop`` or ``rep``); after a start or a
        rebalance it is read back from the recovered table, then kept up to date here."""
        cache: dict[int, Any] = self.popularity if kind == "pop" else self.purchases
        summary = cache.get(partition)
        if summary is None:
            summary = {}
            for record in list(self.owned.values()):
                if record["kind"] != kind or record["partition"] != partition:
                    continue
                if kind == "pop":
                    clock = record["clock"]
                    summary[record["platform"]] = {
                        i: (v, clock) for i, v in record["items"].items()
                    }
                else:
                    summary[record["platform"]] = {
                        i: (n, r) for i, (n, r) in record["items"].items()
                    }
            cache[partition] = summary
        return summary

    def publish(self, kind: str, platform: str, partition: int, record: dict[str, Any]) -> None:
        """Write a partition summary to the owner's table and to the global replica,
        changelogged in ``partition`` so that the partition's next owner recovers it."""
        record |= {"kind": kind, "platform": platform, "partition": partition}
        key = f"{kind}\x1f{platform}\x1f{partition}".encode()
        write_in_partition(self.owned, partition, key, record)
        write_in_partition(self.replica, partition, key, record)

    def forget(self) -> None:
        """On a rebalance: the partitions may have moved; read them back when needed."""
        self.popularity.clear()
        self.purchases.clear()
