"""finetune.py under `accelerate launch`: two CPU processes (gloo) and DeepSpeed ZeRO-3 (one CPU process)."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
from finetune_helpers import REPO, load_adapter_tensors, make_tiny_checkpoint, run, tiny_args, write_toy_data

pytestmark = pytest.mark.slow
ACCELERATE = str(REPO / ".venv" / "bin" / "accelerate") if (REPO / ".venv" / "bin" / "accelerate").exists() \
    else shutil.which("accelerate")

# Runs finetune and, just before the final save, dumps this rank's trainable tensors next to the script.
RANK_DUMP = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from open_instruct import finetune
    from open_instruct.training import checkpoints
    original_save_final = checkpoints.save_final
    def save_final(accelerator, model, *args, **kwargs):
        params = {n: p.detach().cpu().clone() for n, p in accelerator.unwrap_model(model).named_parameters()
                  if p.requires_grad}
        torch.save(params, Path(__file__).parent / f"rank{accelerator.process_index}.pt")
        original_save_final(accelerator, model, *args, **kwargs)
    checkpoints.save_final = save_final
    finetune.main(sys.argv[1:])
""")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftdist")
    return {"model": make_tiny_checkpoint(root / "model"), "data": write_toy_data(root / "data.jsonl")}


def test_two_processes_keep_adapters_in_sync(assets, tmp_path):
    script = tmp_path / "rank_dump.py"
    script.write_text(RANK_DUMP)
    out = tmp_path / "out"
    proc = run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--main_process_port", "29531", str(script),
                *tiny_args(assets["model"], assets["data"], out, "--per_device_train_batch_size", "2",
                           "--checkpointing_steps", "3", "--eval_split_size", "4")],
               env={"ACCELERATE_USE_CPU": "true"})  # accelerate's switch for gloo multi-process on CPU
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "MULTI_CPU" in proc.stderr

    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:  # DDP all-reduced the gradients: identical updates on both ranks
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    assert any(t.abs().sum() > 0 for n, t in rank0.items() if "lora_B" in n)

    saved = load_adapter_tensors(out)
    for name, tensor in saved.items():
        trained = [v for k, v in rank0.items() if k.replace(".default", "").endswith(name.split("base_model.")[-1])]
        torch.testing.assert_close(tensor, trained[0], msg=name)
    # Main process wrote the outputs once; each rank saved only its own RNG state in the checkpoint.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "adapter_config.json", "adapter_model.safetensors", "all_results.json", "completed",
         "step_3", "tokenizer.json", "tokenizer_config.json"])
    assert sorted(p.name for p in (out / "step_3").glob("random_states_*")) == ["random_states_0.pkl",
                                                                                 "random_states_1.pkl"]
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 6


def test_deepspeed_zero3_trains_saves_and_resumes(assets, tmp_path):
    config = REPO / "configs" / "ds_configs" / "stage3_no_offloading_accelerate.conf"
    launch = [ACCELERATE, "launch", "--use_deepspeed", "--deepspeed_config_file", str(config),
              "--num_processes", "1", "--num_machines", "1", "--main_process_port", "29533",
              "-m", "open_instruct.finetune"]
    common = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--clip_grad_norm", "1.0"]
    reference = tmp_path / "reference"
    proc = run([*launch, *tiny_args(assets["model"], assets["data"], reference, *common)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DistributedType.DEEPSPEED" in proc.stderr
    tensors = load_adapter_tensors(reference)
    # The adapter was gathered from the ZeRO-3 shards: full shapes, not the (0,) placeholders.
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert (reference / "step_2" / "trainer_state.json").exists() and (reference / "completed").exists()

    resumed = tmp_path / "resumed"
    proc = run([*launch, *tiny_args(assets["model"], assets["data"], resumed, *common),
                "--resume_from_checkpoint", str(reference / "step_2")], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, tensor in load_adapter_tensors(resumed).items():
        torch.testing.assert_close(tensor, tensors[name], rtol=0, atol=1e-6, msg=name)
