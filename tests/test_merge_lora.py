"""merge_lora: the merged checkpoint computes what base + adapter computed (LoRA, PRoLoRA, QLoRA path)."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import byte_tokenizer, make_tiny_checkpoint
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from open_instruct.base_quantization import load_dequantized_base
from open_instruct.merge_lora import main as merge_main
from open_instruct.peft_methods import LLAMA_PROJECTIONS
from prolora import ProLoraConfig

INPUT_IDS = torch.tensor([[256, 60, 124, 117, 115, 101, 114, 124, 62, 10, 104, 105, 257]])


def adapter_config(method: str):
    if method == "lora":
        return LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=LLAMA_PROJECTIONS)
    return ProLoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=LLAMA_PROJECTIONS,
                         unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2)


def make_adapter(base_dir, adapter_dir, method: str, with_pad: bool):
    """A trained-looking adapter (random non-zero factors) saved the way finetune saves it."""
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    tokenizer = byte_tokenizer()
    if with_pad:  # finetune adds <pad> and grows the embeddings by one row
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        base.resize_token_embeddings(len(tokenizer))
    model = get_peft_model(base, adapter_config(method))
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.2)
    model.save_pretrained(adapter_dir, save_embedding_layers=False)
    tokenizer.save_pretrained(adapter_dir)


@torch.no_grad()
def logits(model):
    return model.eval()(INPUT_IDS).logits


@pytest.mark.parametrize("method", ["lora", "prolora"])
@pytest.mark.parametrize("with_pad", [False, True])
def test_merged_model_matches_base_plus_adapter(tmp_path, method, with_pad):
    base_dir = make_tiny_checkpoint(tmp_path / "base")
    make_adapter(base_dir, tmp_path / "adapter", method, with_pad)
    merged_dir = merge_main(["--lora_model_name_or_path", str(tmp_path / "adapter"), "--save_tokenizer"])
    assert merged_dir == tmp_path / "adapter" / "lora_merged"

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name in merged.state_dict())
    assert merged.get_input_embeddings().weight.shape[0] == (259 if with_pad else 258)
    assert (merged_dir / "tokenizer.json").exists()

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base_logits = logits(base)
    if with_pad:
        base.resize_token_embeddings(259)
    unmerged = PeftModel.from_pretrained(base, tmp_path / "adapter")
    expected = logits(unmerged)
    torch.testing.assert_close(logits(merged)[..., :258], expected[..., :258], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base_logits[..., :258], expected[..., :258], atol=1e-2)  # the adapter matters


@pytest.mark.parametrize("method", ["lora", "prolora"])
def test_qlora_merge_uses_the_dequantized_base(tmp_path, method):
    # bitsandbytes' CPU 4-bit inference kernel wants in_features divisible by 64 (real models are).
    base_dir = make_tiny_checkpoint(tmp_path / "base", intermediate_size=128)
    make_adapter(base_dir, tmp_path / "adapter", method, with_pad=False)
    out = tmp_path / "merged"
    merge_main(["--lora_model_name_or_path", str(tmp_path / "adapter"), "--base_model_name_or_path", str(base_dir),
                "--output_dir", str(out), "--qlora"])
    merged = AutoModelForCausalLM.from_pretrained(out)

    from transformers import BitsAndBytesConfig

    quantized = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32))
    # In eval mode bitsandbytes' CPU backend repacks 4-bit weights for a bf16 kernel; training mode (what
    # QLoRA fine-tuning ran, dropout is 0 here) dequantises and multiplies in fp32, the reference we want.
    with torch.no_grad():
        expected = PeftModel.from_pretrained(quantized, tmp_path / "adapter").train()(INPUT_IDS).logits
    torch.testing.assert_close(logits(merged), expected, rtol=1e-4, atol=1e-4)
    # ... and that differs from merging into the full-precision weights (NF4 rounding is visible).
    full = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "adapter"))
    assert not torch.allclose(full, expected, atol=1e-3)


def test_dequantized_base_has_plain_linear_layers(tmp_path):
    model = load_dequantized_base(str(make_tiny_checkpoint(tmp_path / "base")))
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj) is torch.nn.Linear and q_proj.weight.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None


def test_missing_adapter_is_reported_and_nothing_written(tmp_path):
    from open_instruct.cli import UsageError

    with pytest.raises(UsageError, match="nowhere: no such folder"):
        merge_main(["--lora_model_name_or_path", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
