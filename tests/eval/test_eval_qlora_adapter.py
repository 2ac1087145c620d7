"""Base + QLoRA-trained adapter in the evals: the base is NF4-dequantised as merge_lora --qlora does, so
``--adapter_name_or_path`` scores the same model as the merged checkpoint the authors evaluated."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_helpers import byte_tokenizer, make_tiny_checkpoint
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from eval.backends import load_model_and_tokenizer
from eval.common import EvalError
from open_instruct import base_quantization
from open_instruct.merge_lora import main as merge_main
from open_instruct.peft_methods import LLAMA_PROJECTIONS, qlora_quantization_config

INPUT_IDS = torch.tensor([[256, 60, 124, 117, 115, 101, 114, 124, 62, 10, 104, 105, 257]])


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora_eval")
    base_dir = make_tiny_checkpoint(root / "base", intermediate_size=128)  # CPU 4-bit: in_features % 64 == 0
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=LLAMA_PROJECTIONS))
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.2)
    adapter = root / "run"
    model.save_pretrained(adapter)
    byte_tokenizer().save_pretrained(adapter)
    (adapter / "all_results.json").write_text(json.dumps({base_quantization.KEY: base_quantization.record()}))
    return base_dir, adapter


@torch.no_grad()
def logits(model):
    return model.eval()(INPUT_IDS.to(model.device)).logits.cpu()


def test_recorded_qlora_adapter_is_applied_to_the_dequantised_base(run_dirs, tmp_path):
    base_dir, adapter = run_dirs
    model, _ = load_model_and_tokenizer(str(base_dir), adapter_name_or_path=str(adapter), device="cpu")
    merge_main(["--lora_model_name_or_path", str(adapter), "--base_model_name_or_path", str(base_dir),
                "--output_dir", str(tmp_path / "merged"), "--qlora"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(model), logits(merged), rtol=1e-5, atol=1e-5)

    # without the record the full-precision base is used, and the NF4 rounding shows
    (adapter / "all_results.json").write_text(json.dumps({base_quantization.KEY: None}))
    try:
        full, _ = load_model_and_tokenizer(str(base_dir), adapter_name_or_path=str(adapter), device="cpu")
    finally:
        (adapter / "all_results.json").write_text(json.dumps({base_quantization.KEY: base_quantization.record()}))
    assert not torch.allclose(logits(full), logits(merged), atol=1e-3)


def test_record_is_the_recipe_and_mismatches_are_errors(run_dirs, tmp_path):
    config = qlora_quantization_config(torch.float32)
    assert base_quantization.record() == {"load_in_4bit": True, "bnb_4bit_quant_type": config.bnb_4bit_quant_type,
                                          "bnb_4bit_use_double_quant": config.bnb_4bit_use_double_quant}
    base_dir, adapter = run_dirs
    assert base_quantization.read(adapter) == base_quantization.record()
    assert base_quantization.read(tmp_path) is None  # no all_results.json: an ordinary adapter
    with pytest.raises(EvalError, match="merge it first"):
        load_model_and_tokenizer(str(base_dir), adapter_name_or_path=str(adapter), load_in_8bit=True, device="cpu")
    other = tmp_path / "fp4"
    other.mkdir()
    for item in adapter.iterdir():
        (other / item.name).write_bytes(item.read_bytes())
    (other / "all_results.json").write_text(json.dumps({base_quantization.KEY: base_quantization.record()
                                                        | {"bnb_4bit_quant_type": "fp4"}}))
    with pytest.raises(EvalError, match="fp4"):
        load_model_and_tokenizer(str(base_dir), adapter_name_or_path=str(other), device="cpu")


def test_finetune_records_the_base_and_the_eval_reads_it(tmp_path):
    from finetune_helpers import python, run, tiny_args, write_toy_data

    base_dir = make_tiny_checkpoint(tmp_path / "base", intermediate_size=128)
    data = write_toy_data(tmp_path / "toy.jsonl", n=8)
    out = tmp_path / "run"
    proc = run([python(), "-m", "open_instruct.finetune", *tiny_args(base_dir, data, out),
                "--use_qlora", "--max_train_steps", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "all_results.json").read_text())[base_quantization.KEY] == base_quantization.record()

    model, _ = load_model_and_tokenizer(str(base_dir), adapter_name_or_path=str(out), device="cpu")
    merge_main(["--lora_model_name_or_path", str(out), "--base_model_name_or_path", str(base_dir),
                "--output_dir", str(tmp_path / "merged"), "--qlora"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logits(model)[..., :258], logits(merged)[..., :258], rtol=1e-5, atol=1e-5)
