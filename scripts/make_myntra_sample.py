"""Rebuild metaguide/samples/myntra_sample.csv.gz from the full Myntra file (see its README)."""

import csv
import gzip
import random
import sys
from collections import defaultdict

SOURCE = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/myntra_styles.csv.gz"
TARGET = "metaguide/samples/myntra_sample.csv.gz"

with gzip.open(SOURCE, "rt", encoding="utf-8") as source:
    rows = list(csv.DictReader(source))
by_type: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
for row in rows:
    title = (row["productDisplayName"] or "").strip()
    if title and row["articleType"]:
        by_type[row["articleType"]].setdefault(title.casefold(), row)
rng = random.Random(20261129)
keep = []
for article_type in sorted(by_type):
    titles = sorted(by_type[article_type].values(), key=lambda r: int(r["id"]))
    if len(titles) < 8:
        continue
    rng.shuffle(titles)
    keep.extend(titles[:30])
keep.sort(key=lambda r: int(r["id"]))
with gzip.open(TARGET, "wt", encoding="utf-8", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(keep)
print(f"{len(keep)} rows, {len({r['articleType'] for r in keep})} article types -> {TARGET}")
