"""Causal-LM loss with the LM head applied only where there is a label.

Instruction tuning trains on the reply only: on ASDiv about one position in eight has a label, yet a plain
``model(**batch).loss`` projects every position onto the whole vocabulary (49,152 rows for SmolLM2) before the
loss throws most of those logits away. Here the boolean mask of positions whose *next* token is labelled goes to
the model as ``logits_to_keep`` (transformers slices the final hidden states with it before ``lm_head`` and
returns logits flattened to ``(num_labelled, vocab)``), and the loss is the mean cross-entropy over those
positions — the same number, and the same gradients, as the full computation (``tests/test_finetune_speedups.py``).

It goes through the model's own forward, so PEFT wrappers, DDP, DeepSpeed ZeRO-3, mixed-precision autocast and
gradient checkpointing see an ordinary call. A model whose forward has no ``logits_to_keep`` or returns logits of
another shape falls back to the full computation, with one log line.
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F

from open_instruct.data.encoding import IGNORE_INDEX

logger = logging.getLogger(__name__)


def base_forward_accepts_logits_to_keep(model) -> bool:
    """Whether the innermost transformers model (under PEFT / DDP / DeepSpeed wrappers) takes `logits_to_keep`."""
    inner = model
    for attribute in ("module", "base_model", "model"):  # DDP/DeepSpeed → PeftModel → tuner model → causal LM
        if "logits_to_keep" in inspect.signature(inner.forward).parameters:
            return True
        inner = getattr(inner, attribute, inner)
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


class CausalLMLoss:
    """``loss_fn(model, batch)`` → mean next-token cross-entropy over labelled positions (label -100 is ignored)."""

    def __init__(self, model, label_only: bool = True):
        self.label_only = label_only and base_forward_accepts_logits_to_keep(model)
        if label_only and not self.label_only:
            logger.info("label-only LM head: the model's forward has no logits_to_keep; computing all logits")

    def __call__(self, model, batch: dict) -> torch.Tensor:
        logits, targets = self.labelled_logits(model, batch)
        return F.cross_entropy(logits.float(), targets)

    def labelled_logits(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (num_labelled, vocab), targets (num_labelled,))`` at the positions whose next token is labelled,
        in the batch's row-major order — what the loss averages over, and what held-out token accuracy counts."""
        labels = batch["labels"]
        targets = labels[:, 1:]
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = targets != IGNORE_INDEX  # position t predicts token t + 1
        if self.label_only:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs, logits_to_keep=keep).logits
            if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
                return logits, targets[keep[:, :-1]]
            logger.info("label-only LM head: the model ignored a boolean logits_to_keep; computing all logits")
            self.label_only = False
        logits = model(**batch).logits  # the whole batch, as the forward was written to take it
        return logits[keep], targets[keep[:, :-1]]
