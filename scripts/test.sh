#!/usr/bin/env bash
# The test command: set up (if needed), lint, check types and import boundaries, run the tests.
# Arguments go to pytest: `scripts/test.sh -m unit` is the quick tier (no broker, no model).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# the full data sets, where a checkout has them beside it (evaluations and benchmarks read them)
export METAGUIDE_DATA_DIR="${METAGUIDE_DATA_DIR:-$(cd .. && pwd)/shared/data}"
.venv/bin/ruff check metaguide workers tests bench
.venv/bin/ruff format --check metaguide workers tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest "$@"
