"""Every PEFT internal that PRoLoRA and the Tied-LoRA baseline rely on, in one place.

PEFT has no public API for out-of-tree tuners: its ``PeftType`` is a closed enum, ``register_peft_method`` only
accepts its members, and a few helpers a tuner needs are underscore-private. Everything of that kind is imported
or re-implemented here and nowhere else, so a PEFT upgrade that moves one of them touches this file only.
Tested with the PEFT versions in ``prolora/pyproject.toml``.

Besides the names below, both tuners follow PEFT's documented subclass protocol (``BaseTuner._create_and_replace``,
``BaseTunerLayer.update_layer`` / ``merge`` / ``unmerge`` / ``get_delta_weight``, ``adapter_layer_names``,
``other_param_names``); Tied-LoRA also overrides ``_get_adapter_state_dict`` / ``_remap_adapter_state_dict_for_load``
and ``_cast_adapter_dtype``, the hooks PEFT's own shared-state tuners (VeRA, VB-LoRA) use.
"""

from __future__ import annotations

from peft import mapping as _mapping
from peft.config import PeftConfig
from peft.tuners import tuners_utils as _tuners_utils
from peft.tuners._buffer_dict import BufferDict  # per-adapter buffers; integer ones are never cast (MoS indices)
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, resolve_quantization_backend
from peft.utils.other import AuxiliaryTrainingWrapper  # modules_to_save & co.: they take `adapter_names` too
from torch import nn

# The default ``target_modules`` per model type when a config leaves it None (LoRA's table, shared by both tuners).
LORA_TARGET_MODULES_MAPPING = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

__all__ = [
    "AuxiliaryTrainingWrapper",
    "BufferDict",
    "LORA_TARGET_MODULES_MAPPING",
    "get_in_out_features",
    "include_all_linear_layers",
    "is_supported_linear",
    "register_peft_type",
]


def register_peft_type(peft_type: str, config_cls: type[PeftConfig], tuner_cls: type) -> None:
    """Make ``get_peft_model``, ``PeftConfig.from_pretrained`` and ``PeftModel`` know an out-of-tree method.

    Fills the three tables ``peft.utils.register_peft_method`` would fill (config class, tuner class, parameter-name
    prefix), which that function refuses for types outside PEFT's enum. Idempotent.
    """
    _mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    _mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = tuner_cls
    _mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = tuner_cls.prefix


def get_in_out_features(module: nn.Module) -> tuple[int, int] | tuple[None, None]:
    """``(in_features, out_features)`` of a (possibly quantized or ZeRO-3 partitioned) linear layer, from its
    attributes rather than its weight's shape; ``(None, None)`` when PEFT cannot tell."""
    return _tuners_utils._get_in_out_features(module)


def include_all_linear_layers(config: PeftConfig, model: nn.Module) -> PeftConfig:
    """``config`` with ``target_modules="all-linear"`` expanded to the model's linear layers (else unchanged)."""
    return _tuners_utils._maybe_include_all_linear_layers(config, model)


def is_supported_linear(module: nn.Module) -> bool:
    """An ``nn.Linear``, or a quantized linear layer PEFT knows how to (de)quantize (bitsandbytes 4/8-bit, ...)."""
    if isinstance(module, nn.Linear):
        return True
    backend = resolve_quantization_backend(module)
    return backend is not None and backend.layer_type == "linear"

