"""How events flow from the broker into the agents: four corrections to Faust, two ways
Faust spent event-loop turns per event that it did not need to, partitions it fetched
without reading them, and (embedded broker) a fetch wait that follows the load.

1. Fetch wait. Kafka answers a fetch as soon as there is data; the embedded broker (Tansu)
   holds it for the whole ``fetch_max_wait_ms``: measured, a record was received 0.72 s after
   it was produced (p50; 1.47 s max) with Faust's fixed 1.5 s, 0.015 s with 0.1 s. With the
   embedded broker, the worker's consumers wait ``EMBEDDED_FETCH_MAX_WAIT_MS``: Faust's (set
   by :class:`App`) and the click router's. In a pipeline of agents the long wait also costs
   throughput: an agent that has caught up with its input waits out each held fetch while
   the agent before it produces.

2. Flow control that keeps the events already fetched when Faust resumes flow.

   Faust clears every stream buffer each time it resumes flow (``FlowControlEvent.resume``),
   trusting that it has just sought each partition back to its committed offset, so that
   the cleared events are fetched again. At the end of table recovery that is not so: it
   seeks, then the fetcher buffers the next events, then it resumes flow (with a recovery
   buffer of 1, once more) and clears them. The consumer's position and read offset are
   past them, so they were not processed until the worker restarted, and their partition
   committed no further. Measured here: a worker started on a backlog of 1,500 listings lost
   8 to 361 of them in about one start in two. :class:`KeepingFlowControl` resumes flow
   without clearing.

3. A seek back to the committed offsets that no event crosses.

   After recovery Faust resumes the stream partitions and then seeks them to their committed
   offsets, which waits on the broker; meanwhile the fetcher went on delivering events from
   the position it had. Those events were processed, then fetched and processed again after
   the seek, and Faust's acked-offset bookkeeping did not survive it: an offset acked twice
   sat in its acked list twice, so each commit advanced the partition by one offset (every
   0.5 s), and the second copy of an offset already committed stayed in its unacked set for
   good. With a 50 ms fetch wait that happened on every start onto a backlog (5 of 5), with
   1.5 s in about one in four. :class:`SeekClearingConsumer` stops the delivery for the
   seek and drops what was buffered before it: after the seek every event is fetched once,
   from the committed offset (measured: 0 duplicate acks and all offsets committed in 9 of 9
   starts onto a backlog, with the 50 ms wait). On a rebalance Faust still clears the
   buffers itself, and a stream skips any event of an older consumer generation.

4. End offsets read from the records (embedded broker only).

   Tansu answers ListOffsets(latest) with the last record batch's base offset + 1, not one
   past its last record. Faust's table recovery reads a changelog up to that offset, so it
   ended inside the last batch and dropped the rest of it: the embedded profile had to send
   one record per batch (``producer_max_batch_size=1``), which made every changelog write its
   own produce request. :func:`true_end_offsets` fetches each partition's last batch and
   takes the offset after its last record; with it, table recovery is right with batched
   produces (aiokafka's default) and the embedded profile batches like any other.

5. Hand-over without four tasks per event (:meth:`SeekClearingConsumer._drain_messages`).

   Faust hands each fetched event to its streams with ``wait_first(callback(message),
   suspend_flow.wait())``: four tasks (the callback and three waits) created, raced and
   cancelled per event, and the fetcher moves to the next event only some loop turns later,
   so a stream gets one event per turn. The hand-over almost never waits (it puts the
   event into a stream buffer that has room), so it is now started directly: when it
   finishes without waiting, as it nearly always does, the next event follows in the same
   turn; only when it does wait (a full buffer, flow control, a full producer buffer) is
   the rest of it raced against the flow being suspended, as Faust does. An event fetched
   while flow is suspended is skipped, as Faust skips it (it is fetched again after the
   seek). Measured on a backlog of 3,000 listings with a stand-in encoder: 9.7 loop turns
   per listing before, 1.6 after; event-loop CPU 0.33-0.67 ms per listing before,
   0.12-0.20 after. With the real encoder the event loop's CPU fell from 1.60-1.74 s to
   1.31-1.36 s for the same backlog.

6. The producer handed out without loop turns (:meth:`App.maybe_start_producer`). Every send
   asks the app for its producer through a stampede guard that yields to the event loop
   three times per call; once the producer has started it is now returned directly. With a
   stand-in encoder that sleeps instead of computing (the real encoder's pace, no CPU), the
   event loop used 1.08-1.10 CPU-s for 3,000 listings instead of 1.16-1.31.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from metaguide.replay import group_less_consumer

__all__ = [
    "EMBEDDED_BUSY_FETCH_MAX_WAIT_MS",
    "EMBEDDED_FETCH_MAX_WAIT_MS",
    "App",
    "FetchPacer",
    "KeepingFlowControl",
    "SeekClearingConsumer",
    "fetch_only_read",
    "set_fetch_wait",
    "true_end_offsets",
]

log = logging.getLogger("metaguide.flow")

EMBEDDED_FETCH_MAX_WAIT_MS = 50
EMBEDDED_BUSY_FETCH_MAX_WAIT_MS = 240  # under 250 ms: Tansu polls the partitions once
DRAIN_YIELD_EVERY = 100  # events handed over between two yields to the loop (Faust's figure)
FETCHING = "FETCHING"  # Faust's diagnostic flag while the drain loop fetches
LAST_BATCH_TIMEOUT_S = 10.0


async def true_end_offsets(
    bootstrap: str, reported: Mapping[Any, int | None], timeout_s: float = LAST_BATCH_TIMEOUT_S
) -> dict[Any, int | None]:
    """One past the last record of each partition, from ListOffsets(latest) answers that
    may point at the first record of the last batch (Tansu): the batch is fetched from there
    and its last offset taken. Partitions that are empty, or whose batch does not come
    within ``timeout_s`` (logged), keep the reported offset."""
    ends = dict(reported)
    starts = {
        TopicPartition(tp.topic, tp.partition): (tp, end)
        for tp, end in reported.items()
        if end is not None and end > 0
    }
    if not starts:
        return ends
    consumer = group_less_consumer(bootstrap)
    await consumer.start()
    try:
        consumer.assign(list(starts))
        for tp, (_, end) in starts.items():
            consumer.seek(tp, end - 1)
        pending = set(starts)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            fetched = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in fetched.items():
                if records:
                    key, end = starts[tp]
                    ends[key] = max(end, records[-1].offset + 1)
                    pending.discard(tp)
        if pending:
            log.warning(
                "no last batch within %ss for %s: kept their end offsets", timeout_s, pending
            )
    finally:
        await consumer.stop()
    return ends


class FetchPacer:
    """The fetch wait of a worker's consumers by load (8): ``busy_ms`` while ``saturated()``
    says the model is the bottleneck, ``idle_ms`` otherwise.

    ``tick`` hands the wait for the load now to each of ``targets`` (:func:`set_fetch_wait`
    on an aiokafka consumer, or the click router process's setter).
    """

    def __init__(
        self,
        saturated: Callable[[], bool],
        targets: list[Callable[[int], None]],
        idle_ms: int = EMBEDDED_FETCH_MAX_WAIT_MS,
        busy_ms: int = EMBEDDED_BUSY_FETCH_MAX_WAIT_MS,
    ) -> None:
        self.saturated = saturated
        self.targets = targets
        self.idle_ms = idle_ms
        self.busy_ms = busy_ms

    def tick(self) -> int:
        """Give every target the wait for the load now; return that wait."""
        wait_ms = self.busy_ms if self.saturated() else self.idle_ms
        for set_wait in self.targets:
            set_wait(wait_ms)
        return wait_ms


def set_fetch_wait(consumer: Any, wait_ms: int) -> None:
    """An aiokafka consumer's fetch wait, read when its fetcher builds its next request (none
    before it has started). Faust's consumer runs in a thread of its own: the wait is one int
    attribute, so setting it from the event loop is safe."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None:
        fetcher._fetch_max_wait_ms = wait_ms


class KeepingFlowControl(FlowControlEvent):
    """A FlowControlEvent whose ``resume`` does not clear the stream buffers."""

    def __init__(self, app: Any) -> None:
        super().__init__(loop=app.loop)

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()


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


class SeekClearingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer: no event delivered while it seeks back to the committed
    offsets, none of those buffered before kept; fetched events handed to the streams
    directly (5); its fetches wait the app's ``fetch_max_wait_ms``; it fetches only the
    partitions that are read (7)."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def pause_partitions(self, tps: Any) -> None:
        super().pause_partitions(tps)
        self._fetch_only_read()

    def resume_partitions(self, tps: Any) -> None:
        super().resume_partitions(tps)
        self._fetch_only_read()

    def _fetch_only_read(self) -> None:
        # Faust's pauses of changelog partitions, and the leader topic, mirrored into
        # aiokafka's fetcher; each call applies the whole current set, in aiokafka's thread
        consumer = self._thread._consumer
        if consumer is None:
            return
        leader = self.app._leader_assignor._leader_topic_name  # type: ignore[attr-defined]
        changelogs = self.app.tables.changelog_topics
        unread = frozenset(
            tp
            for tp in self.assignment()
            if tp.topic == leader or (tp in self._paused_partitions and tp.topic in changelogs)
        )
        managed = frozenset({leader, *changelogs})
        self._thread.thread_loop.call_soon_threadsafe(fetch_only_read, consumer, unread, managed)

    async def perform_seek(self) -> None:
        # Faust resumes the stream partitions just before this seek, so the fetcher may
        # deliver events while it waits for the committed offsets: stop the delivery, seek,
        # then drop what was buffered (all of it is fetched again from the committed offset)
        was_active = self.flow_active
        self.stop_flow()
        self.app.flow_control.clear()
        try:
            await super().perform_seek()
        finally:
            self.app.flow_control.clear()
            if was_active:
                self.resume_flow()

    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's loop (gaps, commit_every, a yield to the loop every 100 events) with the
        # direct hand-over described in the module docstring (5)
        callback = self.callback
        suspended = self.suspend_flow.is_set
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        since_yield = 0
        try:
            while not (self.should_stop or fetcher.should_stop):
                self.diag.set_flag(FETCHING)
                records = self.getmany(timeout=1.0)
                await asyncio.sleep(0)  # getmany may return at once, time after time
                if self.should_stop:
                    continue
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
                        await self._add_gap(tp, read + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    # while flow is suspended the event is skipped, as Faust skips it: it is
                    # fetched again from the committed offset after the seek
                    if not suspended():
                        await self._hand_over(callback(message))
                    read_offsets[tp] = offset
                self.diag.unset_flag(FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
            log.info("broker stopped the consumer while shutting down")
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise
        except Exception:
            log.exception("handing fetched events to the streams failed")
            raise
        finally:
            self.diag.unset_flag(FETCHING)

    async def _hand_over(self, handover: Awaitable[Any]) -> None:
        # run it up to its first wait; if it waits, race the rest against a suspend of flow
        if isinstance(handover, Coroutine):
            try:
                waiting_on = handover.send(None)
            except StopIteration:
                return
            handover = _Resumed(handover, waiting_on)
        await self.wait_first(handover, self.suspend_flow.wait())


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


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.consumer.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms  # fixed at 1500 by Faust; read at start()
        return consumer

    async def _highwaters(self, partitions: Any) -> Mapping[Any, int]:
        # what table recovery reads changelogs up to
        reported = await super()._highwaters(partitions)
        app = self.consumer.app
        if not getattr(app, "read_end_offsets", False):
            return reported
        url = app.conf.broker[0]
        return await true_end_offsets(f"{url.host}:{url.port}", reported)  # type: ignore[return-value]


class App(faust.App):
    """The worker's Faust app: :class:`KeepingFlowControl` and, with Faust's aiokafka driver,
    :class:`SeekClearingConsumer`, whose fetches wait ``fetch_max_wait_ms`` (None: Faust's
    1.5 s) and which, with ``read_end_offsets`` (the embedded broker: plaintext, first broker
    of the list), recovers tables up to :func:`true_end_offsets`."""

    def __init__(
        self,
        *args: Any,
        fetch_max_wait_ms: int | None = None,
        read_end_offsets: bool = False,
        **kwargs: Any,
    ) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.read_end_offsets = read_end_offsets
        self._producer_started = False
        super().__init__(*args, **kwargs)

    async def maybe_start_producer(self) -> Any:
        # Every send awaits this. Faust guards it against concurrent starts with a stampede
        # wrapper that yields to the event loop three times per call, so every send cost
        # three loop turns; once the producer has started, it is handed out directly.
        if self._producer_started and not self.in_transaction:
            return self.producer
        producer = await super().maybe_start_producer()
        # mode's stampede descriptor caches its wrapper in the instance under this name,
        # which would hide this method from then on
        self.__dict__.pop("maybe_start_producer", None)
        self._producer_started = True
        return producer

    @cached_property
    def flow_control(self) -> KeepingFlowControl:
        return KeepingFlowControl(self)

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        if transport.Consumer is faust_aiokafka.Consumer:
            transport.Consumer = SeekClearingConsumer  # type: ignore[misc]
        return transport
