"""Tiny random models for the tests, built from a config (no downloads). Import from here, not from conftest."""

from __future__ import annotations

import torch


def make_tiny_llama(hidden_size: int = 64, intermediate_size: int = 96, num_layers: int = 2, vocab_size: int = 128,
                    seed: int = 0, **overrides):
    """A random LlamaForCausalLM small enough for unit tests (odd dims are allowed via the arguments)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                "tie_word_embeddings": False}
    config = LlamaConfig(hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                         vocab_size=vocab_size, **(settings | overrides))
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
