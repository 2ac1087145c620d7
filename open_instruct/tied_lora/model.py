"""`TiedLoraModel`: decides where Tied-LoRA layers go and owns the shared A/B pairs.

Grouping: every adapted nn.Linear is keyed by its attribute name and shape, e.g. ``q_proj_out64_in64``; all
layers with the same key share one (A, B). In a Llama model that means one pair per projection type (q, k, v,
o, gate, up, down); projections whose shapes differ between layers would get separate pairs.

Saving stores each shared matrix once, under ``base_model.tied_lora_A.<group>`` / ``base_model.tied_lora_B.<group>``,
plus the per-layer ``tied_lora_u`` / ``tied_lora_v``; the per-layer references to the shared pair are dropped
on save and re-pointed at the saved tensors on load.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from open_instruct.tied_lora.config import TiedLoraConfig
from open_instruct.tied_lora.layer import Linear, TiedLoraLayer, adapter_dtype, init_shared_pair
from prolora.mixed_batch import adapter_names_hooks
from prolora.peft_compat import LORA_TARGET_MODULES_MAPPING, get_in_out_features, is_supported_linear

SHARED_PARTS = ("tied_lora_A", "tied_lora_B")


def shared_group_key(target_name: str, d_in: int, d_out: int) -> str:
    """Name of the shared pair used by a layer called `target_name` with this shape (no dots: a ParameterDict key)."""
    return f"{target_name}_out{d_out}_in{d_in}"


def _module_names(model: nn.Module, cls: type) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, cls)]


class TiedLoraModel(BaseTuner):
    """Tied-LoRA tuner (see `open_instruct.tied_lora.layer` for the math); use it through `peft.get_peft_model`."""

    uses_shared_state: bool = True
    prefix: str = "tied_lora_"
    tuner_layer_cls = TiedLoraLayer
    target_module_mapping = LORA_TARGET_MODULES_MAPPING

    def _pre_injection_hook(self, model: nn.Module, config: TiedLoraConfig, adapter_name: str) -> None:
        # adapter -> ParameterDict(group -> Parameter); created once, later adapters add entries.
        if "tied_lora_A" not in self._modules:
            self.tied_lora_A = nn.ModuleDict({})
            self.tied_lora_B = nn.ModuleDict({})

    def _shared_pair(self, config: TiedLoraConfig, adapter_name: str, key: str, d_in: int, d_out: int, device,
                     dtype: torch.dtype):
        """The (A, B) of group `key` for this adapter, created on first use."""
        if adapter_name not in self.tied_lora_A:
            self.tied_lora_A[adapter_name] = nn.ParameterDict({})
            self.tied_lora_B[adapter_name] = nn.ParameterDict({})
        bank_A, bank_B = self.tied_lora_A[adapter_name], self.tied_lora_B[adapter_name]
        if key not in bank_A:
            bank_A[key], bank_B[key] = init_shared_pair(config, d_in, d_out, device=device, dtype=dtype)
        return bank_A[key], bank_B[key]

    def _create_and_replace(self, config: TiedLoraConfig, adapter_name, target, target_name, parent, current_key,
                            **optional_kwargs):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not is_supported_linear(base):
            raise TypeError(f"Tied-LoRA only adapts (optionally quantized) linear layers; {current_key} is "
                            f"{type(base).__name__}")
        d_in, d_out = get_in_out_features(base)
        key = shared_group_key(target_name, d_in, d_out)
        shared_A, shared_B = self._shared_pair(config, adapter_name, key, d_in, d_out, base.weight.device,
                                               adapter_dtype(base))
        if isinstance(target, TiedLoraLayer):
            target.update_layer(adapter_name, shared_A, shared_B, key, config, inference_mode=config.inference_mode)
            return
        new_module = Linear(target, adapter_name, shared_A, shared_B, key, config)
        if adapter_name not in self.active_adapters:
            # A second adapter on a fresh layer: keep the layer on the model's active adapter(s), so the new
            # adapter stays inactive and frozen (and the shared params of the active one keep their grads).
            new_module.set_adapter(self.active_adapters)
        self._replace_module(parent, target_name, new_module, target)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """PEFT's mixed-batch extension point: routes ``adapter_names=[...]`` to the layers (`prolora.mixed_batch`)."""
        with adapter_names_hooks(self, TiedLoraLayer, **kwargs):
            yield

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for part in SHARED_PARTS:
            bank = getattr(self, part)
            if adapter_name in bank:
                del bank[adapter_name]

    def _retie(self, adapter_name: str) -> None:
        """Point every layer's reference of ``adapter_name`` at the tuner's shared A/B again."""
        for _, layer in _module_names(self.model, TiedLoraLayer):
            if adapter_name in layer.shared_key:
                key = layer.shared_key[adapter_name]
                for part in SHARED_PARTS:
                    getattr(layer, part)[adapter_name] = getattr(self, part)[adapter_name][key]

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's upcast of float16/bfloat16 adapter weights to float32 (``autocast_adapter_dtype=True``).

        PEFT's own cast replaces each layer's entry with a cast copy, which would give every layer its own A and B
        (and make frozen factors trainable again); so the shared pair is cast once, on the tuner, the layers are
        re-pointed at it, and each layer's u and v are cast keeping their ``requires_grad``.
        """
        if not autocast_adapter_dtype or "tied_lora_A" not in self._modules or adapter_name not in self.tied_lora_A:
            return
        banks = [getattr(self, part)[adapter_name] for part in SHARED_PARTS]
        vectors = [getattr(layer, part) for _, layer in _module_names(self.model, TiedLoraLayer)
                   for part in ("tied_lora_u", "tied_lora_v") if adapter_name in getattr(layer, part)]
        for params, key in [(bank, key) for bank in banks for key in bank] + [(v, adapter_name) for v in vectors]:
            if params[key].dtype in (torch.float16, torch.bfloat16):
                params[key] = nn.Parameter(params[key].detach().float(), requires_grad=params[key].requires_grad)
        self._retie(adapter_name)

    # ---- save / load: each shared matrix once -------------------------------------------------------------

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        layers = _module_names(model, TiedLoraLayer)
        layer_refs = tuple(f"{name}.{part}." for name, _ in layers for part in SHARED_PARTS)
        return {k: v for k, v in selected.items() if not k.startswith(layer_refs)}

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        tuners = _module_names(model, TiedLoraModel)
        if len(tuners) != 1:
            raise ValueError(f"expected one TiedLoraModel inside the model, found {len(tuners)}")
        tuner_name = tuners[0][0]
        for layer_name, layer in _module_names(model, TiedLoraLayer):
            if adapter_name not in layer.shared_key:
                continue
            for part in SHARED_PARTS:
                source = f"{tuner_name}.{part}.{adapter_name}.{layer.shared_key[adapter_name]}"
                if source not in remapped:
                    raise KeyError(f"Tied-LoRA checkpoint lacks the shared matrix {source!r} needed by {layer_name}")
                if not isinstance(remapped[source], nn.Parameter):
                    # One Parameter object under the tuner's key and every layer's: loading with assign=True
                    # (low_cpu_mem_usage) then puts that same object everywhere, so the layers stay tied.
                    remapped[source] = nn.Parameter(remapped[source], requires_grad=False)
                remapped[f"{layer_name}.{part}.{adapter_name}"] = remapped[source]
        return remapped
