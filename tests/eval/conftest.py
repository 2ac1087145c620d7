"""Fixtures of the eval tests (defined in eval_helpers.py), registered here so test modules need not import them."""

from eval_helpers import smollm2_tokenizer, tiny_model_dir  # noqa: F401  (pytest fixtures)
