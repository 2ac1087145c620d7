"""PRoLoRA (Partial Rotation Empowers More Parameter-Efficient LoRA) as an out-of-tree PEFT method.

Importing this package registers the PEFT type ``PROLORA`` so that ``peft.get_peft_model``,
``PeftModel.from_pretrained``, ``load_adapter``, merging and unloading work with `ProLoraConfig`;
likewise ``MOS`` for `MosConfig` (Mixture of Shards, the authors' cross-layer follow-up, in `prolora.mos`).
The math lives in `prolora.rebuild`; this package depends on torch, peft and safetensors only.
"""

from prolora.config import ProLoraConfig, ProLoraPeftType
from prolora.export import export_as_lora
from prolora.layer import Linear, ProLoraLayer
from prolora.model import ProLoraModel
from prolora.mos import MosConfig, MosModel, MosPeftType, export_mos_as_lora
from prolora.params import count_adapter_params, lora_layer_params, prolora_layer_params
from prolora.peft_compat import register_peft_type
from prolora.rebuild import rebuild_A, rebuild_B

register_peft_type(ProLoraPeftType.PROLORA, ProLoraConfig, ProLoraModel)
register_peft_type(MosPeftType.MOS, MosConfig, MosModel)

__all__ = [
    "Linear",
    "MosConfig",
    "MosModel",
    "MosPeftType",
    "ProLoraConfig",
    "ProLoraLayer",
    "ProLoraModel",
    "ProLoraPeftType",
    "count_adapter_params",
    "export_as_lora",
    "export_mos_as_lora",
    "lora_layer_params",
    "prolora_layer_params",
    "rebuild_A",
    "rebuild_B",
]
