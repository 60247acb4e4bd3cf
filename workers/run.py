"""Run one worker as a process (``metaguide worker``): process-wide tuning, then the app."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging

import faust
from threadpoolctl import ThreadpoolController

from metaguide.config import Settings
from metaguide.kafka.client import check_broker
from metaguide.meta.trainer import claim_state_encoder
from workers.app import create_worker

__all__ = ["run_worker", "tune_process"]

log = logging.getLogger("metaguide.worker")

GC_YOUNG_THRESHOLD = 50_000  # net allocations between two young collections (Python: 700)


@functools.cache
def tune_process() -> None:
    """Process-wide settings for a process that runs a worker, once (later calls do nothing).

    - numpy's BLAS on one thread: the event loop's products are small, and OpenBLAS's
      spinning threads took the cores the encoder's calls need.
    - What is alive once libraries and model are loaded is frozen out of the cyclic garbage
      collector's sight, and the young generation is collected less often: the click and
      listing paths allocate many short-lived containers and no cycles
      (docs/performance.md has the figures).
    """
    ThreadpoolController().select(internal_api="openblas").limit(limits=1)
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_worker(settings: Settings) -> None:
    """Build the worker, serve metrics on their own port, and run until SIGTERM/SIGINT."""
    # a wrong address fails here in seconds, with a message, not in Faust's retry loop
    check_broker(settings.broker_url.removeprefix("kafka://"))
    worker = create_worker(settings)
    # state built by another encoder is refused before anything reads it
    loop = asyncio.new_event_loop()  # its own: Faust's worker makes and keeps the main one
    try:
        claim = claim_state_encoder(settings, worker.encoder.model_id, worker.encoder.dim)
        loop.run_until_complete(claim)
    finally:
        loop.close()
    tune_process()
    server = worker.metrics.serve(settings.metrics_port, settings.metrics_host)
    log.info(
        "metaguide worker %s: broker %s (%s profile), model %s on %s, metrics :%d, web :%d",
        settings.app_id,
        settings.broker_url,
        settings.broker_profile,
        settings.model,
        getattr(worker.encoder, "device", "?"),
        settings.metrics_port,
        settings.web_port,
    )
    try:
        faust.Worker(worker.app, loglevel=settings.log_level.upper()).execute_from_commandline()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
