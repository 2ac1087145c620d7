"""MoS under DeepSpeed ZeRO-3 (one CPU process): the shared pools are partitioned, fetched by every layer that
assembles from them, and give the same gradients as without DeepSpeed; the compact save holds each pool once at
full shape and reloads exactly; the export and merge gather what they read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("deepspeed")
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mos_zero3")
    ds_config = {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True,
                              "stage3_param_persistence_threshold": 0},  # partition even these tiny pools
    }
    (out / "ds.json").write_text(json.dumps(ds_config))
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    cmd = [accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--use_deepspeed",
           "--deepspeed_config_file", str(out / "ds.json"), "--main_process_port", "29534",
           str(HERE / "scripts" / "mos_zero3_train.py"), str(out), str(HERE)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{HERE.parent}:{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_mos_pools_are_partitioned_and_get_the_non_zero_gradients(zero3_run):
    result = json.loads((zero3_run / "result.json").read_text())
    assert result["partitioned_shape"] == [0] and result["ds_shape"] == [18, 24]  # really partitioned by ZeRO-3
    reference = torch.load(zero3_run / "reference_grads.pt")
    zero3 = torch.load(zero3_run / "zero3_grads.pt")
    assert reference.keys() == zero3.keys() and len(reference) == 14  # 7 projection types x (P_A, P_B)
    for name, grad in reference.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(zero3[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert result["losses"][-1] < result["losses"][0]


@pytest.mark.slow
def test_mos_compact_save_under_zero3_reloads_exactly(zero3_run, tiny_llama):
    from peft import PeftModel

    import prolora  # noqa: F401

    tensors = load_file(zero3_run / "adapter" / "adapter_model.safetensors")
    pool_keys = sorted(k for k in tensors if ".mos_pool_" in k)
    # Each pool once, under the tuner, at full shape (gathered from the partitions); no per-layer copies.
    assert len(pool_keys) == 14 and all(k.startswith("base_model.mos_pool_") for k in pool_keys)
    assert tuple(tensors["base_model.mos_pool_B.down_proj_out72_in98"].shape) == (18, 24)
    trained = torch.load(zero3_run / "trained_pools.pt")

    model = PeftModel.from_pretrained(tiny_llama(hidden_size=72, intermediate_size=98), zero3_run / "adapter")
    tuner = model.base_model
    for name, pool in trained.items():
        part, group = name.split(".")
        torch.testing.assert_close(getattr(tuner, part)["default"][group], pool, rtol=0, atol=0, msg=name)
    layers = [layer.self_attn.q_proj for layer in model.base_model.model.model.layers]
    assert all(q.mos_pool_A["default"] is tuner.mos_pool_A["default"]["q_proj_out72_in72"] for q in layers)

    # The LoRA export written under ZeRO-3 (pools gathered) is what the reloaded adapter assembles.
    exported = load_file(zero3_run / "export" / "adapter_model.safetensors")
    for i, q in enumerate(layers):
        A, B = q.assemble("default")
        key = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        torch.testing.assert_close(exported[f"{key}.lora_A.weight"], A, rtol=0, atol=0)
        torch.testing.assert_close(exported[f"{key}.lora_B.weight"], B, rtol=0, atol=0)
    assert torch.count_nonzero(exported["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]) > 0
