"""Tied-LoRA (arXiv 2311.09578) as an out-of-tree PEFT method: one LoRA pair per projection type shared by all
layers, plus per-layer scaling vectors. Importing this package registers the PEFT type "TIED_LORA", so
`peft.get_peft_model(model, TiedLoraConfig(...))` and `PeftModel.from_pretrained(model, path)` work.
"""

from peft import mapping

from open_instruct.tied_lora.config import TiedLoraConfig, TiedLoraPeftType
from open_instruct.tied_lora.layer import Linear, TiedLoraLayer
from open_instruct.tied_lora.model import TiedLoraModel, shared_group_key

# `peft.utils.register_peft_method` only accepts members of PEFT's own PeftType enum, so fill the three
# dispatch tables it would fill (config class, tuner class, parameter-name prefix) directly.
mapping.PEFT_TYPE_TO_CONFIG_MAPPING[TiedLoraPeftType.TIED_LORA] = TiedLoraConfig
mapping.PEFT_TYPE_TO_TUNER_MAPPING[TiedLoraPeftType.TIED_LORA] = TiedLoraModel
mapping.PEFT_TYPE_TO_PREFIX_MAPPING[TiedLoraPeftType.TIED_LORA] = TiedLoraModel.prefix

__all__ = ["TiedLoraConfig", "TiedLoraPeftType", "TiedLoraModel", "TiedLoraLayer", "Linear", "shared_group_key"]
