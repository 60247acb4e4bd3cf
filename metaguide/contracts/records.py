"""Output records: a classification, a dead letter (``schemas/``)."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from metaguide.contracts.events import ListingEvent

__all__ = [
    "candidate_record",
    "classification_record",
    "dead_letter_of",
    "dead_letter_record",
    "review_record",
]

log = logging.getLogger("metaguide.dead_letters")


def _top_k(top_k: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"category": c, "score": round(s, 6)} for c, s in top_k]


def classification_record(
    listing: ListingEvent,
    top_k: list[tuple[str, float]],
    model_version: str,
    *,
    margin: float = 0.0,
    novelty: float = 0.0,
    novel: bool = False,
) -> dict[str, Any]:
    """The output for one unlabelled listing (``schemas/classification.v1.json``)."""
    return {
        "schema": "classification.v1",
        "event_id": listing.event_id,
        "platform": listing.platform,
        "item_id": listing.item_id,
        "top_k": _top_k(top_k),
        "confidence": round(top_k[0][1], 6) if top_k else 0.0,
        "margin": round(margin, 6),
        "novelty": round(novelty, 4),
        "novel": novel,
        "model_version": model_version,
        "listing_ts": listing.ts,
        "ts": time.time(),
    }


def review_record(
    listing: ListingEvent,
    top_k: list[tuple[str, float]],
    model_version: str,
    *,
    margin: float,
    novelty: float,
    priority: float,
) -> dict[str, Any]:
    """A request for a label (``schemas/review_request.v1.json``)."""
    return {
        "schema": "review_request.v1",
        "review_id": f"review:{listing.event_id}"[:128],
        "event_id": listing.event_id,
        "platform": listing.platform,
        "item_id": listing.item_id,
        "title": listing.title,
        "top_k": _top_k(top_k),
        "confidence": round(top_k[0][1], 6) if top_k else 0.0,
        "margin": round(margin, 6),
        "novelty": round(novelty, 4),
        "priority": round(priority, 6),
        "model_version": model_version,
        "ts": time.time(),
    }


def candidate_record(
    platform: str, candidate_id: str, item_ids: list[str], titles: list[str], size: int
) -> dict[str, Any]:
    """A candidate new category (``schemas/candidate_category.v1.json``)."""
    return {
        "schema": "candidate_category.v1",
        "platform": platform,
        "candidate_id": candidate_id,
        "size": size,
        "item_ids": item_ids,
        "titles": titles,
        "ts": time.time(),
    }


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def dead_letter_record(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    detail: str,
) -> dict[str, Any]:
    """A dead-letter record (``schemas/dead_letter.v1.json``) keeping the original bytes."""
    return {
        "schema": "dead_letter.v1",
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key_b64": _b64(key),
        "value_b64": _b64(value),
        "reason": reason,
        "detail": detail[:2000],
        "ts": time.time(),
    }


def dead_letter_of(message: Any, reason: str, detail: str) -> dict[str, Any]:
    """The dead-letter record of a consumed Kafka message (anything with topic, partition,
    offset, key and value), logged as a warning."""
    log.warning(
        "dead letter from %s[%s]@%s: %s: %s",
        message.topic,
        message.partition,
        message.offset,
        reason,
        detail[:200],
    )
    return dead_letter_record(
        source_topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        reason=reason,
        detail=detail,
    )
