"""Export a MoS adapter as an exactly equivalent vanilla PEFT LoRA adapter.

Once assembled, every layer's A ``(r, d_in)`` and B ``(d_out, r)`` are ordinary rank-r LoRA factors, so writing them
as ``lora_A.weight`` / ``lora_B.weight`` with the same ``r`` and ``lora_alpha`` gives a ``peft_type: LORA`` adapter
with identical outputs (what vLLM and plain ``peft`` serve). The compact adapter stays the thing to store; the
export is ``r / R`` times larger than the pools (the LoRA a server keeps resident).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from prolora.export import _atomic_output_dir
from prolora.mos.layer import MosLayer

logger = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."


def _target_modules(peft_model, adapted: list[str]) -> list[str] | str:
    """Leaf names when they select exactly the adapted modules among the base model's linears, else an exact regex."""
    leaves = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    candidates = {name for name, module in peft_model.get_base_model().named_modules()
                  if name.rsplit(".", 1)[-1] in leaves and (isinstance(module, (torch.nn.Linear, MosLayer)))}
    if candidates == set(adapted):
        return leaves
    return "^(" + "|".join(re.escape(name) for name in sorted(adapted)) + ")$"


@torch.no_grad()
def export_mos_as_lora(peft_model, output_dir: str | Path, adapter_name: str = "default",
                       dtype: torch.dtype | None = None) -> Path:
    """Write ``adapter_name`` of a MoS ``PeftModel`` to ``output_dir`` as a vanilla LoRA adapter (atomically).

    ``adapter_config.json`` gets ``peft_type: LORA`` with the same ``r`` / ``lora_alpha`` / dropout;
    ``adapter_model.safetensors`` gets ``<module>.lora_A.weight`` (r, d_in) and ``<module>.lora_B.weight``
    (d_out, r); ``modules_to_save`` weights are copied. ``dtype`` casts the factors (default: the adapter's).
    """
    config = peft_model.peft_config[adapter_name]
    if str(getattr(config.peft_type, "value", config.peft_type)) != "MOS":
        raise ValueError(f"adapter {adapter_name!r} is a {config.peft_type} adapter, not MoS")
    weights: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    for name, module in peft_model.named_modules():
        if isinstance(module, MosLayer) and module.has_adapter(adapter_name):
            A, B = module.assemble(adapter_name)
            if dtype is not None:
                A, B = A.to(dtype), B.to(dtype)
            weights[f"{name}.lora_A.weight"] = A.detach().cpu().contiguous()
            weights[f"{name}.lora_B.weight"] = B.detach().cpu().contiguous()
            adapted.append(name.removeprefix(_PEFT_PREFIX))
    if not adapted:
        raise ValueError(f"no MoS layer holds adapter {adapter_name!r}")
    for key, tensor in get_peft_model_state_dict(peft_model, adapter_name=adapter_name).items():
        if ".mos_" not in key:  # modules_to_save & co. are method-agnostic
            weights[key] = tensor.detach().cpu().contiguous()
    lora_config = LoraConfig(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=_target_modules(peft_model, adapted), bias="none",
                             task_type=config.task_type, modules_to_save=config.modules_to_save,
                             base_model_name_or_path=config.base_model_name_or_path, revision=config.revision,
                             inference_mode=True)
    output_dir = Path(output_dir)
    with _atomic_output_dir(output_dir) as tmp:
        lora_config.save_pretrained(str(tmp))
        save_file(weights, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    logger.info("exported %d MoS layers of adapter %r as vanilla LoRA to %s", len(adapted), adapter_name, output_dir)
    return output_dir
