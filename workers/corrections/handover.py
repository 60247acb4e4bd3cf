"""Fetched events handed to the streams without four tasks per event.

Faust hands each fetched event over with ``wait_first(callback(message),
suspend_flow.wait())``: four tasks created, raced and cancelled per event, and a stream gets
one event per loop turn. The hand-over almost never waits (the stream buffer has room), so
:class:`DirectHandoverConsumer` starts it directly; only when it does wait is the rest raced
against a suspend of flow, as Faust does. An event fetched while flow is suspended is skipped,
as Faust skips it (it is fetched again after the seek).

A topic registered with ``app.handle_in_batches(topic, handler)`` is not handed to a stream
at all: what one fetch brings of each of its partitions goes to ``handler(tp, messages)`` in
one call, which tracks and acks the messages itself through Faust's consumer (its commits
are Faust's as for any stream). Faust's per-event machinery cost more than a listing's own
work outside the model.

Upstream: no issue found; the loop is ``faust.transport.consumer.Consumer._drain_messages``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

__all__ = ["RELIES_ON", "DirectHandoverConsumer"]

log = logging.getLogger("metaguide.corrections")

DRAIN_YIELD_EVERY = 100  # events handed over between two yields to the loop (Faust's figure)
FETCHING = "FETCHING"  # Faust's diagnostic flag while the drain loop fetches

RELIES_ON = (
    "faust.transport.consumer.Consumer._drain_messages(self, fetcher)",
    "faust.transport.consumer.Consumer._add_gap(self, tp, offset_from, offset_to)",
    "faust.transport.consumer.Consumer._read_offset",
    "faust.transport.consumer.Consumer._commit_every",
    "faust.transport.consumer.Consumer._n_acked",
    "faust.transport.consumer.Consumer.getmany(self, timeout)",
    "faust.transport.consumer.Consumer.wait_first",
    "faust.transport.consumer.Consumer.suspend_flow",
    "faust.transport.consumer.Consumer.consumer_stopped_errors",
    # a batch handler's side
    "faust.transport.consumer.Consumer.track_message(self, message)",
    "faust.transport.consumer.Consumer.ack(self, message)",
    "faust.transport.conductor.Conductor.add(self, topic)",
    "faust.app.base.App.consumer_generation_id",
)


class DirectHandoverConsumer:
    """Mixin for Faust's consumer: Faust's drain loop (gaps, commit_every, a yield to the
    loop every 100 events) with the direct hand-over."""

    async def _drain_messages(self, fetcher: Any) -> None:
        c: Any = self  # Faust's consumer
        callback = c.callback
        suspended = c.suspend_flow.is_set
        read_offsets = c._read_offset
        acks_enabled_for = c.app.topics.acks_enabled_for
        batch_handlers = c.app.batch_handlers  # topic -> handler(tp, messages)
        since_yield = 0
        try:
            while not (c.should_stop or fetcher.should_stop):
                c.diag.set_flag(FETCHING)
                records = c.getmany(timeout=1.0)
                await asyncio.sleep(0)  # getmany may return at once, time after time
                if c.should_stop:
                    continue
                batches: dict[Any, list[Any]] = {}
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > DRAIN_YIELD_EVERY:
                        since_yield = 0
                        await asyncio.sleep(0)
                    offset = message.offset
                    read = read_offsets[tp]
                    if read is not None and offset < read:
                        continue  # already handed over
                    if read and offset - read > 1 and acks_enabled_for(message.topic):
                        await c._add_gap(tp, read + 1, offset)
                    if c._commit_every is not None and c._n_acked >= c._commit_every:
                        c._n_acked = 0
                        await c.commit()
                    # while flow is suspended the event is skipped, as Faust skips it: it is
                    # fetched again from the committed offset after the seek
                    if not suspended():
                        if message.topic in batch_handlers:
                            batches.setdefault(tp, []).append(message)
                        else:
                            await c._hand_over(callback(message))
                    read_offsets[tp] = offset
                for tp, messages in batches.items():
                    if not suspended():  # else fetched again after the seek
                        await batch_handlers[tp.topic](tp, messages)
                c.diag.unset_flag(FETCHING)
        except c.consumer_stopped_errors:
            if not c.transport.app.should_stop:
                raise
            log.info("broker stopped the consumer while shutting down")
        except asyncio.CancelledError:
            if not c.transport.app.should_stop:
                raise
        except Exception:
            log.exception("handing fetched events to the streams failed")
            raise
        finally:
            c.diag.unset_flag(FETCHING)

    async def _hand_over(self, handover: Awaitable[Any]) -> None:
        # run it up to its first wait; if it waits, race the rest against a suspend of flow
        c: Any = self
        if isinstance(handover, Coroutine):
            try:
                waiting_on = handover.send(None)
            except StopIteration:
                return
            handover = _Resumed(handover, waiting_on)
        await c.wait_first(handover, c.suspend_flow.wait())


class _Resumed:
    """Awaitable rest of a coroutine that was started by hand and is waiting on
    ``waiting_on`` (what it yielded): whoever awaits this drives it on."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self.coro, self.waiting_on
        step: Callable[[Any], Any]
        while True:
            try:
                sent = yield pending
            except BaseException as exc:  # a cancel or a throw: the coroutine gets it
                step, arg = coro.throw, exc
            else:
                step, arg = coro.send, sent
            try:
                pending = step(arg)
            except StopIteration as stop:
                return stop.value
