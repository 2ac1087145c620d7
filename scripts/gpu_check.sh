#!/usr/bin/env bash
# The checks only a CUDA machine can make, in under 10 minutes, with a short report:
#
#   bash scripts/gpu_check.sh [report file, default output/gpu_check/report.md]
#
# 1. the dtype / bf16 / QLoRA tests, then the same code paths on the GPU: label-only loss and gradients against
#    the full computation in fp32 and bf16 autocast, and a few QLoRA (bitsandbytes NF4) + bf16 fine-tuning steps
#    of the packaged SmolLM2 through open_instruct.finetune;
# 2. the benchmarks: PRoLoRA vs LoRA training steps and layer, finetune's loop vs HF Trainer + LoRA;
# 3. the full-size mini_smollm2.yaml grid with one seed (resumable: a rerun continues it), then its summary.
# Each part has its own time limit; a part that fails or runs out of time is marked in the report and the rest
# still runs. Without a CUDA device it stops at once with exit status 2 and one error line.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=output/gpu_check
REPORT=${1:-$OUT/report.md}
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ ! -x "$PY" ]; then
  echo "error: $PY not found: run bash scripts/setup.sh first" >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: no CUDA device visible to torch (torch.cuda.is_available() is False); this check needs a GPU" >&2
  exit 2
fi
# The data and the packaged model are built on a machine with the package registries (a GPU box may have none):
#   python -m open_instruct.offline_data train --bigbench --output_dir data/processed  (and eval --output_dir data/eval)
#   python -m open_instruct.offline_assets --model     (cached under $PROLORA_CACHE, default ~/.cache/prolora)
for need in data/processed/asdiv/asdiv_data.jsonl data/processed/bigbench/bigbench_data.jsonl data/eval/bbh; do
  if [ ! -e "$need" ]; then
    echo "error: $need is missing: build the offline data first (see the comment above this check)" >&2
    exit 2
  fi
done
mkdir -p "$OUT" "$(dirname "$REPORT")"
LOG=$OUT/logs
mkdir -p "$LOG"
STARTED=$(date +%s)
{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
  echo "- device: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__,
                                                 "| CUDA", torch.version.cuda)')"
  echo
} > "$REPORT"

# part NAME SECONDS COMMAND...: run with a time limit, log to $LOG/NAME.log, one report line with status and time
part() {
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  local status="ok"
  [ $rc -eq 124 ] && status="TIMED OUT after ${limit}s"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="FAILED (exit $rc)"
  echo "- $name: $status, $(( $(date +%s) - t0 )) s (log: $LOG/$name.log)" >> "$REPORT"
  echo "$name: $status"
}

part tests 150 "$PY" -m pytest -q -p no:cacheprovider -k "bf16 or bfloat16 or dtype or qlora or label_only" \
  tests/test_prolora.py tests/test_tied_lora.py tests/test_prolora_qlora.py tests/test_finetune_speedups.py
tail -n 3 "$LOG/tests.log" | sed 's/^/    /' >> "$REPORT"

part cuda_paths 150 "$PY" - <<'EOF'
"""Label-only loss = full loss on the GPU (fp32 and bf16 autocast); QLoRA + bf16 finetune steps on SmolLM2."""
import subprocess, sys, tempfile
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from open_instruct.training.label_loss import CausalLMLoss
from open_instruct.offline_assets import smollm2_path

model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32).cuda(),
                       LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
ids = torch.randint(0, 49152, (4, 64), device="cuda")
labels = ids.clone()
labels[:, :48] = -100
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
for dtype in (None, torch.bfloat16):
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        a = CausalLMLoss(model)(model, batch)
        b = CausalLMLoss(model, label_only=False)(model, batch)
    tol = 1e-5 if dtype is None else 2e-2
    assert abs(a.item() - b.item()) <= tol * max(1.0, abs(b.item())), (dtype, a.item(), b.item())
    print(f"label-only loss {a.item():.6f} = full {b.item():.6f} ({dtype or 'fp32'})")
with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, "-m", "open_instruct.finetune", "--model_name_or_path", str(smollm2_path()),
           "--train_file", "data/processed/asdiv/asdiv_data.jsonl", "--output_dir", tmp, "--use_qlora",
           "--peft_method", "prolora", "--lora_rank", "8", "--unshared_r", "1", "--reduce_lora_A_x", "2",
           "--reduce_lora_B_x", "2", "--bf16", "--group_by_length", "--max_train_steps", "5",
           "--per_device_train_batch_size", "8", "--max_seq_length", "256", "--logging_steps", "1"]
    subprocess.run(cmd, check=True)
print("QLoRA + bf16 PRoLoRA fine-tuning on CUDA: ok")
EOF
tail -n 3 "$LOG/cuda_paths.log" | sed 's/^/    /' >> "$REPORT"

part bench_steps 120 "$PY" benchmarks/bench_finetune.py --device cuda --repeats 5 --steps 5 --batch_size 8
grep -E "tok/s|ratio" "$LOG/bench_steps.log" | sed 's/^/    /' >> "$REPORT"
part bench_layer 60 "$PY" benchmarks/bench_prolora_layer.py
tail -n 6 "$LOG/bench_layer.log" | sed 's/^/    /' >> "$REPORT"
part bench_vs_trainer 180 "$PY" benchmarks/bench_finetune.py --against trainer --device cuda --batch_size 8 \
  --examples 800 --long_examples 400
grep -E "x  |/ Trainer" "$LOG/bench_vs_trainer.log" | sed 's/^/    /' >> "$REPORT"

# The full-size grid, one seed: a small YAML that extends mini_smollm2.yaml (absolute path, so it can live in $OUT).
GRID_YAML=$OUT/mini_smollm2_1seed.yaml
printf 'extends: %s\nname: mini_smollm2_gpu_check\noutput_dir: %s\nseeds: [1]\n' \
  "$PWD/configs/experiments/mini_smollm2.yaml" "$OUT/mini_smollm2" > "$GRID_YAML"
LEFT=$(( 570 - ($(date +%s) - STARTED) ))
[ $LEFT -lt 60 ] && LEFT=60
part grid "$LEFT" "$PY" scripts/run_grid.py "$GRID_YAML"
"$PY" scripts/summarize_results.py "$OUT/mini_smollm2" --task mini > "$LOG/summary.log" 2>&1 && \
  { echo; echo "## mini_smollm2 grid, one seed"; echo; cat "$OUT/mini_smollm2/summary_mini.md"; } >> "$REPORT"
echo >> "$REPORT"
echo "total: $(( $(date +%s) - STARTED )) s" >> "$REPORT"
echo "report: $REPORT"
