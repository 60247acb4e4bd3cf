"""What a change to an item does to the prototypes: the moves of its embedding.

An item contributes its base embedding (fp16, as the ``items`` table stores it) to the
prototype of its current label, and to no other. So a prototype is always the mean of the
embeddings of the items labelled with it now, whatever the history: when an item's label or
embedding changes (a correction, a re-listing), its old contribution is taken out of the old
prototype and its new one added to the new prototype. Taking out exactly what was added keeps
the sums exact; a category whose count drops to zero is no longer scored.

The worker (``workers/listings.py``, ``workers/labels.py``) and the feedback evaluation
(``metaguide/eval/feedback.py``) apply labels through these functions.
"""

from __future__ import annotations

import numpy as np

from metaguide.classify.prototypes import CategoryPrototypes
from metaguide.contracts.internal import CategoryUpdate, Item

__all__ = ["OUT_SUFFIX", "apply_moves", "moves", "relabelled"]

OUT_SUFFIX = "/out"  # the id of the update that takes an event's item out of its old category


def _contribution(item: Item | None) -> tuple[str, str, bytes] | None:
    """(platform, category, fp16 embedding) an item adds to a prototype, if labelled."""
    if item is None or item.category is None:
        return None
    return item.platform, item.category, item.emb


def moves(
    item_id: str,
    before: Item | None,
    after: Item,
    nearest_d2: float | None = None,
) -> list[CategoryUpdate]:
    """The category updates that take ``item_id`` from ``before`` (None: not stored yet) to
    ``after``, which the event ``after.src`` made. ``nearest_d2`` (the embedding's
    distance to the nearest prototype, as the listing arrived) goes with the addition.

    Idempotent across redelivery: the updates' ids derive from that event's id (the owner
    skips an id it applied), and an event that ``before`` already records (its updates were
    delivered before the item was stored) moves nothing.
    """
    event_id = after.src
    if before is not None and before.src == event_id:
        return []
    old, new = _contribution(before), _contribution(after)
    if old == new:
        return []
    out = []
    if old is not None and before is not None:
        platform, category, _ = old
        out.append(
            CategoryUpdate(event_id + OUT_SUFFIX, platform, category, before.vector, -1, item_id)
        )
    if new is not None:
        platform, category, _ = new
        if nearest_d2 is not None and not np.isfinite(nearest_d2):
            nearest_d2 = None  # the platform's first prototype: nothing was near
        out.append(
            CategoryUpdate(event_id, platform, category, after.vector, 1, item_id, nearest_d2)
        )
    return out


def relabelled(item: Item, category: str | None, event_id: str) -> Item:
    """The item with a new label (None: no label) set by the event ``event_id``."""
    return item._replace(category=category, src=event_id)


def apply_moves(prototypes: CategoryPrototypes, updates: list[CategoryUpdate]) -> int:
    """Apply updates to prototypes in one process (the evaluation, tests); returns how many
    were applied (not skipped as already seen)."""
    applied = 0
    for u in updates:
        count = prototypes.update_one(
            u.platform, u.category, u.embedding, u.event_id, u.sign, u.nearest_d2
        )
        applied += count is not None
    return applied
