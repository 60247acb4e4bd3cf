"""Candidate new categories: novel listings gathered per platform.

``novel-listings`` (keyed by platform) -> the platform's owner: each listing joins the nearest
candidate within the platform's radius, or starts one (``metaguide/classify/feedback.py``);
the candidates live in the ``candidates`` table (changelogged, so a restart keeps them), and a
candidate with at least ``candidate_min_members`` members is sent to ``candidate-categories``
each time it grows: its members and the titles that joined nearest its centre, for a person
to name with one bulk label.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import StreamT

from metaguide.classify.feedback import CandidateClusters
from metaguide.classify.prototypes import CategoryPrototypes
from metaguide.contracts.codec import encode_json
from metaguide.contracts.internal import NovelListing
from metaguide.contracts.records import candidate_record
from workers.context import WorkerContext
from workers.tables import table

__all__ = ["register_candidates"]

log = logging.getLogger("metaguide.candidates")

NEAREST_TITLES = 5


def register_candidates(ctx: WorkerContext, prototypes: CategoryPrototypes) -> Any:
    """The candidates table and the agent that fills it; returns the table."""
    app: Any = ctx.app
    settings = ctx.settings
    candidates = table(
        app,
        "candidates",
        settings.partitions,
        "platform -> candidate categories (running sum, members)",
    )

    @app.agent(ctx.topics["novel_listings"], name="candidate-categories")
    async def candidates_agent(stream: StreamT) -> None:
        async for event in stream.events():
            try:
                listing = NovelListing.decode(event.value)
                await _gather(listing)
            except Exception as exc:
                await ctx.dead_letter(event.message, "bad_novel_listing", repr(exc))

    async def _gather(listing: NovelListing) -> None:
        key = listing.platform.encode()
        clusters = CandidateClusters.from_json(candidates.get(key))
        radius = prototypes.novelty(listing.platform).radius(settings.candidate_radius_quantile)
        before = {c.id: len(c.members) for c in clusters.candidates}
        candidate = clusters.add(listing.item_id, listing.title, listing.embedding, radius)
        if before.get(candidate.id) == len(candidate.members):
            return  # already a member (redelivered) or the candidate is full
        candidates[key] = clusters.to_json()
        ctx.metrics.candidate_categories.set(
            sum(len(v) for v in candidates.values() if v is not None)
        )
        if len(candidate.members) >= settings.candidate_min_members:
            record = candidate_record(
                listing.platform,
                candidate.id,
                [m[0] for m in candidate.members],
                candidate.nearest_titles(NEAREST_TITLES),
            )
            await ctx.produce(
                ctx.topic_name("candidate_categories"),
                f"{listing.platform}/{candidate.id}".encode(),
                encode_json(record),
            )

    return candidates
