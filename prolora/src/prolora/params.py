"""Trainable-parameter accounting for LoRA and PRoLoRA (the spec's formula, with ceilings).

Per adapted linear layer ``d_in -> d_out``:

* LoRA:    ``r * (d_in + d_out)``
* PRoLoRA: ``(r - u) * ceil(d_in / m) + (r - u) * ceil(d_out / n) + u * (d_in + d_out)``

`count_adapter_params` sums this over the modules a config targets, which is what PEFT's
``print_trainable_parameters`` reports for the adapted model.
"""

from __future__ import annotations

from torch import nn

from prolora.rebuild import chunk_width


def lora_layer_params(d_in: int, d_out: int, r: int) -> int:
    return r * (d_in + d_out)


def prolora_layer_params(d_in: int, d_out: int, r: int, unshared_r: int = 0, m: int = 1, n: int = 1) -> int:
    shared_r = r - unshared_r
    return shared_r * chunk_width(d_in, m) + shared_r * chunk_width(d_out, n) + unshared_r * (d_in + d_out)


def target_linear_dims(model: nn.Module, config) -> dict[str, tuple[int, int]]:
    """``{module name: (d_in, d_out)}`` of the linear modules of ``model`` that ``config`` would adapt."""
    from peft.tuners.tuners_utils import check_target_module_exists

    from prolora.peft_compat import include_all_linear_layers

    config = include_all_linear_layers(config, model)
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name and check_target_module_exists(config, name)
    }


def count_adapter_params(model: nn.Module, config) -> int:
    """Trainable parameters that a `ProLoraConfig` (or a peft `LoraConfig`) adds to an un-adapted ``model``."""
    dims = target_linear_dims(model, config)
    if not dims:
        raise ValueError(f"no linear module of the model matches target_modules={config.target_modules!r}")
    if hasattr(config, "unshared_r"):
        m, n = config.reduce_lora_A_x, config.reduce_lora_B_x
        u = config.unshared_r
        return sum(prolora_layer_params(d_in, d_out, config.r, u, m, n) for d_in, d_out in dims.values())
    return sum(lora_layer_params(d_in, d_out, config.r) for d_in, d_out in dims.values())
