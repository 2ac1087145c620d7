"""finetune.py end to end on a tiny random Llama: outputs, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from finetune_helpers import load_adapter_tensors, make_tiny_checkpoint, python, run, tiny_args, write_toy_data

# 20 training examples (4 held out), batch 4, accumulation 2 → 3 optimizer steps per epoch, the last one a
# single batch; 6 steps = 2 epochs; checkpoints at steps 2 (mid-epoch) and 4 (just after the epoch boundary).
RESUME_ARGS = ["--gradient_accumulation_steps", "2", "--eval_split_size", "4", "--checkpointing_steps", "2",
               "--eval_steps", "3", "--warmup_ratio", "0.2", "--clip_grad_norm", "1.0", "--weight_decay", "0.01"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    return {"model": make_tiny_checkpoint(root / "model"), "data": write_toy_data(root / "data.jsonl"), "root": root}


def finetune(assets, output_dir, *extra, env=None):
    proc = run([python(), "-m", "open_instruct.finetune", *tiny_args(assets["model"], assets["data"], output_dir,
                                                                      *extra)], env=env or {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def reference(assets):
    """An uninterrupted run with checkpoints, the baseline for the resume tests."""
    output_dir = assets["root"] / "reference"
    finetune(assets, output_dir, *RESUME_ARGS)
    return output_dir


def test_outputs_of_a_lora_run(reference):
    results = json.loads((reference / "all_results.json").read_text())
    assert (reference / "completed").exists()
    assert (reference / "adapter_config.json").exists() and (reference / "tokenizer.json").exists()
    assert results["global_step"] == 6 and results["peft_method"] == "lora"
    assert results["peft_config"]["r"] == 4 and sorted(results["peft_config"]["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    # 2 layers × (4 attention projections 64→64 (k/v are 64→32) + MLP 64↔96), rank 4.
    per_layer = 4 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64)) + 4 * (2 * (64 + 96) + (96 + 64))
    assert results["trainable_params"] == 2 * per_layer
    assert results["eval_loss"] is not None and results["train_loss"] > 0 and results["train_runtime"] > 0
    # Only the adapter weights are saved (no resized embedding matrix), and they moved away from init.
    tensors = load_adapter_tensors(reference)
    assert all("lora_" in name for name in tensors)
    assert any(t.abs().sum() > 0 for name, t in tensors.items() if "lora_B" in name)
    assert sorted(p.name for p in reference.iterdir() if p.name.startswith("step_")) == ["step_2", "step_4"]
    assert not [p for p in reference.iterdir() if p.name.startswith(".")]  # no temporary leftovers


# A child process that runs finetune and SIGKILLs itself at a chosen point of the step-4 checkpoint.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import accelerate
    from open_instruct import finetune
    from open_instruct.training import checkpoints
    point = os.environ["KILL_POINT"]
    original_save_state = accelerate.Accelerator.save_state
    def save_state(self, output_dir=None, **kwargs):
        result = original_save_state(self, output_dir, **kwargs)
        if point == "during_checkpoint" and ".step_4." in str(output_dir):
            os.kill(os.getpid(), signal.SIGKILL)  # the checkpoint folder is half written
        return result
    accelerate.Accelerator.save_state = save_state
    original_save_checkpoint = checkpoints.save_checkpoint
    def save_checkpoint(accelerator, output_dir, state, keep):
        original_save_checkpoint(accelerator, output_dir, state, keep)
        if point == "after_checkpoint" and state["global_step"] == 4:
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoints.save_checkpoint = save_checkpoint
    finetune.main(sys.argv[1:])
""")


@pytest.mark.parametrize("kill_point, resumed_from", [("after_checkpoint", 4), ("during_checkpoint", 2)])
def test_resume_after_sigkill_gives_the_same_adapter(assets, reference, tmp_path, kill_point, resumed_from):
    output_dir = tmp_path / "killed"
    args = tiny_args(assets["model"], assets["data"], output_dir, *RESUME_ARGS)
    killed = run([python(), "-c", KILLER, *args], env={"KILL_POINT": kill_point})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (output_dir / "completed").exists()
    resumed = run([python(), "-m", "open_instruct.finetune", *args, "--resume_from_checkpoint", "auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {output_dir / f'step_{resumed_from}'}" in resumed.stderr

    expected, actual = load_adapter_tensors(reference), load_adapter_tensors(output_dir)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)
    ref_results = json.loads((reference / "all_results.json").read_text())
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["train_loss"] == pytest.approx(ref_results["train_loss"], abs=1e-6)
    assert results["eval_loss"] == pytest.approx(ref_results["eval_loss"], abs=1e-6)


def test_checkpoints_total_limit_keeps_the_newest(assets, tmp_path):
    finetune(assets, tmp_path, "--checkpointing_steps", "1", "--checkpoints_total_limit", "2")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step_")) == ["step_4", "step_5"]


def test_malformed_record_names_file_and_line(assets, tmp_path):
    data = tmp_path / "bad.jsonl"
    lines = assets["data"].read_text().splitlines()
    lines[2] = json.dumps({"messages": [{"role": "bot", "content": "hi"}]})
    data.write_text("\n".join(lines) + "\n")
    proc = run([python(), "-m", "open_instruct.finetune", *tiny_args(assets["model"], data, tmp_path / "out")])
    assert proc.returncode != 0
    assert f"{data}:3: message 0 has role 'bot'" in proc.stderr
    assert not (tmp_path / "out" / "completed").exists()


def test_qlora_trains_on_cpu(assets, tmp_path):
    # bitsandbytes' CPU 4-bit inference kernel (used by the eval pass) wants in_features divisible by 64.
    model = make_tiny_checkpoint(tmp_path / "model", intermediate_size=128)
    out = tmp_path / "out"
    proc = run([python(), "-m", "open_instruct.finetune", *tiny_args(model, assets["data"], out),
                "--use_qlora", "--gradient_checkpointing", "--use_paged_optimizer", "--max_train_steps", "2",
                "--eval_split_size", "4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert (out / "completed").exists() and results["global_step"] == 2 and results["eval_loss"] > 0
    # 4-bit weights are counted unpacked: the total is the full-precision count (embeddings grown to 259 rows
    # by the added <pad>; per layer q, k, v, o, gate, up, down and two norms; the final norm) plus the adapter.
    base = 2 * 259 * 64 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64) + 64
    assert results["total_params"] == base + results["trainable_params"]
    assert any(t.abs().sum() > 0 for name, t in load_adapter_tensors(out).items() if "lora_B" in name)
