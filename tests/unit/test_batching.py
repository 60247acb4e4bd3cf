"""The micro-batcher: batch size, latency budget, per-caller results, error routing."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from metaguide.embedding.batching import MicroBatcher, pick_batch
from metaguide.waiting import wait_until


class RecordingModel:
    """A stand-in model: each text's vector encodes the text, calls are timed and recorded."""

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.calls: list[tuple[float, list[str]]] = []
        self.thread_ids: set[int] = set()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.thread_ids.add(threading.get_ident())
        self.calls.append((time.monotonic(), list(texts)))
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"model failed on {self.fail_on}")
        time.sleep(self.delay_s)
        return np.array([[float(t.split("-")[-1])] for t in texts], dtype=np.float32)


async def test_each_caller_gets_its_own_vector_in_order() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=8, max_latency_s=0.01)
    texts = [f"t-{i}" for i in range(50)]
    vectors = await batcher.embed_many(texts)
    assert [float(v[0]) for v in vectors] == list(range(50))
    await batcher.close()


async def test_batches_never_exceed_the_size_and_the_model_runs_off_the_loop() -> None:
    model = RecordingModel(delay_s=0.005)
    batcher = MicroBatcher(model, max_batch_size=7, max_latency_s=0.02, keep_sizes=True)
    await asyncio.gather(*(batcher.embed_one(f"t-{i}") for i in range(100)))
    assert max(len(texts) for _, texts in model.calls) == 7
    assert sum(batcher.stats.sizes) == 100
    assert threading.get_ident() not in model.thread_ids
    await batcher.close()


async def test_no_text_waits_longer_than_the_budget_plus_one_model_call() -> None:
    delay_s, budget_s = 0.05, 0.03
    model = RecordingModel(delay_s=delay_s)
    batcher = MicroBatcher(model, max_batch_size=1000, max_latency_s=budget_s)
    waits: list[float] = []

    async def one(i: int) -> None:
        await asyncio.sleep(i * 0.004)  # arrivals spread over time, not a burst
        t0 = time.monotonic()
        await batcher.embed_one(f"t-{i}")
        waits.append(time.monotonic() - t0)

    await asyncio.gather(*(one(i) for i in range(60)))
    slack = 0.03  # scheduling on a loaded 2-core machine
    # queued wait <= budget + one model call in progress; plus its own model call
    assert max(waits) <= budget_s + 2 * delay_s + slack, max(waits)
    assert len(model.calls) > 1  # the budget, not the size, cut the batches
    await batcher.close()


async def test_a_model_error_reaches_exactly_the_callers_of_the_text_it_fails_on() -> None:
    model = RecordingModel(fail_on="t-3")
    batcher = MicroBatcher(model, max_batch_size=8, max_latency_s=1.0)
    results = await asyncio.gather(
        *(batcher.embed_one(f"t-{i}") for i in range(8)), return_exceptions=True
    )
    assert isinstance(results[3], RuntimeError)  # the poisoned text alone
    others = [float(r[0]) for i, r in enumerate(results) if i != 3]  # type: ignore[index]
    assert others == [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0]
    assert batcher.stats.splits == 3  # 8 -> 4 -> 2 -> 1: a split per level that failed
    # and the batcher keeps serving
    assert float((await batcher.embed_one("t-9"))[0]) == 9.0
    await batcher.close()


class OverlapModel(RecordingModel):
    """Also counts the calls running at the same moment."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s=delay_s)
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().__call__(texts)
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.parametrize("concurrency", [1, 2, 3])
async def test_up_to_concurrency_batches_run_side_by_side(concurrency: int) -> None:
    model = OverlapModel(delay_s=0.02)
    batcher = MicroBatcher(
        model, max_batch_size=5, max_latency_s=0.01, concurrency=concurrency, keep_sizes=True
    )
    texts = [f"t-{i}" for i in range(60)]
    vectors = await batcher.embed_many(texts)
    assert [float(v[0]) for v in vectors] == list(range(60))
    assert model.most_at_once == concurrency  # a backlog fills every slot, never more
    assert max(batcher.stats.sizes) == 5 and sum(batcher.stats.sizes) == 60
    await batcher.close()


async def test_an_idle_model_takes_a_lone_text_at_once() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, max_batch_size=32, max_latency_s=60.0, concurrency=2)
    # the latency budget is a minute: only an idle model's dispatch returns within the timeout
    vector = await asyncio.wait_for(batcher.embed_one("t-7"), 5)
    assert float(vector[0]) == 7.0
    await batcher.close()


async def test_while_a_batch_is_in_the_model_texts_gather_for_the_next() -> None:
    release, entered = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    def held(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        if texts == ["t-0"]:
            entered.set()
            release.wait(5)
        return np.array([[float(t.split("-")[-1])] for t in texts], dtype=np.float32)

    batcher = MicroBatcher(held, max_batch_size=3, max_latency_s=60.0, concurrency=2)
    first = asyncio.ensure_future(batcher.embed_one("t-0"))
    await wait_until(entered.is_set, 5, "the first text in the model at once")
    # a stream is free, but one batch is in the model: these wait for a full batch
    rest = [asyncio.ensure_future(batcher.embed_one(f"t-{i}")) for i in (1, 2)]
    await wait_until(lambda: batcher.queued == 2, 5, "two texts queued")
    third = asyncio.ensure_future(batcher.embed_one("t-3"))
    await asyncio.wait_for(asyncio.gather(*rest, third), 5)  # full: cut without the budget
    release.set()
    await asyncio.wait_for(first, 5)
    assert calls == [["t-0"], ["t-1", "t-2", "t-3"]]
    await batcher.close()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(RecordingModel(), max_batch_size=0)
    with pytest.raises(ValueError, match="concurrency"):
        MicroBatcher(RecordingModel(), concurrency=0)


async def test_saturated_while_more_batches_wait_than_the_streams_take_next() -> None:
    release, entered = threading.Event(), threading.Event()

    def held(texts: list[str]) -> np.ndarray:
        entered.set()
        release.wait(5)
        return np.zeros((len(texts), 1), dtype=np.float32)

    # one stream: saturated from three full batches waiting, (1 + 2) x 4 texts
    batcher = MicroBatcher(held, max_batch_size=4, max_latency_s=0.0, concurrency=1)
    first = asyncio.gather(*(batcher.embed_one(f"t-{i}") for i in range(4)))
    await wait_until(entered.is_set, 1, "the first batch in the model")
    assert not batcher.saturated
    rest = asyncio.gather(*(batcher.embed_one(f"t-{i}") for i in range(4, 15)))
    await wait_until(lambda: batcher.queued == 11, 1, "eleven texts queued")
    assert not batcher.saturated  # a burst the next calls take
    more = asyncio.ensure_future(batcher.embed_one("t-15"))
    await wait_until(lambda: batcher.queued == 12, 1, "a twelfth text queued")
    assert batcher.saturated  # a backlog: the model is the limit
    release.set()
    await asyncio.wait_for(asyncio.gather(first, rest, more), 5)
    assert not batcher.saturated
    await batcher.close()


def test_a_batch_takes_the_oldest_text_and_those_nearest_to_it_in_length() -> None:
    lengths = [10, 3, 11, 30, 9, 10, 2, 31]
    assert pick_batch(lengths, 4, window=8) == [0, 2, 4, 5]  # 10 with 11, 9, 10
    assert pick_batch(lengths, 4, window=4) == [0, 1, 2, 3]  # only the 4 oldest looked at
    assert pick_batch(lengths[:3], 4, window=8) == [0, 1, 2]  # no more than a batch: all
    assert pick_batch([5, 7, 3, 7], 2, window=4) == [0, 1]  # a tie: the older one


async def test_batches_cut_from_a_backlog_group_texts_of_about_the_same_length() -> None:
    model = RecordingModel()
    release, entered = threading.Event(), threading.Event()

    def held(texts: list[str]) -> np.ndarray:
        entered.set()
        release.wait(5)
        return model(texts)

    batcher = MicroBatcher(
        held,
        max_batch_size=4,
        max_latency_s=0.0,
        length=lambda text: len(text.split("-")[0]),
    )
    first = asyncio.ensure_future(batcher.embed_one("x-0"))  # holds the model
    await wait_until(entered.is_set, 1, "the first batch in the model")
    texts = [f"{'a' * size}-{i}" for i, size in enumerate([5, 1, 1, 5, 9, 5, 1, 9, 5], 1)]
    rest = asyncio.gather(*(batcher.embed_one(t) for t in texts))
    await wait_until(lambda: batcher.queued == len(texts), 1, "the backlog queued")
    release.set()
    vectors = await asyncio.wait_for(rest, 5)
    await first
    assert [float(v[0]) for v in vectors] == list(range(1, 10))  # each its own vector
    batches = [[t.split("-")[0] for t in texts] for _, texts in model.calls[1:]]
    assert batches == [["a" * 5] * 4, ["a", "a", "a" * 9, "a"], ["a" * 9]]  # arrival order
    assert batcher.stats.tokens == 1 + sum(len(t.split("-")[0]) for t in texts)
    assert batcher.stats.padded_tokens == 1 + 4 * 5 + 4 * 9 + 9
    await batcher.close()


async def test_texts_submitted_together_get_their_own_vectors() -> None:
    batcher = MicroBatcher(RecordingModel(), max_batch_size=4, max_latency_s=0.01)
    futures = batcher.submit_many([f"t-{i}" for i in range(10)])
    assert [float((await f)[0]) for f in futures] == [float(i) for i in range(10)]
    assert batcher.submit_many([]) == []
    await batcher.close()
