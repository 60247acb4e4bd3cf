"""Candidate new categories: novel listings gathered per platform.

``novel-listings`` (keyed by platform) -> the platform's owner: each listing joins the nearest
candidate within the platform's reach, or starts one (``metaguide/classify/feedback.py``).
Each candidate is a key of the ``candidates`` table (platform and candidate id: its running
sum, size and first members; changelogged, so a restart keeps them), read into memory once per
platform. A candidate with at least ``candidate_min_members`` members is sent to
``candidate-categories`` whenever a batch made it grow: its members and the titles that
joined nearest its centre, for a person to name with one bulk label.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import StreamT

from metaguide.classify.feedback import Candidate, CandidateClusters
from metaguide.classify.prototypes import CategoryPrototypes, prototype_key, split_key
from metaguide.contracts.codec import encode_json
from metaguide.contracts.internal import NovelListing
from metaguide.contracts.records import candidate_record
from workers.context import WorkerContext
from workers.tables import table, write_in_partition

__all__ = ["register_candidates"]

log = logging.getLogger("metaguide.candidates")

NEAREST_TITLES = 5
BATCH = 100  # novel listings gathered at once
BATCH_WITHIN_S = 0.2


def register_candidates(ctx: WorkerContext, prototypes: CategoryPrototypes) -> Any:
    """The candidates table and the agent that fills it; returns the table."""
    app: Any = ctx.app
    settings = ctx.settings
    candidates = table(
        app,
        "candidates",
        settings.partitions,
        "platform/candidate -> running sum, size, first members (candidate categories)",
    )
    by_platform: dict[str, CandidateClusters] = {}  # read from the table once per platform

    def clusters_of(platform: str) -> CandidateClusters:
        clusters = by_platform.get(platform)
        if clusters is None:
            own = [
                Candidate.from_json(value)
                for key, value in candidates.items()
                if value is not None and split_key(key.decode())[0] == platform
            ]
            clusters = by_platform[platform] = CandidateClusters(own)
        return clusters

    @app.agent(ctx.topics["novel_listings"], name="candidate-categories")
    async def candidates_agent(stream: StreamT) -> None:
        batches = stream.take_events(BATCH, within=BATCH_WITHIN_S)  # type: ignore[attr-defined]
        async for events in batches:
            grown: dict[str, tuple[int, Candidate]] = {}
            for event in events:
                partition = event.message.partition  # the platform's: where its state lives
                try:
                    listing = NovelListing.decode(event.value)
                    candidate = _gather(listing, partition)
                except Exception as exc:
                    await ctx.dead_letter(event.message, "bad_novel_listing", repr(exc))
                    continue
                if candidate is not None:
                    grown[prototype_key(listing.platform, candidate.id)] = (partition, candidate)
            for key, (partition, candidate) in grown.items():
                write_in_partition(candidates, partition, key.encode(), candidate.to_json())
                if candidate.size >= settings.candidate_min_members:
                    await _publish(split_key(key)[0], candidate)
            ctx.metrics.candidate_categories.set(len(candidates))

    def _gather(listing: NovelListing, partition: int) -> Candidate | None:
        """The candidate the listing joined; None when it was in one already."""
        clusters = clusters_of(listing.platform)
        radius = prototypes.novelty(listing.platform).radius(settings.candidate_radius_quantile)
        size = {c.id: c.size for c in clusters.candidates}
        candidate = clusters.add(listing.item_id, listing.title, listing.embedding, radius)
        for gone in clusters.evicted:
            key = prototype_key(listing.platform, gone.id).encode()
            if candidates.data.pop(key, None) is not None:
                candidates.send_changelog(partition, key, None)  # a tombstone
        clusters.evicted.clear()
        return None if size.get(candidate.id) == candidate.size else candidate

    async def _publish(platform: str, candidate: Candidate) -> None:
        record = candidate_record(
            platform,
            candidate.id,
            [m[0] for m in candidate.members],
            candidate.nearest_titles(NEAREST_TITLES),
            candidate.size,
        )
        await ctx.produce(
            ctx.topic_name("candidate_categories"),
            f"{platform}/{candidate.id}".encode(),
            encode_json(record),
        )

    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        by_platform.clear()  # read again from the table, by whoever owns the platform now

    app.on_partitions_revoked.connect(on_revoked)
    return candidates
