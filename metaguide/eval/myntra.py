"""Real data sets as listing events: loading, title-disjoint few-shot splits.

Myntra's product names repeat (13,310 titles occur more than once) and often contain the
article type, so splits are made by title: a title is either a labelled example or a test
listing, never both.
"""

from __future__ import annotations

import csv
import gzip
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FLIPKART_FILE",
    "MYNTRA_FILE",
    "SAMPLE_FILE",
    "Listing",
    "FewShotSplit",
    "read_csv_gz",
    "load_flipkart",
    "load_myntra",
    "few_shot_split",
    "listing_event",
]

MYNTRA_FILE = "myntra_styles.csv.gz"
FLIPKART_FILE = "flipkart_sample_1050.csv.gz"
SAMPLE_FILE = Path(__file__).resolve().parents[1] / "samples" / "myntra_sample.csv.gz"


@dataclass(frozen=True, slots=True)
class Listing:
    """One product of a data set, before it becomes an event."""

    platform: str
    item_id: str
    title: str
    category: str
    attributes: dict[str, str]


def read_csv_gz(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a gzipped CSV file as dicts."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh)


def load_myntra(path: str | Path = SAMPLE_FILE, platform: str = "myntra") -> list[Listing]:
    """Myntra styles with a title and an article type, as listings."""
    out = []
    for row in read_csv_gz(path):
        title = (row.get("productDisplayName") or "").strip()
        category = (row.get("articleType") or "").strip()
        if not title or not category:
            continue
        attributes = {k: row[k] for k in ("gender", "baseColour", "season", "usage") if row.get(k)}
        out.append(Listing(platform, row["id"], title, category, attributes))
    return out


def load_flipkart(path: str | Path, depth: int = 2, platform: str = "flipkart") -> list[Listing]:
    """Flipkart products with a name, labelled by the first ``depth`` levels of their
    category path (the deeper levels are often brands or product names)."""
    out = []
    for row in read_csv_gz(path):
        tree = row["product_category_tree"].strip('[]"').split(" >> ")
        title = row["product_name"].strip()
        if len(tree) >= depth and title:
            out.append(Listing(platform, row["uniq_id"], title, " >> ".join(tree[:depth]), {}))
    return out


@dataclass(frozen=True)
class FewShotSplit:
    """Labelled examples (k per category) and test listings with titles disjoint from them."""

    labelled: list[Listing]
    test: list[Listing]
    categories: list[str]


def few_shot_split(
    listings: list[Listing],
    shots: int,
    *,
    seed: int = 0,
    max_test_per_category: int | None = None,
    min_test_per_category: int = 1,
) -> FewShotSplit:
    """Pick ``shots`` labelled titles per category; the test set holds only other titles.

    A category needs ``shots + min_test_per_category`` distinct titles to take part. One
    listing per title is kept on each side, so duplicates cannot inflate the test set.
    """
    rng = random.Random(seed)
    by_title: dict[str, Listing] = {}
    for listing in listings:
        by_title.setdefault(listing.title.casefold(), listing)
    titles_by_category: dict[str, list[Listing]] = defaultdict(list)
    for listing in by_title.values():
        titles_by_category[listing.category].append(listing)
    labelled: list[Listing] = []
    test: list[Listing] = []
    categories = []
    for category in sorted(titles_by_category):
        group = sorted(titles_by_category[category], key=lambda x: x.item_id)
        if len(group) < shots + min_test_per_category:
            continue
        rng.shuffle(group)
        categories.append(category)
        labelled.extend(group[:shots])
        rest = group[shots:]
        test.extend(rest if max_test_per_category is None else rest[:max_test_per_category])
    rng.shuffle(labelled)
    rng.shuffle(test)
    return FewShotSplit(labelled, test, categories)


def listing_event(listing: Listing, *, labelled: bool, ts: float | None = None) -> dict[str, Any]:
    """A ``listing.v1`` event for a data-set listing (the label only when ``labelled``)."""
    event: dict[str, Any] = {
        "event_id": f"{listing.platform}-{listing.item_id}",
        "platform": listing.platform,
        "item_id": listing.item_id,
        "title": listing.title,
        "attributes": listing.attributes,
        "ts": time.time() if ts is None else ts,
    }
    if labelled:
        event["category"] = listing.category
    return event
