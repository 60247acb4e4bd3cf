"""Micro-batching in front of a model: many callers, one model call per batch.

Callers from every partition ``await embed_one(text)``. A single runner task cuts a batch
at once when the model is idle; while a batch is in the model, when the queue holds
``max_batch_size`` texts or its oldest text has waited ``max_latency_s``. It runs the model
in a worker thread so the event loop (Kafka polling, heartbeats) never waits on it. Up to
``concurrency`` batches are in the model at once (one thread each: on a CPU, two
single-threaded model calls side by side get more done than one call on two threads); while
they run, new texts queue up for the next batch. When the model fails on a batch, the batch
is split until the failing texts are found: only their callers get the error, every other
text of the batch its vector.

Given a ``length`` (a text's token count), a batch cut from a queue longer than a batch
takes texts of about the same length together (:func:`pick_batch`): the model pads every
text of a batch to the longest one, so batches in arrival order spend much of their work
on padding (docs/performance.md). The oldest text is in every batch cut, so the queue
still moves in arrival order, and nothing is reordered while the queue holds no more than a
batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatchStats", "MicroBatcher", "pick_batch"]

EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass
class BatchStats:
    """What the batcher did, for metrics and tests."""

    batches: int = 0
    items: int = 0
    max_batch: int = 0
    tokens: int = 0  # with a length: the texts' own tokens
    padded_tokens: int = 0  # and what the model ran: each batch padded to its longest text
    splits: int = 0  # batches the model failed on, tried again in halves
    sizes: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    text: str
    future: asyncio.Future[np.ndarray]
    enqueued: float
    length: int = 0


def pick_batch(lengths: Sequence[int], size: int, window: int) -> list[int]:
    """Positions of the next batch in a queue of texts with these lengths, oldest first.

    The oldest text and, of the ``window`` oldest, the ``size - 1`` nearest to it in length
    (ties: the older first); the whole queue when it holds no more than ``size``.
    """
    if len(lengths) <= size:
        return list(range(len(lengths)))
    anchor = lengths[0]
    nearest = sorted(range(1, min(window, len(lengths))), key=lambda i: abs(lengths[i] - anchor))
    return [0, *sorted(nearest[: size - 1])]


class MicroBatcher:
    """Collects texts into batches by size and latency budget; one model call at a time."""

    def __init__(
        self,
        embed_many: EmbedFn,
        *,
        max_batch_size: int = 32,
        max_latency_s: float = 0.05,
        on_batch: Callable[[int, float, float], None] | None = None,
        keep_sizes: bool = False,
        concurrency: int = 1,
        length: Callable[[str], int] | None = None,
        window: int = 0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_latency_s < 0:
            raise ValueError(f"max_latency_s must be >= 0, got {max_latency_s}")
        self._embed_many = embed_many
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self._on_batch = on_batch  # (size, fill_seconds, model_seconds)
        self._keep_sizes = keep_sizes
        self._length = length
        self.window = window or 8 * max_batch_size  # texts looked at to group by length
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.concurrency = concurrency
        self._running: set[asyncio.Task[None]] = set()  # batches in the model
        self._executor = concurrent.futures.ThreadPoolExecutor(
            concurrency, thread_name_prefix="encoder"
        )
        self.stats = BatchStats()

    @property
    def queued(self) -> int:
        """Texts waiting for a batch (not counting the batch in the model)."""
        return len(self._queue)

    @property
    def saturated(self) -> bool:
        """A backlog waits for the model: more full batches queued than its streams take
        next, so the model is what limits throughput (a burst that the next calls absorb
        is not one)."""
        return len(self._queue) >= (self.concurrency + 2) * self.max_batch_size

    async def embed_one(self, text: str) -> np.ndarray:
        """Queue one text and wait for its vector."""
        return await self.submit_many([text])[0]

    async def embed_many(self, texts: list[str]) -> list[np.ndarray]:
        """Queue several texts (they may share batches with other callers)."""
        return list(await asyncio.gather(*self.submit_many(texts)))

    def submit_many(self, texts: list[str]) -> list[asyncio.Future[np.ndarray]]:
        """Queue several texts at once; each future gets its text's vector, or the error of
        the model on that text alone."""
        self._ensure_running()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        length = self._length
        futures = []
        for text in texts:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.append(_Pending(text, future, now, length(text) if length else 0))
            futures.append(future)
        if texts:
            self._wakeup.set()
        return futures

    def _ensure_running(self) -> None:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="microbatcher")

    async def close(self) -> None:
        """Stop the runner; texts still queued or in the model get a CancelledError."""
        for task in [self._runner, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.cancel()
        self._executor.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue or len(self._running) >= self.concurrency:
                self._wakeup.clear()
                await self._wakeup.wait()
            # an idle model takes what is queued at once (a lone text does not wait for
            # company); while a batch is in the model, texts gather for up to the latency
            # budget, since the busy streams get through little else meanwhile
            deadline = self._queue[0].enqueued + self.max_latency_s
            while self._running and len(self._queue) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = [p for p in self._take_batch() if not p.future.cancelled()]
            if not batch:
                continue
            task = loop.create_task(self._call(batch))
            self._running.add(task)
            task.add_done_callback(self._call_done)

    def _take_batch(self) -> list[_Pending]:
        queue, size = self._queue, self.max_batch_size
        if self._length is None or len(queue) <= size:
            return [queue.popleft() for _ in range(min(size, len(queue)))]
        head = [queue[i] for i in range(min(self.window, len(queue)))]
        picked = pick_batch([p.length for p in head], size, self.window)
        batch = [head[i] for i in picked]
        taken = set(picked)
        # the rest stays queued in arrival order
        rest = [p for i, p in enumerate(head) if i not in taken]
        for _ in range(len(head)):
            queue.popleft()
        queue.extendleft(reversed(rest))
        return batch

    def _call_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wakeup.set()  # a slot is free

    async def _call(self, batch: list[_Pending]) -> None:
        """One model call for one batch; its vectors go to its callers. A batch the model
        fails on is split until the texts it fails on are found: only their callers get
        the error."""
        fill_s = time.monotonic() - batch[0].enqueued
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._embed_or_split, [p.text for p in batch]
            )
        except asyncio.CancelledError:
            for p in batch:
                p.future.cancel()
            raise
        model_s = time.perf_counter() - started
        for p, result in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        if self._length is not None:
            lengths = [p.length for p in batch]
            self.stats.tokens += sum(lengths)
            self.stats.padded_tokens += len(batch) * max(lengths)
        if self._keep_sizes:
            self.stats.sizes.append(len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch), fill_s, model_s)

    def _embed_or_split(self, texts: list[str]) -> list[np.ndarray | Exception]:
        """The model's vectors for ``texts``, in a worker thread; when the model fails on
        the batch, each half is tried on its own, down to the texts that fail alone."""
        try:
            vectors = self._embed_many(texts)
            if len(vectors) != len(texts):
                raise RuntimeError(f"model returned {len(vectors)} vectors for {len(texts)} texts")
            return list(vectors)
        except Exception as exc:
            if len(texts) == 1:
                return [exc]
            self.stats.splits += 1
            half = len(texts) // 2
            return self._embed_or_split(texts[:half]) + self._embed_or_split(texts[half:])
