"""PRoLoRA on bitsandbytes 4-bit base layers (QLoRA). bitsandbytes >= 0.45 runs NF4 on CPU, so this runs in CI."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

import prolora as P
from open_instruct.peft_methods import LLAMA_PROJECTIONS

bnb = pytest.importorskip("bitsandbytes")
ATTN_MLP = list(LLAMA_PROJECTIONS)


@pytest.fixture
def quantized_loader(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_llama(hidden_size=128, intermediate_size=192).save_pretrained(tmp_path / "base")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)

    def load():
        return AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quant, device_map="cpu")

    return load


def test_prolora_on_4bit_matches_lora_and_trains(quantized_loader):
    x = torch.randint(0, 128, (2, 8))
    lora = get_peft_model(quantized_loader(), LoraConfig(r=8, lora_alpha=16, target_modules=ATTN_MLP))
    prolora = get_peft_model(quantized_loader(), P.ProLoraConfig(r=8, lora_alpha=16, unshared_r=8,
                                                                target_modules=ATTN_MLP))
    q = prolora.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, bnb.nn.Linear4bit)
    # Same random factors in both (u = r is plain LoRA).
    g = torch.Generator().manual_seed(0)
    lora_layers = dict(lora.named_modules())
    with torch.no_grad():
        for name, mod in prolora.named_modules():
            if isinstance(mod, P.ProLoraLayer):
                A = torch.randn(8, mod.in_features, generator=g) * 0.1
                B = torch.randn(mod.out_features, 8, generator=g) * 0.1
                mod.prolora_A_unshared["default"].copy_(A)
                mod.prolora_B_unshared["default"].copy_(B)
                lora_layers[name].lora_A["default"].weight.copy_(A)
                lora_layers[name].lora_B["default"].weight.copy_(B)
    torch.testing.assert_close(prolora(x).logits, lora(x).logits, rtol=1e-4, atol=1e-4)

    # A shared-chunk adapter trains on the 4-bit base: loss goes down over a few steps.
    model = get_peft_model(quantized_loader(), P.ProLoraConfig(r=8, unshared_r=1, reduce_lora_A_x=2,
                                                               reduce_lora_B_x=2, target_modules=ATTN_MLP))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


def test_merge_into_4bit_base(quantized_loader):
    """Merging dequantises W, adds ΔW and requantises (PEFT's backend): W_after ≈ W_before + ΔW up to NF4 noise."""
    model = get_peft_model(quantized_loader(), P.ProLoraConfig(r=8, unshared_r=1, reduce_lora_A_x=2,
                                                               reduce_lora_B_x=2, target_modules=ATTN_MLP))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "prolora_B" in n:
                p.normal_(0, 0.5)
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        before = q.get_base_weight().clone()
        delta = q.get_delta_weight("default")
        model.merge_adapter()
        after = q.get_base_weight()
    assert (after - (before + delta)).abs().mean() < 0.25 * delta.abs().mean()
    x = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        merged_logits = model(x).logits
        model.unmerge_adapter()
        unmerged_logits = model(x).logits
    assert torch.isfinite(merged_logits).all() and torch.isfinite(unmerged_logits).all()
