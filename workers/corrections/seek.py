"""A seek back to the committed offsets that no event crosses.

After recovery Faust resumes the stream partitions, then seeks them to their committed
offsets, which waits on the broker; meanwhile the fetcher keeps delivering from the position
it had. Those events were processed, fetched again after the seek and processed again, and an
offset acked twice sat twice in Faust's acked list: each commit then advanced the partition
by one offset, and the second copy stayed unacked for good. :class:`SeekClearingConsumer`
stops delivery for the seek and drops what was buffered before it, so every event is fetched
once, from the committed offset.

Upstream: faust-streaming/faust#216 and #217 (the same race, for apps without tables).
"""

from __future__ import annotations

from typing import Any

__all__ = ["RELIES_ON", "SeekClearingConsumer"]

RELIES_ON = (
    "faust.transport.consumer.Consumer.perform_seek(self)",
    "faust.transport.consumer.Consumer.stop_flow(self)",
    "faust.transport.consumer.Consumer.resume_flow(self)",
    "faust.transport.consumer.Consumer.flow_active",
)


class SeekClearingConsumer:
    """Mixin for Faust's consumer: no delivery while it seeks, nothing buffered kept."""

    async def perform_seek(self) -> None:
        consumer: Any = self
        was_active = consumer.flow_active
        consumer.stop_flow()
        consumer.app.flow_control.clear()
        try:
            await super().perform_seek()  # type: ignore[misc]
        finally:
            consumer.app.flow_control.clear()
            if was_active:
                consumer.resume_flow()
