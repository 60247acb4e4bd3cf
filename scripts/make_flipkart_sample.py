"""Make metaguide/samples/flipkart_sample.csv.gz, the demo's second platform (run once).

    .venv/bin/python scripts/make_flipkart_sample.py /path/to/flipkart_sample_1050.csv.gz

Every row of the 1,050-product Flipkart sample (CC BY-SA 4.0, PromptCloud), three of its
columns unchanged: uniq_id, product_name, product_category_tree.
"""

from __future__ import annotations

import csv
import gzip
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "metaguide" / "samples" / "flipkart_sample.csv.gz"
COLUMNS = ["uniq_id", "product_name", "product_category_tree"]


def main(src: str) -> None:
    with gzip.open(src, "rt", encoding="utf-8", newline="") as fh:
        rows = [{c: r[c] for c in COLUMNS} for r in csv.DictReader(fh)]
    with gzip.open(OUT, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} rows, {OUT.stat().st_size} bytes -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
