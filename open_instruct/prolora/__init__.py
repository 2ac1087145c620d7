"""PRoLoRA (Partial Rotation Empowers More Parameter-Efficient LoRA) as an out-of-tree PEFT method.

Importing this package registers the PEFT type ``PROLORA`` so that ``peft.get_peft_model``,
``PeftModel.from_pretrained``, ``load_adapter``, merging and unloading work with `ProLoraConfig`.
The math lives in `open_instruct.prolora.rebuild`; this package depends on torch, peft and safetensors only.
"""

from peft import mapping as _peft_mapping

from open_instruct.prolora.config import ProLoraConfig, ProLoraPeftType
from open_instruct.prolora.export import export_as_lora
from open_instruct.prolora.layer import Linear, ProLoraLayer
from open_instruct.prolora.model import ProLoraModel
from open_instruct.prolora.params import count_adapter_params, lora_layer_params, prolora_layer_params
from open_instruct.prolora.rebuild import rebuild_A, rebuild_B


def _register() -> None:
    # peft.utils.register_peft_method only accepts members of PEFT's closed PeftType enum, so fill the three
    # mappings it would fill ourselves (these are what get_peft_model / PeftConfig / PeftModel consult).
    key = ProLoraPeftType.PROLORA
    _peft_mapping.PEFT_TYPE_TO_CONFIG_MAPPING[key] = ProLoraConfig
    _peft_mapping.PEFT_TYPE_TO_TUNER_MAPPING[key] = ProLoraModel
    _peft_mapping.PEFT_TYPE_TO_PREFIX_MAPPING[key] = ProLoraModel.prefix


_register()

__all__ = [
    "Linear",
    "ProLoraConfig",
    "ProLoraLayer",
    "ProLoraModel",
    "ProLoraPeftType",
    "count_adapter_params",
    "export_as_lora",
    "lora_layer_params",
    "prolora_layer_params",
    "rebuild_A",
    "rebuild_B",
]
