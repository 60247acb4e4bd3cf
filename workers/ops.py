"""Operations on the worker: liveness and readiness endpoints, lag and recovery gauges.

- ``GET /healthz`` (liveness) is answered by the event loop itself: if the loop is stuck, the
  probe times out and Kubernetes restarts the pod. It checks nothing else, so a slow broker
  never gets a healthy worker killed.
- ``GET /readyz`` (readiness): partitions assigned, tables recovered, and the announced model
  snapshot loaded (the watcher has read the snapshots topic to its end). 503 with the failing
  checks until then.
- Every ``LAG_INTERVAL_S``: consumer lag per assigned input partition, committed offset to end
  offset, for the Faust group (listings, internal topics) and the click router's group (as
  the router process last reported it, workers/clicks/router.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from metaguide.kafka.client import kafka_client_options, lag_of
from workers.context import WorkerContext

__all__ = ["readiness", "register_ops"]

log = logging.getLogger("metaguide.ops")

LAG_INTERVAL_S = 10.0


def readiness(ctx: WorkerContext) -> dict[str, bool]:
    """Each readiness check by name (``/readyz``)."""
    app = ctx.app
    try:
        assigned = bool(app.consumer.assignment())
    except Exception:  # the consumer is not started yet
        assigned = False
    return {
        "partitions_assigned": assigned,
        "tables_recovered": app.tables.recovery.completed.is_set(),  # type: ignore[attr-defined]
        "model_loaded": "snapshots" in ctx.caught_up,
        "catalog_loaded": "catalog" in ctx.caught_up,
    }


def register_ops(ctx: WorkerContext, other_lag: Callable[[], dict[Any, int]]) -> None:
    """Health and readiness pages, and the lag and readiness gauges; ``other_lag`` adds the
    lag of consumers outside Faust (the click router's)."""
    app = ctx.app
    metrics = ctx.metrics

    @app.page("/healthz")
    async def healthz(view: Any, request: Any) -> Any:
        return view.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(view: Any, request: Any) -> Any:
        checks = readiness(ctx)
        ready = all(checks.values())
        return view.json({"ready": ready, "checks": checks}, status=200 if ready else 503)

    state: dict[str, Any] = {}

    @app.timer(interval=LAG_INTERVAL_S)
    async def report_lag() -> None:
        checks = readiness(ctx)
        metrics.tables_recovered.set(1 if checks["tables_recovered"] else 0)
        metrics.ready.set(1 if all(checks.values()) else 0)
        if not checks["partitions_assigned"]:
            return
        try:
            if "offsets" not in state:
                from aiokafka import AIOKafkaConsumer

                # a member of no group: it only reads the group's committed offsets
                state["offsets"] = AIOKafkaConsumer(
                    bootstrap_servers=ctx.settings.broker_url.removeprefix("kafka://"),
                    group_id=ctx.settings.app_id,
                    enable_auto_commit=False,
                    **kafka_client_options(ctx.settings),
                )
                await state["offsets"].start()
            inputs = [tp for tp in app.consumer.assignment() if not tp.topic.endswith("-changelog")]
            lags = await lag_of(state["offsets"], inputs)
            lags.update(other_lag())
        except Exception as exc:  # a rebalance or a broker hiccup: try again next time
            log.debug("consumer lag not computed: %r", exc)
            return
        metrics.consumer_lag.clear()
        for tp, lag in lags.items():
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_offsets_consumer(app: Any, **kwargs: Any) -> None:
        consumer = state.pop("offsets", None)
        if consumer is not None:
            await consumer.stop()
