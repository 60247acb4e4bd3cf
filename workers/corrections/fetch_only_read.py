"""Fetch only the partitions that are read.

Faust pauses a partition in its own books only: aiokafka went on fetching every active
table's changelog after recovery, and the assignor's leader topic, in every fetch, and the
embedded broker pays per partition per fetch. :class:`FetchOnlyReadConsumer` mirrors Faust's
pauses of changelog partitions, and the leader topic, into aiokafka's consumer (in the thread
it runs in).

Upstream: robinhood/faust#293 and faust-streaming/faust#139 describe the same pause of active
changelog partitions from the other side; no issue asks for the fetch to stop.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

__all__ = ["RELIES_ON", "FetchOnlyReadConsumer", "fetch_only_read"]

RELIES_ON = (
    "faust.transport.consumer.Consumer.pause_partitions(self, tps)",
    "faust.transport.consumer.Consumer.resume_partitions(self, tps)",
    "faust.transport.consumer.Consumer._paused_partitions",
    "faust.transport.consumer.ThreadDelegateConsumer._thread",
    "faust.transport.drivers.aiokafka.AIOKafkaConsumerThread._consumer",
    "faust.assignor.leader_assignor.LeaderAssignor._leader_topic_name",
    "faust.app.base.App._leader_assignor",
)


def fetch_only_read(
    consumer: AIOKafkaConsumer, unread: frozenset[Any], managed_topics: frozenset[str]
) -> None:
    """Pause in aiokafka the assigned partitions of ``managed_topics`` that are in ``unread``
    and resume the others; run in the loop that aiokafka's consumer runs in."""
    for tp in consumer.assignment():
        if tp.topic not in managed_topics:
            continue
        if tp in unread:
            consumer.pause(tp)
        else:
            consumer.resume(tp)


class FetchOnlyReadConsumer:
    """Mixin for Faust's consumer: its pauses mirrored into aiokafka's fetcher."""

    def pause_partitions(self, tps: Any) -> None:
        super().pause_partitions(tps)  # type: ignore[misc]
        self._fetch_only_read()

    def resume_partitions(self, tps: Any) -> None:
        super().resume_partitions(tps)  # type: ignore[misc]
        self._fetch_only_read()

    def _fetch_only_read(self) -> None:
        c: Any = self
        consumer = c._thread._consumer
        if consumer is None:
            return
        leader = c.app._leader_assignor._leader_topic_name
        changelogs = c.app.tables.changelog_topics
        unread = frozenset(
            tp
            for tp in c.assignment()
            if tp.topic == leader or (tp in c._paused_partitions and tp.topic in changelogs)
        )
        managed = frozenset({leader, *changelogs})
        c._thread.thread_loop.call_soon_threadsafe(fetch_only_read, consumer, unread, managed)
