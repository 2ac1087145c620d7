"""Shared test helpers for the eval suite: fixture paths and a tiny random Llama saved with a real tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


def build_tiny_llama(vocab_size: int = 49152, seed: int = 0):
    """A 2-layer, hidden-32 random Llama whose vocabulary matches the SmolLM2 tokenizer (fast on CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_path):
    """Folder with a tiny random Llama checkpoint and the SmolLM2 tokenizer (loadable by from_pretrained)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny_llama")
    build_tiny_llama().save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_path).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)
