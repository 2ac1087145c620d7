"""Tied-LoRA (arXiv 2311.09578) as an out-of-tree PEFT method: one LoRA pair per projection type shared by all
layers, plus per-layer scaling vectors. Importing this package registers the PEFT type "TIED_LORA", so
`peft.get_peft_model(model, TiedLoraConfig(...))` and `PeftModel.from_pretrained(model, path)` work.
"""

from open_instruct.tied_lora.config import TiedLoraConfig, TiedLoraPeftType
from open_instruct.tied_lora.layer import Linear, TiedLoraLayer
from open_instruct.tied_lora.model import TiedLoraModel, shared_group_key
from prolora.peft_compat import register_peft_type

register_peft_type(TiedLoraPeftType.TIED_LORA, TiedLoraConfig, TiedLoraModel)

__all__ = ["TiedLoraConfig", "TiedLoraPeftType", "TiedLoraModel", "TiedLoraLayer", "Linear", "shared_group_key"]
