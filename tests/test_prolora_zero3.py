"""PRoLoRA under DeepSpeed ZeRO-3 (one process on CPU): trains, saves full-shape chunks, reloads, merges."""

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


@pytest.mark.slow
def test_prolora_trains_and_saves_under_zero3(tmp_path, tiny_llama):
    ds_config = {
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True,
                              "stage3_param_persistence_threshold": 0},
    }
    (tmp_path / "ds.json").write_text(json.dumps(ds_config))
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    cmd = [accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--use_deepspeed",
           "--deepspeed_config_file", str(tmp_path / "ds.json"), "--main_process_port", "29533",
           str(HERE / "scripts" / "prolora_zero3_train.py"), str(tmp_path), str(HERE)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["partitioned_shape"] == [0] and result["ds_shape"] == [7, 36]  # really partitioned by ZeRO-3
    assert result["losses"][-1] < result["losses"][0]
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert tuple(tensors["base_model.model.model.layers.0.self_attn.q_proj.prolora_A"].shape) == (7, 36)
    assert tuple(tensors["base_model.model.model.layers.0.mlp.up_proj.prolora_B"].shape) == (33, 7)
    # The saved adapter reloads outside DeepSpeed and is trained (B no longer zero).
    from peft import PeftModel

    import prolora  # noqa: F401

    model = PeftModel.from_pretrained(tiny_llama(hidden_size=72, intermediate_size=98), tmp_path / "adapter")
    B = model.base_model.model.model.layers[0].self_attn.q_proj.prolora_B["default"]
    assert torch.count_nonzero(B) > 0
