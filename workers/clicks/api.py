"""The recommendation API: a user's top-k, over HTTP or the ``recommendation-requests`` topic.

``GET /recommendations/{platform}/{user_id}?k=10`` is routed by Faust to the worker that owns
the user's partition of ``user-updates``, which holds the profile. Candidates come from every
worker's replica of the ``items`` changelog (``catalog``, workers/catalog.py) and their
statistics from the ``platform-summaries`` GlobalTable.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from faust.types import EventT

from metaguide.contracts.codec import encode_json
from metaguide.contracts.events import (
    check_key,
    check_platform,
    check_user_id,
    decode_recommendation_request,
    parse_k,
)
from metaguide.contracts.internal import Item
from metaguide.errors import SchemaViolation
from metaguide.meta.snapshots import BASE_MODEL_VERSION
from metaguide.recommend.profiles import user_key
from metaguide.recommend.scoring import (
    Catalog,
    RecommendConfig,
    popularity_at,
    recommend,
    user_weight,
)
from workers.clicks.profiles import UserProfiles
from workers.clicks.summaries import Summaries
from workers.context import WorkerContext

__all__ = ["Recommender", "RequestError"]

CATALOG_REFRESH_S = 1.0  # a platform's candidates are rebuilt at most this often


@dataclass
class _CachedCatalog:
    built: float
    clock: float
    catalog: Catalog


class RequestError(Exception):
    """A request that cannot be answered: its HTTP status and reason code."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


class Recommender:
    """Scores a user's candidates where the user's profile lives."""

    def __init__(
        self,
        ctx: WorkerContext,
        profiles: UserProfiles,
        catalog: dict[bytes, Any],
        summaries: Summaries,
        config: RecommendConfig,
    ) -> None:
        self.ctx = ctx
        self.profiles = profiles
        self.catalog = catalog  # item_id -> the items table's value, every partition's
        self.summaries = summaries
        self.config = config
        self._catalogs: dict[str, _CachedCatalog] = {}

    def catalog_for(self, platform: str) -> _CachedCatalog | None:
        """The platform's candidates, rebuilt from the global tables at most once a second."""
        cached = self._catalogs.get(platform)
        if cached is not None and time.monotonic() - cached.built < CATALOG_REFRESH_S:
            return cached
        records = [r for r in list(self.summaries.replica.values()) if r["platform"] == platform]
        rows = []
        clock = 0.0
        for key, raw in list(self.catalog.items()):
            item = Item.decode(raw)
            if item.platform == platform:
                rows.append((key.decode(), item.vector, float(item.ts)))
                clock = max(clock, float(item.ts))
        if not rows:
            return None
        clock = max([clock] + [r["clock"] for r in records if r["kind"] == "pop"])
        half_life = self.config.popularity_half_life_s
        popularity: dict[str, float] = defaultdict(float)
        purchases: dict[str, tuple[int, int]] = {}
        for record in records:
            if record["kind"] == "pop":
                for item_id, value in record["items"].items():
                    popularity[item_id] += popularity_at((value, record["clock"]), clock, half_life)
            else:
                for item_id, (n, r) in record["items"].items():
                    n0, r0 = purchases.get(item_id, (0, 0))
                    purchases[item_id] = (n0 + n, r0 + r)
        catalog = Catalog.build(rows, popularity, purchases, now=clock, config=self.config)
        cached = _CachedCatalog(time.monotonic(), clock, catalog)
        self._catalogs[platform] = cached
        return cached

    def recommend_for(self, platform: str, user_id: str, k: int) -> dict[str, Any]:
        """A user's top-k as a ``recommendation.v1`` record (served where the user lives)."""
        cached = self.catalog_for(platform)
        if cached is None:
            raise RequestError(404, "unknown_platform", f"no items are listed on {platform!r}")
        profile = self.profiles.profile(user_key(platform, user_id).encode())
        now = max(cached.clock, profile.last_ts)
        top = recommend(profile, cached.catalog, k, now=now, config=self.config)
        return {
            "schema": "recommendation.v1",
            "platform": platform,
            "user_id": user_id,
            "items": [{"item_id": i, "score": round(s, 6)} for i, s in top],
            # scored in base space: no snapshot's adapter takes part in recommendations yet
            "model_version": BASE_MODEL_VERSION,
            "clicks": profile.clicks,
            "user_weight": round(user_weight(profile.clicks, self.config), 4),
            "served_by": str(self.ctx.app.conf.canonical_url).rstrip("/"),
            "ts": time.time(),
        }

    def http_recommendations(
        self, platform: str, user_id: str, k_raw: str
    ) -> tuple[int, dict[str, Any]]:
        """(status, body) for the HTTP view: 400 for bad input, 404 for an unknown platform."""
        started = time.perf_counter()
        try:
            try:
                check_platform(platform)
                check_user_id(user_id)
                k = parse_k(k_raw, self.ctx.settings.recommend_max_k)
            except SchemaViolation as exc:
                raise RequestError(400, exc.reason, exc.detail) from None
            body = self.recommend_for(platform, user_id, k)
        except RequestError as exc:
            self.ctx.metrics.recommendation_requests.labels("http", exc.reason).inc()
            return exc.status, {"error": exc.reason, "detail": exc.detail}
        self.ctx.metrics.recommendation_requests.labels("http", "ok").inc()
        self.ctx.metrics.recommendation_seconds.labels("http").observe(
            time.perf_counter() - started
        )
        return 200, body

    async def answer_request(self, event: EventT) -> None:
        """A request from the recommendation-requests topic, answered on ``recommendations``."""
        message = event.message
        started = time.perf_counter()
        try:
            request = decode_recommendation_request(
                message.value, self.ctx.settings.recommend_max_k
            )
            check_key(message.key, request.user_id, "user_id")
        except SchemaViolation as exc:
            self.ctx.metrics.recommendation_requests.labels("topic", exc.reason).inc()
            await self.ctx.dead_letter(message, exc.reason, exc.detail)
            return
        try:
            body = self.recommend_for(request.platform, request.user_id, request.k)
        except RequestError as exc:
            self.ctx.metrics.recommendation_requests.labels("topic", exc.reason).inc()
            await self.ctx.dead_letter(message, exc.reason, exc.detail)
            return
        body["request_id"] = request.request_id
        await self.ctx.topics["recommendations"].send(
            key=request.user_id.encode(), value=encode_json(body)
        )
        self.ctx.metrics.recommendation_requests.labels("topic", "ok").inc()
        self.ctx.metrics.recommendation_seconds.labels("topic").observe(
            time.perf_counter() - started
        )
