"""The profile agent: joined clicks folded into their users' preference prototypes.

In the user's partition of ``user-updates``: each click is applied at once (the API sees
it), idempotent by event id; a changed profile is changelogged at most once per
``profile_write_interval_s`` (write-behind, as Kafka Streams' record cache does), and the
packs are acked only after that write. Purchases and repeat purchases are counted per item
for the partition's summary, written with the profiles.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

import numpy as np
from faust.types import EventT, StreamT

from metaguide.contracts.codec import decode_json, encode_json, vector_from_b64
from metaguide.contracts.internal import decode_user_update_pack
from metaguide.recommend.profiles import UserProfile, user_key
from metaguide.recommend.scoring import RecommendConfig
from workers.clicks.summaries import SUMMARY_MAX_ITEMS, Summaries
from workers.context import WorkerContext

__all__ = ["UserProfiles"]

VECTOR_CACHE_SIZE = 10_000  # decoded item embeddings kept: about 25 MB


class UserProfiles:
    """The profiles of this worker's user partitions (``users`` table)."""

    def __init__(
        self, ctx: WorkerContext, users: Any, summaries: Summaries, config: RecommendConfig
    ) -> None:
        self.ctx = ctx
        self.users = users  # in memory a UserProfile, on the changelog its state's JSON bytes
        self.summaries = summaries
        self.config = config
        self._vectors: dict[str, np.ndarray] = {}
        # profiles changed since the last write (key -> partition), purchase summaries to
        # publish with them, and the packs to ack after that write
        self._dirty_profiles: dict[bytes, int] = {}
        self._dirty_purchases: set[tuple[int, str]] = set()
        self._unwritten: list[tuple[StreamT, EventT]] = []
        self._written_at = 0.0

    async def apply_packs(self, stream: StreamT, events: list[EventT]) -> tuple[int, int]:
        """Fold a batch of joined-click packs into the users' profiles; (applied, duplicates)."""
        applied = duplicates = 0
        profile_config = self.config.profile
        for event in events:
            message = event.message
            partition = message.partition
            try:
                rows, embs = decode_user_update_pack(message.value)
            except (ValueError, KeyError, TypeError) as exc:
                await self.ctx.dead_letter(message, "bad_pack", repr(exc))
                continue
            purchases = self.summaries.of_partition("rep", partition)
            for row in rows:
                key = user_key(row.platform, row.user_id).encode()
                profile = self.profile(key)
                repeat = row.item_id in profile.bought
                if not profile.apply(
                    self._vector(embs[row.item_id]),
                    action=row.action,
                    ts=row.ts,
                    event_id=row.event_id,
                    item_id=row.item_id,
                    config=profile_config,
                ):
                    duplicates += 1
                    continue
                applied += 1
                # (self._dirty_*, not locals: a timed write at an await above swaps them)
                if key not in self._dirty_profiles:
                    self._dirty_profiles[key] = partition
                    self.users.data[key] = profile  # new users: in the table from now on
                if row.action == "purchase":
                    counts = purchases.setdefault(row.platform, {})
                    n, r = counts.get(row.item_id, (0, 0))
                    counts[row.item_id] = (n + 1, r + int(repeat))
                    self._dirty_purchases.add((partition, row.platform))
        metrics = self.ctx.metrics
        metrics.user_updates.inc(applied)
        if duplicates:
            metrics.duplicates_skipped.labels(self.ctx.topic_name("user_updates")).inc(duplicates)
        self._unwritten.extend((stream, event) for event in events)
        if time.monotonic() - self._written_at >= self.ctx.settings.profile_write_interval_s:
            await self.write_profiles()
        return applied, duplicates

    async def write_profiles(self, *, ack: bool = True) -> None:
        """Changelog every profile changed since the last write (once each), then the
        purchase summaries, then ack the packs that changed them."""
        self._written_at = time.monotonic()
        if not (self._unwritten or self._dirty_profiles or self._dirty_purchases):
            return
        dirty, self._dirty_profiles = self._dirty_profiles, {}
        purchased, self._dirty_purchases = self._dirty_purchases, set()
        unwritten, self._unwritten = self._unwritten, []
        data = self.users.data
        for key, partition in dirty.items():
            profile = data.get(key)
            if isinstance(profile, UserProfile):  # not dropped by a rebalance meanwhile
                self.users.send_changelog(partition, key, encode_json(profile.to_state()))
        for partition, platform in purchased:
            counts = self.summaries.purchases.get(partition, {}).get(platform)
            if counts is not None:
                top = heapq.nlargest(SUMMARY_MAX_ITEMS, counts.items(), key=lambda kv: kv[1][0])
                self.summaries.publish(
                    "rep", platform, partition, {"items": {i: list(c) for i, c in top}}
                )
        if ack:
            for stream, event in unwritten:
                await stream.ack(event)

    def profile(self, key: bytes) -> UserProfile:
        """A user's profile. The users table holds live profiles as objects (decoded once,
        not once per batch) and recovered ones as the JSON bytes of their changelog."""
        value = self.users.data.get(key)
        if isinstance(value, UserProfile):
            return value
        profile = UserProfile.from_state(decode_json(value) if value else None)
        if value:
            self.users.data[key] = profile  # the same state: nothing to changelog
        return profile

    def _vector(self, b64: str) -> np.ndarray:
        """An item embedding from its base64, decoded once while it is among the last
        ``VECTOR_CACHE_SIZE`` seen (keyed by the base64: a changed embedding is a new key)."""
        vector = self._vectors.get(b64)
        if vector is None:
            vector = self._vectors[b64] = vector_from_b64(b64)
            if len(self._vectors) > VECTOR_CACHE_SIZE:
                del self._vectors[next(iter(self._vectors))]  # the oldest
        return vector
