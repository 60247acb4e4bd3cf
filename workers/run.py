"""Run one worker as a process: ``metaguide worker``."""

from __future__ import annotations

import logging

import faust

from metaguide.config import Settings
from workers.app import create_worker

__all__ = ["run_worker"]

log = logging.getLogger("metaguide.worker")


def run_worker(settings: Settings) -> None:
    """Build the worker, serve metrics on their own port, and run until SIGTERM/SIGINT."""
    worker = create_worker(settings)
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
