"""docs/performance.md's benchmark block is exactly what bench/report.py prints from
bench/results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_block_matches_the_results() -> None:
    run = subprocess.run(
        [sys.executable, "bench/report.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_the_block_names_every_result_it_shows() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import report

    text = report.render()
    assert "raw encoder" in text and "raw aiokafka" in text
    if (ROOT / "bench" / "results" / "recommend.json").exists():
        assert "MeLU-style" in text
