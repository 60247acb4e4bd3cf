"""Every benchmark and evaluation in one go, then docs/performance.md's benchmark block.

    scripts/setup.sh && scripts/bench-setup.sh
    .venv/bin/python bench/all.py [--quick]

Runs, each writing bench/results/<name>.json (and plots where there are):
  fewshot_compare  .venv-bench/bin/python bench/fewshot_compare.py  (SetFit needs .venv-bench)
  recommend        metaguide eval recommend --json
  transfer         metaguide eval transfer --json (meta-learning on unseen platforms)
  encoder          bench/encoder.py (listing path against the raw encoder)
  clicks           bench/clicks.py (click path against raw aiokafka)
  adaptation       bench/adaptation.py (new category, snapshot swap)
  scale            .venv-bench/bin/python bench/scale.py (memory and cost up to 1M users)
then bench/report.py. ``--quick`` runs smaller versions (a smoke test, not the figures).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / ".venv" / "bin" / "python"
BENCH = ROOT / ".venv-bench" / "bin" / "python"


def steps(quick: bool) -> list[tuple[str, list[str]]]:
    few = ["--episodes", "1", "--shots", "1", "5"] if quick else []
    clicks = ["--clicks", "5000", "--requests", "100"] if quick else []
    scale = ["--max-users", "10000", "--max-items", "10000"] if quick else []
    transfer = ["--transfer-episodes", "5"] if quick else ["--transfer-episodes", "60"]
    encoder = ["--n", "600", "--rounds", "1", "--load-seconds", "2"] if quick else []
    return [
        ("fewshot_compare", [str(BENCH), "bench/fewshot_compare.py", *few]),
        ("recommend", [str(MAIN), "-m", "metaguide.cli", "eval", "recommend", "--json"]),
        ("transfer", [str(MAIN), "-m", "metaguide.cli", "eval", "transfer", "--json", *transfer]),
        ("encoder", [str(MAIN), "bench/encoder.py", "--json", *encoder]),
        ("clicks", [str(MAIN), "bench/clicks.py", *clicks]),
        ("adaptation", [str(MAIN), "bench/adaptation.py"]),
        ("scale", [str(BENCH), "bench/scale.py", *scale]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="run these steps only")
    args = parser.parse_args()
    if not BENCH.exists():
        print("no .venv-bench: run scripts/bench-setup.sh first", file=sys.stderr)
        return 2
    timings = {}
    for name, cmd in steps(args.quick):
        if args.only and name not in args.only:
            continue
        started = time.monotonic()
        print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        if name in ("recommend", "transfer"):  # print their report on stdout
            out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE).stdout
            (ROOT / "bench" / "results" / f"{name}.json").write_bytes(out)
        else:
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        timings[name] = round(time.monotonic() - started)
        print(f"== {name} done in {timings[name]} s", file=sys.stderr, flush=True)
    subprocess.run([str(MAIN), "bench/report.py"], cwd=ROOT, check=True)
    print(f"all done: {timings} ({sum(timings.values())} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
