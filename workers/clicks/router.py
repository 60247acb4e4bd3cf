"""The click router: the click path's first, stateless hop, in a process of its own.

clicks (keyed by user_id) -> decode + validate (bad -> dead letters) -> packs by item
partition -> ``clicks-by-item`` (workers/clicks/join.py joins them with the item table).

The hop needs no table, so it needs no Faust: a plain aiokafka consumer in a group of its
own (``<app_id>-click-router``) reads up to ``click_batch_size`` clicks at a time, and their
offsets are committed once the batch's packs and dead letters are delivered (at least once:
the user agent recognises a redelivered click by its event id).

Why a process: a worker's Python code runs on one core (the GIL), and this hop was a
quarter of that core's work on a click backlog while the second core had little to do
(bench/clicks.py). The worker (:class:`RouterProcess`) runs ``python -m workers.clicks.router``
and talks to it over pipes, one JSON object a line:

- to the router (stdin): first ``{"settings": <METAGUIDE_* variables>, "consumer": {...},
  "producer": {...}}``, then ``{"fetch_wait_ms": n}`` when the worker's fetch pacing
  changes (workers/corrections/fetch_wait.py);
- from the router (stdout): after each delivered batch ``{"consumed": n, "actions":
  {action: n}, "dead_letters": {reason: n}}`` (the worker counts them in its metrics), and
  every ``LAG_INTERVAL_S`` ``{"lag": {partition: n}}``.

The router stops when its stdin closes, so it never outlives its worker; the worker starts
it again if it exits on its own (logged, ``metaguide_click_router_restarts_total``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from metaguide.config import Settings
from metaguide.contracts.codec import encode_json
from metaguide.contracts.events import check_key, decode_click
from metaguide.contracts.internal import PACK_KEY, RoutedClick, chunks, encode_click_pack
from metaguide.contracts.records import dead_letter_of
from metaguide.errors import SchemaViolation
from metaguide.kafka.partitioner import key_partition
from workers.corrections.fetch_wait import set_fetch_wait

__all__ = ["RouterProcess", "Routed", "route"]

log = logging.getLogger("metaguide.router")

LAG_INTERVAL_S = 10.0
MAX_IN_FLIGHT = 4  # routed batches sent and not yet delivered
STOP_TIMEOUT_S = 15.0  # for the last batch and the group's leave, then it is killed
RESTART_BACKOFF_S = (1.0, 30.0)  # first and longest wait before starting it again


@dataclass
class Routed:
    """A batch of clicks sorted out: packs by item partition, the rest with their reasons."""

    packs: dict[int, list[RoutedClick]] = field(default_factory=lambda: defaultdict(list))
    actions: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[Any, str, str]] = field(default_factory=list)  # record, reason, detail


def route(records: list[Any], partitions: int) -> Routed:
    """Validate clicks (aiokafka records) and pack the valid ones by their item's partition,
    in the order read."""
    routed = Routed()
    for record in records:
        try:
            click = decode_click(record.value)
            check_key(record.key, click.user_id, "user_id")
        except SchemaViolation as exc:
            routed.rejected.append((record, exc.reason, exc.detail))
            continue
        routed.actions[click.action] += 1
        routed.packs[key_partition(click.item_id.encode(), partitions)].append(
            RoutedClick(
                click.event_id,
                click.platform,
                click.user_id,
                click.item_id,
                click.action,
                click.ts,
                record.partition,
                record.offset,
                record.value.decode("utf-8"),  # not None: decode_click rejects that
            )
        )
    return routed


# -- the router process --------------------------------------------------------------------


@dataclass
class _Sent:
    """A routed batch whose sends may not be delivered yet."""

    offsets: dict[Any, int]  # next offset to read, by partition
    deliveries: list[asyncio.Future[Any]]
    report: dict[str, Any]

    def done(self) -> bool:
        return all(d.done() for d in self.deliveries)


class Router:
    """The consumer loop of the router process."""

    def __init__(
        self,
        settings: Settings,
        consumer_options: dict[str, Any],
        producer_options: dict[str, Any],
        report: Callable[[dict[str, Any]], None],
    ) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from metaguide.kafka.client import kafka_client_options

        self.settings = settings
        self.report = report
        bootstrap = settings.broker_url.removeprefix("kafka://").replace(";", ",")
        client = kafka_client_options(settings)
        self.consumer = AIOKafkaConsumer(
            settings.topic("clicks"),
            bootstrap_servers=bootstrap,
            group_id=f"{settings.app_id}-click-router",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.click_batch_size,
            **client,
            **consumer_options,
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **client, **producer_options)
        self.stopping = asyncio.Event()

    def set_fetch_wait(self, wait_ms: int) -> None:
        set_fetch_wait(self.consumer, wait_ms)

    async def run(self) -> None:
        await self.producer.start()
        try:
            await self.consumer.start()
            try:
                await self._loop()
            finally:
                await self.consumer.stop()
        finally:
            await self.producer.stop()

    async def _loop(self) -> None:
        """Read, route and send batch after batch; commit each batch's offsets once its
        sends are delivered.

        Deliveries and commits are awaited behind the reads (up to ``MAX_IN_FLIGHT``
        batches sent and not yet delivered, one commit at a time), not before the next
        read: on the embedded broker a produce and a commit take tens of milliseconds each,
        which a batch waited out in turn before (the router was then idle most of the time).
        A failed delivery ends the process: the worker starts it again, and it reads on from
        the last committed offsets (nothing after a failed send is ever committed).
        """
        settings = self.settings
        timeout_ms = max(1, int(settings.click_batch_latency_s * 1000))
        next_lag = time.monotonic()
        in_flight: deque[_Sent] = deque()
        delivered: dict[Any, int] = {}  # offsets to commit, by partition
        commit: asyncio.Task[None] | None = None
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + LAG_INTERVAL_S
                    await self._report_lag()
                batches = await self.consumer.getmany(
                    timeout_ms=timeout_ms, max_records=settings.click_batch_size
                )
                records = [r for rs in batches.values() for r in rs]
                if records:
                    routed = route(records, settings.partitions)
                    in_flight.append(
                        _Sent(
                            offsets={tp: rs[-1].offset + 1 for tp, rs in batches.items()},
                            deliveries=await self._send(routed),
                            report={
                                "consumed": len(records),
                                "actions": dict(routed.actions),
                                "dead_letters": dict(Counter(r for _, r, _ in routed.rejected)),
                            },
                        )
                    )
                # settle the batches delivered so far, in order; wait when too many are out
                while in_flight and (len(in_flight) > MAX_IN_FLIGHT or in_flight[0].done()):
                    sent = in_flight.popleft()
                    await asyncio.gather(*sent.deliveries)  # a failure raises: see above
                    self.report(sent.report)
                    delivered |= sent.offsets
                if delivered and (commit is None or commit.done()):
                    commit = asyncio.create_task(self._commit(delivered))
                    delivered = {}
            while in_flight:  # stopping: what is still out is delivered, then committed
                sent = in_flight.popleft()
                await asyncio.gather(*sent.deliveries)
                self.report(sent.report)
                delivered |= sent.offsets
        finally:
            # (after a failed delivery ``delivered`` holds only the batches before it)
            if commit is not None:
                await commit
            if delivered:
                await self._commit(delivered)

    async def _commit(self, offsets: dict[Any, int]) -> None:
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # a rebalance: the new owner reads them again
            log.warning("commit of routed clicks failed (%r); they may be redelivered", exc)

    async def _send(self, routed: Routed) -> list[asyncio.Future[Any]]:
        """Send the batch's dead letters and packs; returns their deliveries."""
        settings = self.settings
        sent = []
        for record, reason, detail in routed.rejected:
            letter = dead_letter_of(record, reason, detail)
            sent.append(
                await self.producer.send(
                    settings.topic("dead-letters"),
                    key=record.topic.encode(),
                    value=encode_json(letter),
                )
            )
        topic = settings.topic("clicks-by-item")
        for partition, rows in routed.packs.items():
            for chunk in chunks(rows):
                sent.append(
                    await self.producer.send(
                        topic,
                        key=PACK_KEY,
                        value=encode_click_pack(chunk),
                        partition=partition,
                    )
                )
        return sent

    async def _report_lag(self) -> None:
        from metaguide.kafka.client import lag_of

        try:
            lags = await lag_of(self.consumer, sorted(self.consumer.assignment()))
        except Exception as exc:  # a rebalance or a broker hiccup: next time
            log.debug("router lag not computed: %r", exc)
            return
        self.report({"lag": {str(tp.partition): lag for tp, lag in lags.items()}})


async def _serve(stdin: IO[str], out: IO[str]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    config = json.loads(await reader.readline())
    settings = Settings.from_env(config["settings"])
    logging.basicConfig(
        level=config["log_level"],
        format="[click router] %(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def report(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    router = Router(settings, config["consumer"], config["producer"], report)

    async def listen() -> None:
        while line := await reader.readline():  # b"" once the worker closes the pipe
            command = json.loads(line)
            if "fetch_wait_ms" in command:
                router.set_fetch_wait(int(command["fetch_wait_ms"]))
        router.stopping.set()

    listener = asyncio.create_task(listen())
    try:
        await router.run()
    finally:
        listener.cancel()


def main() -> None:
    """``python -m workers.clicks.router``: the process :class:`RouterProcess` runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the worker's to handle
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the reports' own copy of stdout
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything else printed: to stderr
    asyncio.run(_serve(sys.stdin, out))


# -- the worker's side ---------------------------------------------------------------------


class RouterProcess:
    """Runs the router process for a worker, relays its reports, starts it again if it
    exits on its own, and stops it (stdin closed, then killed after ``STOP_TIMEOUT_S``)
    when :meth:`run` is cancelled."""

    def __init__(
        self,
        settings: Settings,
        consumer_options: dict[str, Any],
        producer_options: dict[str, Any],
        on_report: Callable[[dict[str, Any]], None],
        on_restart: Callable[[], None],
    ) -> None:
        self.config = json.dumps(
            {
                "settings": settings.to_env(),
                "consumer": consumer_options,
                "producer": producer_options,
                "log_level": logging.getLogger().getEffectiveLevel(),
            }
        )
        self.on_report = on_report
        self.on_restart = on_restart
        self.lag: dict[int, int] = {}  # the last reported lag by partition of the clicks topic
        self._process: asyncio.subprocess.Process | None = None
        self._fetch_wait_ms: int | None = None

    @property
    def pid(self) -> int | None:
        """The running router process's id; None between two runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def set_fetch_wait(self, wait_ms: int) -> None:
        """Pass a new fetch wait on to the running router (only when it changes)."""
        process = self._process
        if process is None or process.stdin is None or wait_ms == self._fetch_wait_ms:
            return
        self._fetch_wait_ms = wait_ms
        process.stdin.write(json.dumps({"fetch_wait_ms": wait_ms}).encode() + b"\n")

    async def run(self) -> None:
        backoff = RESTART_BACKOFF_S[0]
        while True:
            started = time.monotonic()
            code = await self._run_once()
            if time.monotonic() - started > 60:
                backoff = RESTART_BACKOFF_S[0]  # it had been running fine: no long wait
            log.error("the click router exited with code %s; starting it in %.0fs", code, backoff)
            self.on_restart()
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, RESTART_BACKOFF_S[1])

    async def _run_once(self) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workers.clicks.router",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        self._process, self._fetch_wait_ms, self.lag = process, None, {}
        try:
            process.stdin.write(self.config.encode() + b"\n")
            async for line in process.stdout:
                self._relay(json.loads(line))
            return await process.wait()
        finally:
            self._process = None
            if process.returncode is None:
                await _stop(process)

    def _relay(self, report: dict[str, Any]) -> None:
        if "lag" in report:
            self.lag = {int(p): n for p, n in report["lag"].items()}
        else:
            self.on_report(report)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Close the router's stdin (it finishes its batch and leaves its group), then wait."""
    assert process.stdin is not None
    process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning("the click router did not stop within %ss: killed", STOP_TIMEOUT_S)
        process.kill()
        await process.wait()
    except asyncio.CancelledError:
        process.kill()
        raise


if __name__ == "__main__":
    main()
