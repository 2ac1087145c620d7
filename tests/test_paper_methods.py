"""Every method of the paper grid (LoRA, PRoLoRA, VeRA, Tied-LoRA) saves, reloads, merges and disables alike."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, VeraConfig, get_peft_model

from open_instruct.peft_methods import LLAMA_PROJECTIONS
from open_instruct.tied_lora import TiedLoraConfig
from prolora import ProLoraConfig

torch.set_num_threads(1)
TARGETS = list(LLAMA_PROJECTIONS)
CONFIGS = {
    "lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"),
    "prolora": lambda: ProLoraConfig(r=4, lora_alpha=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2,
                                     target_modules=TARGETS, task_type="CAUSAL_LM"),
    "vera": lambda: VeraConfig(r=8, target_modules=TARGETS, task_type="CAUSAL_LM"),
    "tied_lora": lambda: TiedLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"),
}


def tokens():
    return torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_save_reload_merge_disable(tiny_llama, tmp_path, method):
    base_logits = tiny_llama()(tokens()).logits
    model = get_peft_model(tiny_llama(), CONFIGS[method]())
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move away from the identity init so that every check below can fail
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    logits = model(tokens()).logits
    assert not torch.allclose(logits, base_logits, atol=1e-4)

    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(reloaded(tokens()).logits, logits)
    with reloaded.disable_adapter():
        torch.testing.assert_close(reloaded(tokens()).logits, base_logits, rtol=0, atol=0)
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(merged(tokens()).logits, logits, rtol=1e-4, atol=1e-5)
