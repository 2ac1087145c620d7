#!/usr/bin/env bash
# usage: $0 <LORA_RANK> <UNSHARED_RANK> <REDUCED_LORA_A_X> <REDUCED_LORA_B_X> <LEARNING_RATE> <SEED> <GPU_ID>  (see scripts/ft_pipeline.sh)
USAGE_NAME=$0 exec "$(dirname "$0")/scripts/ft_pipeline.sh" superni_mmlu "$@"
