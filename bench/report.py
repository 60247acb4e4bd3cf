"""Compose bench/results/*.json into docs/performance.md's benchmark block (between its
markers).

    python bench/report.py            # rewrite the block from the JSON files
    python bench/report.py --check    # exit 1 if the block differs from the JSON

Every figure in that block is printed from a JSON file written by a benchmark run, so the
docs cannot drift from the results (tests/unit/test_report.py runs --check).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TARGET = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ci(cell: dict[str, float]) -> str:
    return f"{cell['mean']:.3f} ± {cell['ci95']:.3f}"


def fewshot_section(r: dict[str, Any]) -> list[str]:
    methods = ["raw_prototypes", "maml_adapter", "logistic_regression", "setfit"]
    lines = [
        "Few-shot classification, all-way, same episodes for every system "
        f"({r['episodes']} per cell; `bench/fewshot_compare.py`):",
        "",
        "| data set | shots | metaguide raw prototypes | metaguide MAML adapter "
        "| logistic regression | SetFit | SetFit training s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, res in r["results"].items():
        for k in r["shots"]:
            row = res[f"{k}-shot"]
            cells = " | ".join(_ci(row[m]) for m in methods)
            lines.append(
                f"| {name} ({row['n_way']}-way) | {k} | {cells} | {row['setfit_train_seconds']} |"
            )
    t = r["time_to_new_category_s"]
    c = r["training_compute_s"]
    lines += [
        "",
        f"A brand-new category is usable after {t['metaguide'] * 1000:.0f} ms in metaguide "
        f"(embed its 5 titles, insert them) against {t['setfit_retrain_5shot']:.0f} s for "
        f"SetFit (retrain on the 5-shot support set): {t['ratio'] * 100:.3f}% of SetFit's time. "
        f"Training compute: metaguide's MAML meta-training ran once, "
        f"{c['metaguide_maml_meta_training_once']:.0f} s; SetFit trained "
        f"{c['setfit_all_episodes']:.0f} s over all its episodes.",
        "",
        "![few-shot accuracy](../bench/results/fewshot_compare.png)",
    ]
    return lines


def recommend_section(r: dict[str, Any]) -> list[str]:
    k = r["k"]
    methods = r["test"]["methods"]
    groups = [g for g in next(iter(methods.values())) if "prior purchase" in g]
    lines = [
        f"Cold-start recommendation, Online Retail, temporal split at {r['cutoff']} "
        f"(`metaguide eval recommend --json`), HR@{k} / NDCG@{k} by purchases before the cut-off:",
        "",
        "| method | "
        + " | ".join(f"{g} ({methods['metaguide'][g]['users']})" for g in groups)
        + " |",
        "| --- | " + " | ".join("---" for _ in groups) + " |",
    ]
    for method, res in methods.items():
        cells = [
            f"{res[g][f'hr@{k}']['mean']:.3f} / {res[g][f'ndcg@{k}']['mean']:.3f}" for g in groups
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def throughput_section(
    enc: dict[str, Any] | None, clicks: dict[str, Any] | None, ceiling: dict[str, Any] | None
) -> list[str]:
    lines = [
        "| path | metaguide | baseline in the same run | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    if ceiling:
        lines.append(
            f"| listings with a model that costs nothing (`bench/ceiling.py`) | "
            f"{ceiling['listings_per_s']:,.0f} listings/s | raw aiokafka loop (consume, decode, "
            f"send one record each) {ceiling['raw_transport_per_s']:,.0f} listings/s | "
            f"{ceiling['ratio']:.3f} | ratio 0.3 |"
        )
    if enc:
        lines.append(
            f"| listings (`bench/encoder.py`) | {enc['pipeline_items_per_s']:.0f} items/s | raw "
            f"encoder {enc['raw_items_per_s']:.0f} items/s on the same grouped batches | "
            f"{enc['ratio']:.3f} | ratio 0.9 |"
        )
        if "raw_arrival_items_per_s" in enc:
            lines.append(
                "| listings against a raw loop that batches in arrival order | "
                f"{enc['pipeline_items_per_s']:.0f} items/s | raw encoder "
                f"{enc['raw_arrival_items_per_s']:.0f} items/s | {enc['ratio_arrival']:.3f} | |"
            )
    if enc and enc.get("latency"):
        lat = enc["latency"]
        lines.append(
            "| listing latency, event time to classification (`bench/encoder.py`) | "
            + "; ".join(
                f"{name.replace('_', ' ')} ({v['rate_per_s']}/s): p50 {v['p50_s']} s, "
                f"p99 {v['p99_s']} s"
                for name, v in lat.items()
            )
            + " | | | |"
        )
    if clicks:
        lines.append(
            f"| clicks (`bench/clicks.py`) | {clicks['pipeline_clicks_per_s']:,} clicks/s | raw "
            f"aiokafka {clicks['raw_clicks_per_s']:,} clicks/s | {clicks['ratio']:.3f} "
            "| 10,000 clicks/s |"
        )
    return lines


def scale_section(r: dict[str, Any]) -> list[str]:
    users = r["users"][-1]
    items = r["items"][-1]
    live = users.get("bytes_per_live_user")
    live_text = f"; {live:,} bytes once it clicks again (a live profile object)" if live else ""
    return [
        f"Memory (`bench/scale.py`): {users['bytes_per_user']:,} bytes per cold-start user "
        f"profile at rest ({users['total_mb']:,} MB for {users['users']:,} users{live_text}), "
        f"{items['bytes_per_item']:,} bytes per item ({items['total_mb']:,} MB for "
        f"{items['items']:,} items); one recommendation takes {items['recommend_ms_p50']} ms "
        "at that size (the candidate set is capped).",
        "",
        "![memory and scoring cost against scale](../bench/results/scale.png)",
    ]


def render() -> str:
    lines: list[str] = []
    few = _load("fewshot_compare")
    if few:
        lines += fewshot_section(few) + [""]
    rec = _load("recommend")
    if rec:
        lines += recommend_section(rec) + [""]
    lines += throughput_section(_load("encoder"), _load("clicks"), _load("ceiling")) + [""]
    scale = _load("scale")
    if scale:
        lines += scale_section(scale)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = TARGET.read_text()
    if BEGIN not in text or END not in text:
        print(f"{TARGET.name} has no {BEGIN} ... {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{render()}{END}{tail}"
    if args.check:
        if new != text:
            print(
                "docs/performance.md's benchmark block differs from bench/results: "
                "run bench/report.py",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
