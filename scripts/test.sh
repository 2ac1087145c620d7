#!/usr/bin/env bash
# Set up .venv/ (idempotent) and run the test suite. Extra arguments go to pytest (e.g. -k prolora, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_vllm.sh  # .venv-vllm/: the tests marked `vllm` run a real vLLM engine from it
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .  # lint first (configuration in pyproject.toml [tool.ruff]); .venv* is excluded
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
