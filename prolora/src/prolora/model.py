"""`ProLoraModel`: the PEFT tuner that decides where PRoLoRA layers go (everything else is inherited from PEFT)."""

from __future__ import annotations

from contextlib import contextmanager

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

from prolora.config import ProLoraConfig
from prolora.layer import Linear, ProLoraLayer
from prolora.mixed_batch import adapter_names_hooks
from prolora.peft_compat import LORA_TARGET_MODULES_MAPPING, get_in_out_features, is_supported_linear


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
    target_module_mapping = LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(self, config: ProLoraConfig, adapter_name, target, target_name, parent, current_key,
                            **kwargs):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not is_supported_linear(base):
            raise TypeError(
                f"PRoLoRA target module '{current_key}' is a {type(base).__name__}; only linear layers are supported"
            )
        in_features, out_features = get_in_out_features(base)
        if config.reduce_lora_A_x > in_features:
            raise ValueError(
                f"reduce_lora_A_x={config.reduce_lora_A_x} exceeds in_features={in_features} "
                f"of target module '{current_key}'"
            )
        if config.reduce_lora_B_x > out_features:
            raise ValueError(
                f"reduce_lora_B_x={config.reduce_lora_B_x} exceeds out_features={out_features} "
                f"of target module '{current_key}'"
            )
        if isinstance(target, ProLoraLayer):
            target.update_layer(adapter_name, config)
            return
        new_module = Linear(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # a newly added, inactive adapter is not trained
        self._replace_module(parent, target_name, new_module, target)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """PEFT enters this around every forward/generate: routes ``adapter_names=[...]`` (mixed batches) to the
        layers, with LoRA's checks (see `prolora.mixed_batch`)."""
        with adapter_names_hooks(self, ProLoraLayer, **kwargs):
            yield
