"""`ProLoraModel`: the PEFT tuner that decides where PRoLoRA layers go (everything else is inherited from PEFT)."""

from __future__ import annotations

from torch import nn

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _get_in_out_features
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, resolve_quantization_backend

from prolora.config import ProLoraConfig
from prolora.layer import Linear, ProLoraLayer


def _is_supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    backend = resolve_quantization_backend(module)
    return backend is not None and backend.layer_type == "linear"


class ProLoraModel(BaseTuner):
    """Wraps a transformers model with PRoLoRA adapters (merge/unmerge/unload/set_adapter/delete come from PEFT).

    Example::

        import prolora  # registers the PEFT type
        from peft import get_peft_model
        model = get_peft_model(model, ProLoraConfig(r=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2,
                                                    target_modules=["q_proj", "v_proj"]))
    """

    prefix: str = "prolora_"
    tuner_layer_cls = ProLoraLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(self, config: ProLoraConfig, adapter_name, target, target_name, parent, current_key, **kwargs):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not _is_supported(base):
            raise TypeError(
                f"PRoLoRA target module '{current_key}' is a {type(base).__name__}; only linear layers are supported"
            )
        in_features, out_features = _get_in_out_features(base)
        if config.reduce_lora_A_x > in_features:
            raise ValueError(
                f"reduce_lora_A_x={config.reduce_lora_A_x} exceeds in_features={in_features} of target module '{current_key}'"
            )
        if config.reduce_lora_B_x > out_features:
            raise ValueError(
                f"reduce_lora_B_x={config.reduce_lora_B_x} exceeds out_features={out_features} of target module '{current_key}'"
            )
        if isinstance(target, ProLoraLayer):
            target.update_layer(adapter_name, config)
            return
        new_module = Linear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # a newly added, inactive adapter is not trained
        self._replace_module(parent, target_name, new_module, target)
