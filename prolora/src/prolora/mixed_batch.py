"""Mixed-adapter batches for out-of-tree PEFT tuners: ``model(input_ids, adapter_names=[...])``.

PEFT's API: ``PeftModel.forward`` / ``generate`` enter ``tuner._enable_peft_forward_hooks(*args, **kwargs)`` when
the tuner defines it (the extension point PEFT offers every tuner), then drop ``adapter_names`` from the kwargs
passed to the transformers model. The tuner's context manager validates the names and registers forward pre-hooks
that hand ``adapter_names`` (one per row, ``"__base__"`` for the base model) to every adapted layer, whose forward
then adds each adapter's update to its own rows only. Semantics and error messages follow PEFT's LoRA.

`adapter_names_hooks` is that context manager, parameterised by the tuner's layer class; `check_forward_args` and
`sub_batches` are the per-layer helpers. PRoLoRA and the harness's Tied-LoRA both use them.

Per-call state: for the duration of one call (one ``forward``, or one whole ``generate`` with all its decoding
steps) every layer's ``mixed_batch_cache`` is a fresh dict, and ``None`` otherwise. A layer may keep there what
only depends on the adapter names and its own weights (row indices, rebuilt A/B), so a decoding step does not redo
it; nothing outlives the call, so between requests only the compact adapter tensors stay resident.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator, Sequence

import torch
from torch import nn

from prolora.peft_compat import AuxiliaryTrainingWrapper

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter on this row"


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


@contextmanager
def adapter_names_hooks(tuner: nn.Module, layer_cls: type, **kwargs) -> Iterator[None]:
    """Route ``kwargs["adapter_names"]`` (if given) to every ``layer_cls`` module of ``tuner`` for one call.

    Raises ``ValueError`` in training mode and for names that no layer holds, as LoRA does.
    With beam search (``num_beams > 1``) each name is repeated ``num_beams`` times, matching the expanded batch.
    """
    adapter_names = kwargs.pop("adapter_names", None)
    if adapter_names is None:
        yield
        return
    if tuner.training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
    if not isinstance(adapter_names, (list, tuple)):
        raise TypeError(f"Got adapter names of type {type(adapter_names)}, expected a list of str.")
    layers = [module for module in tuner.modules() if isinstance(module, layer_cls)]
    known = {name for layer in layers for name in layer._all_available_adapter_names()}
    unknown = {name for name in adapter_names if name != BASE_ADAPTER} - known
    if unknown:
        raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
    num_beams = kwargs.get("num_beams")
    if isinstance(num_beams, int) and num_beams > 1:
        adapter_names = [name for name in adapter_names for _ in range(num_beams)]
    hook = partial(_inject_adapter_names, adapter_names=list(adapter_names))
    handles = [module.register_forward_pre_hook(hook, with_kwargs=True)
               for module in tuner.modules() if isinstance(module, (layer_cls, AuxiliaryTrainingWrapper))]
    for layer in layers:
        layer.mixed_batch_cache = {}
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            layer.mixed_batch_cache = None


def check_forward_args(layer, x: torch.Tensor, adapter_names: Sequence[str] | None) -> None:
    """The per-layer checks of LoRA: one name per row, and nothing merged into the base weight."""
    if adapter_names is None:
        return
    if len(x) != len(adapter_names):
        raise ValueError("Length of `adapter_names` should be the same as the number of inputs, but got "
                         f"{len(adapter_names)} and {len(x)} respectively.")
    if layer.merged:
        raise ValueError("Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` "
                         "first.")


def sub_batches(adapter_names: Sequence[str], device: torch.device) -> list[tuple[str, torch.Tensor]]:
    """``[(adapter, row indices)]`` for every adapter named in the batch except ``"__base__"``, in first-seen order."""
    rows: dict[str, list[int]] = {}
    for index, name in enumerate(adapter_names):
        rows.setdefault(name, []).append(index)
    rows.pop(BASE_ADAPTER, None)
    return [(name, torch.tensor(indices, device=device)) for name, indices in rows.items()]
