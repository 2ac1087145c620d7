#!/usr/bin/env bash
# One fine-tune → merge → evaluate run of the PRoLoRA paper, for one training-set/benchmark pairing.
# The four root scripts (ft_llama2_7b_{superni_mmlu,flan_v2,cot_gsm8k,code}.sh) call this file.
#
#   scripts/ft_pipeline.sh <PAIRING> <LORA_RANK> <UNSHARED_RANK> <REDUCED_LORA_A_X> <REDUCED_LORA_B_X> \
#                          <LEARNING_RATE> <SEED> <GPU_ID>
#
#   PAIRING        superni_mmlu (SuperNI → MMLU 0-shot + TyDiQA-GP 1-shot) | flan_v2 (Flan v2 → BBH CoT + direct)
#                  | cot_gsm8k (CoT → GSM8K 8-shot) | code (Code Alpaca → HumanEval, n=20, T=0.1 and T=0.8)
#   LORA_RANK      r;  UNSHARED_RANK  u (ranks kept unshared);  REDUCED_LORA_A_X / _B_X  m / n (chunks of A / B)
#   GPU_ID         a CUDA device index, or `cpu`
#
# Steps: (1) python -m open_instruct.finetune (PRoLoRA on a 4-bit NF4 base, 1,024 examples held out for
# eval_loss), (2) python -m open_instruct.merge_lora into <run>/lora_merged (dequantised base + ΔW),
# (3) the pairing's evaluations on the merged model, into <run>/eval/<benchmark>/metrics.json.
# The run folder is $OUTPUT_ROOT/<set>_<YYYYmmdd-HHMMSS>_GPU_<g>_r_<r>_unshared_<u>_x_A<m>B<n>_lr_<lr>_sd_<seed>.
#
# Defaults are the paper's; each can be overridden by an environment variable:
#   MODEL=meta-llama/Llama-2-7b-hf   TRAIN_FILE=data/processed/<set>/<set>_data.jsonl   OUTPUT_ROOT=output
#   PEFT_METHOD=prolora (lora, vera and tied_lora use only LORA_RANK: pass 0 1 1 as u m n)
#   USE_QLORA=1   LORA_ALPHA=16   LORA_DROPOUT=0.1   MAX_SEQ_LENGTH=512
#   BATCH_SIZE=16   GRAD_ACC=1   MAX_STEPS=10000   LR_SCHEDULER=linear   WARMUP_RATIO=0.03   CLIP_GRAD_NORM=0.3
#   PAGED_OPTIMIZER=1 (bitsandbytes paged AdamW 32-bit)   GRADIENT_CHECKPOINTING=1   BF16=1 (0 when GPU_ID=cpu)
#   EVAL_SPLIT_SIZE=1024   EVAL_STEPS=1000   CHECKPOINTING_STEPS=1000   CHECKPOINTS_TOTAL_LIMIT=1   LOGGING_STEPS=10
#   RUN_EVAL=1   EVAL_DATA_DIR=data/eval   EVAL_MAX_EXAMPLES= (empty: all; else passed to each eval's own limit)
#   EVAL_BATCH_SIZE=16   PYTHON=python
# A gated base model needs a Hugging Face token: export HF_TOKEN (it is never written into any file).
# HumanEval runs model-written code: it only runs with HF_ALLOW_CODE_EVAL=1 exported.
set -euo pipefail

usage() {
  echo "usage: $(basename "${USAGE_NAME:-$0}") <LORA_RANK> <UNSHARED_RANK> <REDUCED_LORA_A_X> <REDUCED_LORA_B_X> <LEARNING_RATE> <SEED> <GPU_ID>" >&2
  echo "  e.g. $(basename "${USAGE_NAME:-$0}") 8 1 2 2 2e-4 42 0     (GPU_ID may be 'cpu'; see the header of scripts/ft_pipeline.sh)" >&2
}
fail() { echo "error: $*" >&2; exit 2; }

PAIRING=${1:-}
case "$PAIRING" in
  superni_mmlu) SET=superni;     DATA_NAME=super_ni ;;
  flan_v2)      SET=flan_v2;     DATA_NAME=flan_v2 ;;
  cot_gsm8k)    SET=cot;         DATA_NAME=cot ;;
  code)         SET=code_alpaca; DATA_NAME=code_alpaca ;;
  *) fail "unknown pairing '${PAIRING}' (superni_mmlu, flan_v2, cot_gsm8k, code)" ;;
esac
shift
if [ $# -ne 7 ]; then usage; exit 2; fi
LORA_RANK=$1; UNSHARED_RANK=$2; REDUCED_A=$3; REDUCED_B=$4; LEARNING_RATE=$5; SEED=$6; GPU_ID=$7
for name in LORA_RANK UNSHARED_RANK REDUCED_A REDUCED_B SEED; do
  [[ ${!name} =~ ^[0-9]+$ ]] || fail "$name must be a non-negative integer, got '${!name}'"
done
[[ $LEARNING_RATE =~ ^[0-9.]+([eE][-+]?[0-9]+)?$ ]] || fail "LEARNING_RATE must be a number, got '$LEARNING_RATE'"
[[ $GPU_ID =~ ^([0-9]+|cpu)$ ]] || fail "GPU_ID must be a device index or 'cpu', got '$GPU_ID'"

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-meta-llama/Llama-2-7b-hf}
TRAIN_FILE=${TRAIN_FILE:-data/processed/${DATA_NAME}/${DATA_NAME}_data.jsonl}
OUTPUT_ROOT=${OUTPUT_ROOT:-output}
PEFT_METHOD=${PEFT_METHOD:-prolora}
USE_QLORA=${USE_QLORA:-1}
LORA_ALPHA=${LORA_ALPHA:-16}
LORA_DROPOUT=${LORA_DROPOUT:-0.1}
MAX_SEQ_LENGTH=${MAX_SEQ_LENGTH:-512}
BATCH_SIZE=${BATCH_SIZE:-16}
GRAD_ACC=${GRAD_ACC:-1}
MAX_STEPS=${MAX_STEPS:-10000}
LR_SCHEDULER=${LR_SCHEDULER:-linear}
WARMUP_RATIO=${WARMUP_RATIO:-0.03}
CLIP_GRAD_NORM=${CLIP_GRAD_NORM:-0.3}
PAGED_OPTIMIZER=${PAGED_OPTIMIZER:-1}
GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-1}
EVAL_SPLIT_SIZE=${EVAL_SPLIT_SIZE:-1024}
EVAL_STEPS=${EVAL_STEPS:-1000}
CHECKPOINTING_STEPS=${CHECKPOINTING_STEPS:-1000}
CHECKPOINTS_TOTAL_LIMIT=${CHECKPOINTS_TOTAL_LIMIT:-1}
LOGGING_STEPS=${LOGGING_STEPS:-10}
RUN_EVAL=${RUN_EVAL:-1}
EVAL_DATA_DIR=${EVAL_DATA_DIR:-data/eval}
EVAL_MAX_EXAMPLES=${EVAL_MAX_EXAMPLES:-}
EVAL_BATCH_SIZE=${EVAL_BATCH_SIZE:-16}
if [ "$GPU_ID" = cpu ]; then
  export CUDA_VISIBLE_DEVICES=""
  BF16=${BF16:-0}
else
  export CUDA_VISIBLE_DEVICES=$GPU_ID
  BF16=${BF16:-1}
fi
[ -f "$TRAIN_FILE" ] || fail "training file $TRAIN_FILE not found (run scripts/prepare_train_data.sh, or set TRAIN_FILE)"

RUN_DIR="${OUTPUT_ROOT}/${SET}_$(date +%Y%m%d-%H%M%S)_GPU_${GPU_ID}_r_${LORA_RANK}_unshared_${UNSHARED_RANK}_x_A${REDUCED_A}B${REDUCED_B}_lr_${LEARNING_RATE}_sd_${SEED}"
MERGED_DIR="${RUN_DIR}/lora_merged"
echo "== ${PAIRING}: ${RUN_DIR}"

# 1. Fine-tune.
flags=()
[ "$USE_QLORA" = 1 ] && flags+=(--use_qlora)
[ "$PAGED_OPTIMIZER" = 1 ] && flags+=(--use_paged_optimizer)
[ "$GRADIENT_CHECKPOINTING" = 1 ] && flags+=(--gradient_checkpointing)
[ "$BF16" = 1 ] && flags+=(--bf16)
[ "$EVAL_SPLIT_SIZE" != 0 ] && flags+=(--eval_split_size "$EVAL_SPLIT_SIZE" --eval_steps "$EVAL_STEPS")
"$PYTHON" -m open_instruct.finetune \
  --model_name_or_path "$MODEL" --train_file "$TRAIN_FILE" --output_dir "$RUN_DIR" \
  --use_lora --peft_method "$PEFT_METHOD" --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA" \
  --unshared_r "$UNSHARED_RANK" --reduce_lora_A_x "$REDUCED_A" --reduce_lora_B_x "$REDUCED_B" \
  --lora_dropout "$LORA_DROPOUT" --max_seq_length "$MAX_SEQ_LENGTH" \
  --per_device_train_batch_size "$BATCH_SIZE" --gradient_accumulation_steps "$GRAD_ACC" \
  --learning_rate "$LEARNING_RATE" --lr_scheduler_type "$LR_SCHEDULER" --warmup_ratio "$WARMUP_RATIO" \
  --weight_decay 0 --max_train_steps "$MAX_STEPS" --clip_grad_norm "$CLIP_GRAD_NORM" --seed "$SEED" \
  --checkpointing_steps "$CHECKPOINTING_STEPS" --checkpoints_total_limit "$CHECKPOINTS_TOTAL_LIMIT" \
  --logging_steps "$LOGGING_STEPS" --with_tracking --report_to tensorboard --group_by_length "${flags[@]}"

# 2. Merge the adapter into the (dequantised) base.
merge_flags=()
[ "$USE_QLORA" = 1 ] && merge_flags+=(--qlora)
"$PYTHON" -m open_instruct.merge_lora --base_model_name_or_path "$MODEL" --lora_model_name_or_path "$RUN_DIR" \
  --output_dir "$MERGED_DIR" --save_tokenizer "${merge_flags[@]}"

# 3. Evaluate the merged model.
if [ "$RUN_EVAL" != 1 ]; then
  echo "RUN_EVAL=$RUN_EVAL: stopping after the merge; merged model in $MERGED_DIR"
  exit 0
fi
have_module() { "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
run_eval() {  # run_eval <module> <save subdir> <limit flag> [flags...]
  local module=$1 save=$2 limit_flag=$3
  shift 3
  if ! have_module "$module"; then
    echo "$module is not installed: stopping after the merge; merged model in $MERGED_DIR" >&2
    exit 0
  fi
  local limit=()
  [ -n "$EVAL_MAX_EXAMPLES" ] && limit=("$limit_flag" "$EVAL_MAX_EXAMPLES")
  echo "== $module → ${RUN_DIR}/eval/${save}"
  "$PYTHON" -m "$module" --model_name_or_path "$MERGED_DIR" --save_dir "${RUN_DIR}/eval/${save}" \
    --use_chat_format --eval_batch_size "$EVAL_BATCH_SIZE" "${limit[@]}" "$@"
}
case "$PAIRING" in
  superni_mmlu)
    run_eval eval.mmlu.run_eval mmlu --n_instances --data_dir "$EVAL_DATA_DIR/mmlu" --ntrain 0
    run_eval eval.tydiqa.run_eval tydiqa --max_num_examples_per_lang --data_dir "$EVAL_DATA_DIR/tydiqa" \
      --n_shot 1 --max_context_length 512 ;;
  flan_v2)
    run_eval eval.bbh.run_eval bbh_cot --max_num_examples_per_task --data_dir "$EVAL_DATA_DIR/bbh"
    run_eval eval.bbh.run_eval bbh_direct --max_num_examples_per_task --data_dir "$EVAL_DATA_DIR/bbh" --no_cot ;;
  cot_gsm8k)
    run_eval eval.gsm.run_eval gsm --max_num_examples --data_dir "$EVAL_DATA_DIR/gsm" --n_shot 8 ;;
  code)
    if [ "${HF_ALLOW_CODE_EVAL:-}" != 1 ]; then
      echo "HumanEval executes model-written code: export HF_ALLOW_CODE_EVAL=1 to run it; merged model in $MERGED_DIR" >&2
      exit 0
    fi
    humaneval="$EVAL_DATA_DIR/codex_humaneval/HumanEval.jsonl.gz"
    run_eval eval.codex_humaneval.run_eval codex_pass1 --max_num_examples --data_file "$humaneval" \
      --unbiased_sampling_size_n 20 --temperature 0.1 --eval_pass_at_ks 1 5 10 20
    run_eval eval.codex_humaneval.run_eval codex_pass10 --max_num_examples --data_file "$humaneval" \
      --unbiased_sampling_size_n 20 --temperature 0.8 --eval_pass_at_ks 10 ;;
esac
echo "== done: ${RUN_DIR}"
