#!/usr/bin/env bash
# The test command: set up (if needed), lint, type-check, and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check metaguide workers tests bench
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
