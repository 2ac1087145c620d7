"""A MoS adapter folder in the evals: the HF backend loads and merges it, the vLLM backend gets it exported as an
exact vanilla LoRA; either way the eval outputs equal those of the merged model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from eval_helpers import build_tiny_llama

from eval.backends import HFBackend, _servable_adapter, load_model_and_tokenizer, make_backend

PROMPTS = ["The capital of France is", "Hi", "Question: what is 2+2?\nAnswer:"]
CHOICES = [" A", " B", " C"]


@pytest.fixture(scope="module")
def mos_adapter(tmp_path_factory):
    """A saved MoS adapter with every shard non-zero (shared pools, private shards, 2 shards per vector), and the
    model it merges into."""
    from peft import get_peft_model

    import prolora

    config = prolora.MosConfig(r=4, mos_r=3, private_r=1, shards_per_vector=2, lora_alpha=8, init_weights=False,
                               target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(build_tiny_llama(), config)
    torch.manual_seed(1)
    for param in peft_model.parameters():
        if param.requires_grad:  # large enough that the adapter changes greedy tokens and choice scores
            param.data.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("mos") / "adapter"
    peft_model.save_pretrained(folder)
    return folder, peft_model.merge_and_unload()


def _outputs(backend: HFBackend):
    """What the evals read: greedy completions (generation evals) and choice log-probabilities (MMLU)."""
    return (backend.generate(PROMPTS, max_new_tokens=6, batch_size=2),
            torch.tensor(backend.score_choices(PROMPTS, CHOICES, batch_size=2)))


def test_hf_backend_evaluates_a_mos_adapter_as_its_merged_model(tiny_model_dir, mos_adapter):
    folder, merged = mos_adapter
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "MOS"
    args = argparse.Namespace(use_vllm=False, load_in_8bit=False, model_name_or_path=str(tiny_model_dir),
                              tokenizer_name_or_path=None, adapter_name_or_path=str(folder))
    loaded = make_backend(args)
    assert not any("mos" in name for name, _ in loaded.model.named_modules())  # merged and unloaded
    texts, scores = _outputs(loaded)
    reference_texts, reference_scores = _outputs(HFBackend(merged, loaded.tokenizer))
    assert texts == reference_texts
    torch.testing.assert_close(scores, reference_scores, rtol=0, atol=1e-5)
    _, base_scores = _outputs(HFBackend(build_tiny_llama(), loaded.tokenizer))
    assert not torch.allclose(scores, base_scores, atol=1e-3)  # the adapter matters


def test_vllm_backend_gets_a_mos_adapter_as_exact_lora(tiny_model_dir, mos_adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("PROLORA_CACHE", str(tmp_path / "cache"))  # where serve caches its exports
    folder, merged = mos_adapter
    lora_path, max_lora_rank = _servable_adapter(str(tiny_model_dir), str(folder))
    assert Path(lora_path).is_relative_to(tmp_path / "cache")
    config = json.loads((Path(lora_path) / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and max_lora_rank >= 4
    # The folder vLLM would read, evaluated through plain PEFT LoRA: the merged MoS model's outputs.
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), adapter_name_or_path=lora_path)
    texts, scores = _outputs(HFBackend(model, tokenizer))
    reference_texts, reference_scores = _outputs(HFBackend(merged, tokenizer))
    assert texts == reference_texts
    torch.testing.assert_close(scores, reference_scores, rtol=0, atol=1e-5)
    assert _servable_adapter(str(tiny_model_dir), str(folder))[0] == lora_path  # cached by content: exported once
