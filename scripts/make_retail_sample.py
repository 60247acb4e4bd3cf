"""Make metaguide/samples/online_retail_sample.csv.gz, the demo's click streams (run once).

    .venv/bin/python scripts/make_retail_sample.py /path/to/online_retail.csv.gz

From UCI Online Retail (CC BY 4.0): the rows of the last ten weeks (2011-10-01 on) of a seeded
random 300 of the customers who bought in that window both before and after 2011-11-15 (the
demo's cut-off, so each has a history and held-out purchases), plus 100 customers first seen
after the cut-off (cold-start users). Every row of theirs in the window is kept as it is, with
the original columns, so the project's loader reads the sample like the full file.
"""

from __future__ import annotations

import csv
import gzip
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "metaguide" / "samples" / "online_retail_sample.csv.gz"
START, CUTOFF = "2011-10-01", "2011-11-15"
SEED = 20261203


def main(src: str) -> None:
    with gzip.open(src, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r["InvoiceDate"] >= START and (r["CustomerID"] or "").strip()]
    before = {r["CustomerID"] for r in rows if r["InvoiceDate"] < CUTOFF}
    after = {r["CustomerID"] for r in rows if r["InvoiceDate"] >= CUTOFF}
    rng = random.Random(SEED)
    both = sorted(before & after)
    new = sorted(after - before)
    chosen = set(rng.sample(both, 300)) | set(rng.sample(new, 100))
    kept = [r for r in rows if r["CustomerID"] in chosen]
    with gzip.open(OUT, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    print(f"{len(kept)} rows, {len(chosen)} customers, {OUT.stat().st_size} bytes -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
