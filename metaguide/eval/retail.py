"""UCI Online Retail as listings and purchase clicks, with the data's known noise handled.

- rows without a CustomerID have no user: they count for nothing but the item's text;
- invoices starting with ``C`` are cancellations and rows with quantity <= 0 are returns or
  stock corrections: not purchases;
- stock codes that are not products (POST, DOT, M, C2, BANK CHARGES, AMAZONFEE, gift
  vouchers...) are left out: a product code is five digits and at most two letters;
- exact duplicate rows are kept once;
- a code with several descriptions takes its most frequent one among sold rows (price > 0),
  which skips the stock-keeping notes ("damaged", "?") that share the code.

Every skipped row is counted by reason in :attr:`RetailData.skipped`.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaguide.eval.myntra import read_csv_gz

__all__ = [
    "RETAIL_FILE",
    "SAMPLE_FILE",
    "SAMPLE_PREFIX",
    "Purchase",
    "RetailData",
    "load_online_retail",
    "listing_events",
    "click_events",
]

RETAIL_FILE = "online_retail.csv.gz"
SAMPLE_FILE = Path(__file__).resolve().parents[1] / "samples" / "online_retail_sample.csv.gz"
SAMPLE_PREFIX = "or-"  # the sample's item ids: stock codes overlap Myntra's numeric ids
PLATFORM = "online-retail"
_PRODUCT_CODE = re.compile(r"\d{5}[A-Za-z]{0,2}")


@dataclass(frozen=True, slots=True)
class Purchase:
    ts: float
    user_id: str
    item_id: str
    invoice: str
    line: int  # row number in the file: with the invoice, a stable event id
    country: str


@dataclass
class RetailData:
    items: dict[str, str]  # stock code -> description
    first_sold: dict[str, float]  # stock code -> first sale (any customer)
    purchases: list[Purchase]  # customer purchases in time order
    skipped: Counter[str] = field(default_factory=Counter)


@functools.lru_cache(maxsize=65536)
def _parse_ts(text: str) -> float:
    """UTC epoch seconds of an InvoiceDate (many rows share one: cached)."""
    return float(calendar.timegm(time.strptime(text.strip()[:16], "%Y-%m-%d %H:%M")))


def load_online_retail(path: str | Path) -> RetailData:
    descriptions: dict[str, Counter[str]] = defaultdict(Counter)
    first_sold: dict[str, float] = {}
    purchases: list[Purchase] = []
    skipped: Counter[str] = Counter()
    seen_rows: set[tuple[str, ...]] = set()
    for line, row in enumerate(read_csv_gz(path)):
        signature = tuple(row.values())
        if signature in seen_rows:
            skipped["duplicate_row"] += 1
            continue
        seen_rows.add(signature)
        code = row["StockCode"].strip().upper()
        if not _PRODUCT_CODE.fullmatch(code):
            skipped["not_a_product"] += 1
            continue
        description = " ".join((row["Description"] or "").split())
        try:
            quantity = int(row["Quantity"])
            price = float(row["UnitPrice"])
        except ValueError:
            skipped["bad_number"] += 1
            continue
        if description and price > 0:
            descriptions[code][description] += 1
        if row["InvoiceNo"].startswith("C"):
            skipped["cancellation"] += 1
            continue
        if quantity <= 0 or price <= 0:
            skipped["not_a_sale"] += 1
            continue
        ts = _parse_ts(row["InvoiceDate"])
        first_sold[code] = min(ts, first_sold.get(code, ts))
        customer = (row["CustomerID"] or "").strip()
        if not customer:
            skipped["no_customer"] += 1
            continue
        purchases.append(
            Purchase(ts, customer.removesuffix(".0"), code, row["InvoiceNo"], line, row["Country"])
        )
    items = {code: c.most_common(1)[0][0] for code, c in descriptions.items() if code in first_sold}
    kept = [p for p in purchases if p.item_id in items]
    skipped["no_description"] += len(purchases) - len(kept)
    kept.sort(key=lambda p: (p.ts, p.line))
    return RetailData(items, {c: first_sold[c] for c in items}, kept, skipped)


def listing_events(
    data: RetailData, platform: str = PLATFORM, *, prefix: str = "", before: float | None = None
) -> list[dict[str, Any]]:
    """One unlabelled ``listing.v1`` per product (first sold before ``before``), in order of
    first sale; item ids are ``prefix`` + stock code (ids must not collide with another
    platform's: the items table is keyed by item id)."""
    codes = sorted(
        (c for c in data.items if before is None or data.first_sold[c] < before),
        key=lambda c: (data.first_sold[c], c),
    )
    return [
        {
            "event_id": f"{platform}-listing-{code}",
            "platform": platform,
            "item_id": f"{prefix}{code}",
            "title": data.items[code],
            "ts": data.first_sold[code],
        }
        for code in codes
    ]


def click_events(
    data: RetailData, platform: str = PLATFORM, *, prefix: str = "", before: float | None = None
) -> list[dict[str, Any]]:
    """One ``click.v1`` purchase per invoice line (before ``before``), in invoice-date order."""
    return [
        {
            "event_id": f"{platform}-{p.invoice}-{p.line}",
            "platform": platform,
            "user_id": p.user_id,
            "item_id": f"{prefix}{p.item_id}",
            "action": "purchase",
            "ts": p.ts,
        }
        for p in data.purchases
        if before is None or p.ts < before
    ]
