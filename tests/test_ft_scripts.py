"""The four ft_llama2_7b_*.sh launchers and scripts/ft_pipeline.sh behind them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from finetune_helpers import REPO, make_tiny_checkpoint, write_toy_data

SCRIPTS = ["ft_llama2_7b_superni_mmlu.sh", "ft_llama2_7b_flan_v2.sh", "ft_llama2_7b_cot_gsm8k.sh",
           "ft_llama2_7b_code.sh"]


def bash(script: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(["bash", str(REPO / script), *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("script", SCRIPTS)
def test_wrong_argument_count_prints_usage(script):
    proc = bash(script, "8", "1", "2")
    assert proc.returncode == 2
    assert f"usage: {script} <LORA_RANK> <UNSHARED_RANK> <REDUCED_LORA_A_X> <REDUCED_LORA_B_X> " \
           "<LEARNING_RATE> <SEED> <GPU_ID>" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["8", "one", "2", "2", "2e-4", "42", "0"], "UNSHARED_RANK must be a non-negative integer, got 'one'"),
    (["8", "1", "2", "2", "fast", "42", "0"], "LEARNING_RATE must be a number, got 'fast'"),
    (["8", "1", "2", "2", "2e-4", "42", "gpu0"], "GPU_ID must be a device index or 'cpu', got 'gpu0'"),
])
def test_bad_arguments_are_named(args, message):
    proc = bash(SCRIPTS[0], *args)
    assert proc.returncode == 2 and message in proc.stderr


def test_missing_training_file_is_named(tmp_path):
    proc = bash(SCRIPTS[1], "8", "1", "2", "2", "2e-4", "42", "cpu", env={"TRAIN_FILE": str(tmp_path / "no.jsonl")})
    assert proc.returncode == 2 and f"training file {tmp_path / 'no.jsonl'} not found" in proc.stderr


def test_no_token_in_any_launcher():
    for script in [*SCRIPTS, "scripts/ft_pipeline.sh"]:
        text = (REPO / script).read_text()
        assert "hf_" not in text.replace("HF_", "") and "--token" not in text


@pytest.mark.slow
def test_superni_pipeline_trains_and_merges_a_tiny_model_on_cpu(tmp_path):
    # in_features divisible by 64: bitsandbytes' CPU 4-bit kernels want that (real models have it).
    model = make_tiny_checkpoint(tmp_path / "model", intermediate_size=128)
    data = write_toy_data(tmp_path / "data.jsonl")
    env = {"MODEL": str(model), "TRAIN_FILE": str(data), "OUTPUT_ROOT": str(tmp_path / "output"), "MAX_STEPS": "3",
           "BATCH_SIZE": "4", "MAX_SEQ_LENGTH": "48", "EVAL_SPLIT_SIZE": "4", "EVAL_STEPS": "2",
           "CHECKPOINTING_STEPS": "2", "RUN_EVAL": "0"}
    proc = bash(SCRIPTS[0], "4", "1", "2", "2", "1e-3", "7", "cpu", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    runs = list((tmp_path / "output").iterdir())
    assert len(runs) == 1
    name = runs[0].name
    assert name.startswith("superni_") and name.endswith("_GPU_cpu_r_4_unshared_1_x_A2B2_lr_1e-3_sd_7")
    results = json.loads((runs[0] / "all_results.json").read_text())
    assert results["peft_method"] == "prolora" and results["global_step"] == 3 and results["eval_loss"] > 0
    config = results["peft_config"]
    assert (config["r"], config["unshared_r"], config["reduce_lora_A_x"], config["reduce_lora_B_x"]) == (4, 1, 2, 2)
    assert (config["lora_alpha"], config["lora_dropout"]) == (16, 0.1)
    assert (runs[0] / "completed").exists() and (runs[0] / "step_2").is_dir()
    merged = runs[0] / "lora_merged"
    assert (merged / "model.safetensors").exists() and (merged / "tokenizer.json").exists()
    assert "stopping after the merge" in proc.stdout
