#!/usr/bin/env bash
# Set up .venv/ (idempotent) and run the test suite. Extra arguments go to pytest (e.g. -k prolora, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
