"""Flow control that keeps the events already fetched when Faust resumes flow.

Faust clears every stream buffer each time it resumes flow (``FlowControlEvent.resume``),
trusting that it has just sought each partition back to its committed offset. At the end of
table recovery it has not: it seeks, the fetcher buffers the next events, then flow resumes
and clears them, while the consumer's read offset is already past them. They were never
processed until a restart, and their partition committed no further.
:class:`KeepingFlowControl` resumes without clearing; the seek itself is made safe by
:mod:`workers.corrections.seek`.

Upstream: faust-streaming/faust#216 and #217 (resume before seek), robinhood/faust#583
(messages dropped when the queue is cleared on resume).
"""

from __future__ import annotations

from typing import Any

from mode.utils.queues import FlowControlEvent

__all__ = ["RELIES_ON", "KeepingFlowControl"]

RELIES_ON = (
    "mode.utils.queues.FlowControlEvent.resume(self)",
    "mode.utils.queues.FlowControlEvent._suspend",
    "mode.utils.queues.FlowControlEvent._resume",
    "faust.app.base.App.flow_control",
)


class KeepingFlowControl(FlowControlEvent):
    """A FlowControlEvent whose ``resume`` does not clear the stream buffers."""

    def __init__(self, app: Any) -> None:
        super().__init__(loop=app.loop)

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()
