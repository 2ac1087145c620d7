"""finetune.py under `accelerate launch`: two CPU processes (gloo) and DeepSpeed ZeRO-3 (one CPU process), for LoRA and
MoS (whose pools are shared across layers)."""

from __future__ import annotations

import json
import shutil
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from finetune_helpers import REPO, load_adapter_tensors, make_tiny_checkpoint, run, tiny_args, write_toy_data

pytestmark = pytest.mark.slow
ACCELERATE = str(REPO / ".venv" / "bin" / "accelerate") if (REPO / ".venv" / "bin" / "accelerate").exists() \
    else shutil.which("accelerate")

# Runs finetune and, just before the final save, dumps this rank's trainable tensors and its adapter state dict (the
# keys `save_pretrained` writes; MoS: each pool once, plus the shard indices) next to the script.
RANK_DUMP = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from open_instruct import finetune
    from open_instruct.training import checkpoints
    from peft.utils import get_peft_model_state_dict
    original_save_final = checkpoints.save_final
    def save_final(accelerator, model, *args, **kwargs):
        unwrapped = accelerator.unwrap_model(model)
        params = {n: p.detach().cpu().clone() for n, p in unwrapped.named_parameters() if p.requires_grad}
        adapter = {n: t.detach().cpu().clone() for n, t in get_peft_model_state_dict(
            unwrapped, save_embedding_layers=False).items()}  # as save_final saves it
        dump = Path(__file__).parent / f"rank{accelerator.process_index}.pt"
        torch.save({"params": params, "adapter": adapter}, dump)
        original_save_final(accelerator, model, *args, **kwargs)
    checkpoints.save_final = save_final
    finetune.main(sys.argv[1:])
""")


# Each method's flags on top of `tiny_args` (rank 4 on the tiny Llama), and the saved key of one trained B tensor
# (zero at init). MoS: pools of R=2 in 2 shards per vector, shared by the 2 layers; its per-layer shard indices are
# drawn at init, so they must agree between the ranks too.
METHODS = {
    "lora": ([], "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"),
    "mos": (["--peft_method", "mos", "--mos_r", "2", "--mos_shards_per_vector", "2"],
            "base_model.mos_pool_B.q_proj_out64_in64"),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftdist")
    return {"model": make_tiny_checkpoint(root / "model"), "data": write_toy_data(root / "data.jsonl")}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_keep_adapters_in_sync(assets, tmp_path, method):
    flags, trained_B = METHODS[method]
    script = tmp_path / "rank_dump.py"
    script.write_text(RANK_DUMP)
    out = tmp_path / "out"
    proc = run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--main_process_port", "29531", str(script),
                *tiny_args(assets["model"], assets["data"], out, "--per_device_train_batch_size", "2",
                           "--checkpointing_steps", "3", "--eval_split_size", "4", *flags)],
               env={"ACCELERATE_USE_CPU": "true"})  # accelerate's switch for gloo multi-process on CPU
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "MULTI_CPU" in proc.stderr

    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for part in ("params", "adapter"):
        assert rank0[part].keys() == rank1[part].keys() and rank0[part]
        for name in rank0[part]:  # DDP all-reduced the gradients: identical updates (and MoS indices) on both ranks
            torch.testing.assert_close(rank0[part][name], rank1[part][name], rtol=0, atol=0, msg=name)
    assert rank0["adapter"][trained_B].abs().sum() > 0

    saved = load_adapter_tensors(out)
    for name, tensor in rank0["adapter"].items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0, msg=name)
    assert saved.keys() == rank0["adapter"].keys()
    # Main process wrote the outputs once; each rank saved only its own RNG state in the checkpoint.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "adapter_config.json", "adapter_model.safetensors", "all_results.json", "completed",
         "step_3", "tokenizer.json", "tokenizer_config.json"])
    assert sorted(p.name for p in (out / "step_3").glob("random_states_*")) == ["random_states_0.pkl",
                                                                                 "random_states_1.pkl"]
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 6


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_machines_on_localhost_keep_adapters_in_sync(assets, tmp_path, method):
    """docs/harness.md's multi-node line, both "machines" on this host: two launches with --num_machines 2 and their
    own --machine_rank meet at --main_process_ip (torch's TCP rendezvous); one process per machine."""
    flags, trained_B = METHODS[method]
    script = tmp_path / "rank_dump.py"
    script.write_text(RANK_DUMP)
    out = tmp_path / "out"

    def machine(rank: int):
        return run([ACCELERATE, "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
                    "--main_process_ip", "127.0.0.1", "--main_process_port", "29535", "--num_processes", "2",
                    str(script), *tiny_args(assets["model"], assets["data"], out, "--per_device_train_batch_size", "2",
                                            *flags)],
                   env={"ACCELERATE_USE_CPU": "true"})

    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(machine, (0, 1)))
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "MULTI_CPU" in proc.stderr
    assert "2 × 1 × 2 examples" in procs[0].stderr  # the main process's log: batch x accumulation x world size

    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name in rank0["adapter"]:
        torch.testing.assert_close(rank0["adapter"][name], rank1["adapter"][name], rtol=0, atol=0, msg=name)
    assert rank0["adapter"][trained_B].abs().sum() > 0
    saved = load_adapter_tensors(out)
    assert saved.keys() == rank0["adapter"].keys()
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, rank0["adapter"][name], rtol=0, atol=0, msg=name)
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 6


# The shape each method's adapter has once gathered from the ZeRO-3 shards (partitioned it is (0,)).
ZERO3_SHAPES = {
    "lora": ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", (4, 64)),
    "mos": ("base_model.mos_pool_A.q_proj_out64_in64", (8, 32)),  # N = R * L * l = 2 * 2 * 2 shards, 64 / 2 wide
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_deepspeed_zero3_trains_saves_and_resumes(assets, tmp_path, method):
    flags, _ = METHODS[method]
    config = REPO / "configs" / "ds_configs" / "stage3_no_offloading_accelerate.conf"
    launch = [ACCELERATE, "launch", "--use_deepspeed", "--deepspeed_config_file", str(config),
              "--num_processes", "1", "--num_machines", "1", "--main_process_port", "29533",
              "-m", "open_instruct.finetune"]
    common = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--clip_grad_norm", "1.0", *flags]
    reference = tmp_path / "reference"
    proc = run([*launch, *tiny_args(assets["model"], assets["data"], reference, *common)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "DistributedType.DEEPSPEED" in proc.stderr
    tensors = load_adapter_tensors(reference)
    # The adapter was gathered from the ZeRO-3 shards: full shapes, not the (0,) placeholders.
    key, shape = ZERO3_SHAPES[method]
    assert tuple(tensors[key].shape) == shape
    assert (reference / "step_2" / "trainer_state.json").exists() and (reference / "completed").exists()

    resumed = tmp_path / "resumed"
    proc = run([*launch, *tiny_args(assets["model"], assets["data"], resumed, *common),
                "--resume_from_checkpoint", str(reference / "step_2")], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, tensor in load_adapter_tensors(resumed).items():
        torch.testing.assert_close(tensor, tensors[name], rtol=0, atol=1e-6, msg=name)
