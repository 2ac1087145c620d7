"""`MosModel`: decides where MoS layers go, which group each joins, and owns the groups' shard pools.

Groups: with ``global_pool=True`` every adapted linear layer is keyed by its attribute name and shape
(``q_proj_out64_in64``), so a Llama gets one pool pair per projection type (q, k, v, o, gate, up, down) — the
paper's grouping; projections whose shapes differ between layers get separate pools. With ``global_pool=False``
every layer is a group of its own. A layer's ordinal (which private segment it owns) is its position among its
group's layers in module order.

Saving stores each pool once, under ``base_model.mos_pool_A.<adapter>.<group>`` / ``...mos_pool_B...``, plus every
layer's ``mos_index_A`` / ``mos_index_B``; the per-layer references to the pools are dropped on save and re-pointed
at the saved tensors on load.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from prolora.mixed_batch import adapter_names_hooks
from prolora.mos.config import MosConfig
from prolora.mos.layer import POOL_PARTS, Linear, MosLayer, adapter_dtype
from prolora.mos.rebuild import (
    PoolShape,
    check_pool_shape,
    init_pool_A_,
    init_pool_B_,
    pool_params,
    pool_size,
    select_indices,
    shard_width,
)
from prolora.peft_compat import LORA_TARGET_MODULES_MAPPING, get_in_out_features, is_supported_linear


class Member(NamedTuple):
    """Where one adapted module sits: its pool group, its ordinal in the group, the group's size, its dims."""

    group: str
    ordinal: int
    layers: int
    in_features: int
    out_features: int


def plan_groups(named_targets: list[tuple[str, int, int]], global_pool: bool) -> dict[str, Member]:
    """``{module name: Member}`` for the targets ``[(name, d_in, d_out)]`` in module order (see the module doc)."""
    groups: dict[str, list[str]] = {}
    dims = {}
    for position, (name, d_in, d_out) in enumerate(named_targets):
        leaf = name.rsplit(".", 1)[-1]
        key = f"{leaf}_out{d_out}_in{d_in}" + ("" if global_pool else f"_at{position}")
        groups.setdefault(key, []).append(name)
        dims[name] = (d_in, d_out)
    return {name: Member(key, i, len(names), *dims[name])
            for key, names in groups.items() for i, name in enumerate(names)}


def _module_names(model: nn.Module, cls: type) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, cls)]


class MosModel(BaseTuner):
    """MoS tuner (the rule is in `prolora.mos.rebuild`); use it through `peft.get_peft_model` after
    ``import prolora``.

    Example::

        import prolora
        from peft import get_peft_model
        model = get_peft_model(model, prolora.MosConfig(r=8, mos_r=1, shards_per_vector=2, private_r=0,
                                                        target_modules=["q_proj", "v_proj"]))
    """

    uses_shared_state: bool = True
    prefix: str = "mos_"
    tuner_layer_cls = MosLayer
    target_module_mapping = LORA_TARGET_MODULES_MAPPING

    def _pre_injection_hook(self, model: nn.Module, config: MosConfig, adapter_name: str) -> None:
        if "mos_pool_A" not in self._modules:  # adapter -> ParameterDict(group -> pool)
            self.mos_pool_A = nn.ModuleDict({})
            self.mos_pool_B = nn.ModuleDict({})
        if not hasattr(self, "_mos_plans"):
            self._mos_plans: dict[str, dict[str, Member]] = {}
        self._mos_plans.pop(adapter_name, None)  # planned on the first `_create_and_replace` (config prepared)

    def _plan(self, config: MosConfig, adapter_name: str) -> dict[str, Member]:
        """Every module this adapter will adapt, grouped (computed once per injection, from the prepared config)."""
        plan = self._mos_plans.get(adapter_name)
        if plan is not None:
            return plan
        tuner_layers = [name for name, _ in _module_names(self.model, BaseTunerLayer)]
        targets = []
        for key, module in self.model.named_modules():
            if not key or any(key.startswith(f"{layer}.") for layer in tuner_layers):
                continue  # inside an existing adapter layer (its base_layer and adapter internals)
            if not self._check_target_module_exists(config, key):
                continue
            base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
            if is_supported_linear(base):
                targets.append((key, *get_in_out_features(base)))
        plan = self._mos_plans[adapter_name] = plan_groups(targets, config.global_pool)
        for member in plan.values():
            check_pool_shape(PoolShape(config.r, config.mos_r, config.private_r, config.shards_per_vector,
                                       member.layers))
        return plan

    def _pools(self, config: MosConfig, adapter_name: str, member: Member, device, dtype):
        """The group's ``(P_A, P_B)`` for this adapter, created (and initialised) on first use."""
        if adapter_name not in self.mos_pool_A:
            self.mos_pool_A[adapter_name] = nn.ParameterDict({})
            self.mos_pool_B[adapter_name] = nn.ParameterDict({})
        bank_A, bank_B = self.mos_pool_A[adapter_name], self.mos_pool_B[adapter_name]
        if member.group not in bank_A:
            l = config.shards_per_vector  # noqa: E741 - the paper's symbol
            n = pool_size(config.mos_r, member.layers, l)
            pool_A = torch.empty(n, shard_width(member.in_features, l), device=device, dtype=dtype)
            pool_B = torch.empty(n, shard_width(member.out_features, l), device=device, dtype=dtype)
            if pool_A.device.type != "meta":
                init_pool_A_(pool_A, member.in_features)
                init_pool_B_(pool_B, config.r, zero=config.init_weights)
            bank_A[member.group], bank_B[member.group] = nn.Parameter(pool_A), nn.Parameter(pool_B)
        return bank_A[member.group], bank_B[member.group]

    def _create_and_replace(self, config: MosConfig, adapter_name, target, target_name, parent, current_key,
                            **optional_kwargs):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not is_supported_linear(base):
            raise TypeError(f"MoS target module '{current_key}' is a {type(base).__name__}; only linear layers are "
                            "supported")
        d_in, d_out = get_in_out_features(base)
        for name, features in (("in", d_in), ("out", d_out)):
            if config.shards_per_vector > features:
                raise ValueError(f"shards_per_vector={config.shards_per_vector} exceeds {name}_features={features} "
                                 f"of target module '{current_key}'")
        member = self._plan(config, adapter_name).get(current_key)
        if member is None:
            raise ValueError(f"MoS: module '{current_key}' was not among the planned targets of adapter "
                             f"{adapter_name!r}")
        pool_A, pool_B = self._pools(config, adapter_name, member, base.weight.device, adapter_dtype(base))
        shape = PoolShape(config.r, config.mos_r, config.private_r, config.shards_per_vector, member.layers)
        index_A, index_B = select_indices(shape, member.ordinal, config.subset_selection, config.pair_dissociation)
        args = (pool_A, pool_B, member.group, index_A, index_B, config)
        if isinstance(target, MosLayer):
            target.update_layer(adapter_name, *args, inference_mode=config.inference_mode)
            return
        new_module = Linear(target, adapter_name, *args)
        if adapter_name not in self.active_adapters:
            new_module.set_adapter(self.active_adapters)  # a new adapter on a fresh layer stays inactive
        self._replace_module(parent, target_name, new_module, target)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """PEFT's mixed-batch extension point: routes ``adapter_names=[...]`` to the layers (`prolora.mixed_batch`)."""
        with adapter_names_hooks(self, MosLayer, **kwargs):
            yield

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for part in POOL_PARTS:
            bank = getattr(self, part)
            if adapter_name in bank:
                del bank[adapter_name]

    def _retie(self, adapter_name: str) -> None:
        """Point every layer's reference of ``adapter_name`` at the tuner's pools again."""
        for _, layer in _module_names(self.model, MosLayer):
            if adapter_name in layer.pool_key:
                for part in POOL_PARTS:
                    getattr(layer, part)[adapter_name] = getattr(self, part)[adapter_name][layer.pool_key[adapter_name]]

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's upcast of float16/bfloat16 adapter weights to float32, done once on the tuner's pools (PEFT's own
        cast would give every layer its own copy and untie them); the layers are then re-pointed."""
        if not autocast_adapter_dtype or "mos_pool_A" not in self._modules or adapter_name not in self.mos_pool_A:
            return
        for part in POOL_PARTS:
            bank = getattr(self, part)[adapter_name]
            for key in list(bank):
                if bank[key].dtype in (torch.float16, torch.bfloat16):
                    bank[key] = nn.Parameter(bank[key].detach().float(), requires_grad=bank[key].requires_grad)
        self._retie(adapter_name)

    # ---- save / load: each pool once ----------------------------------------------------------------------

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        layer_refs = tuple(f"{name}.{part}." for name, _ in _module_names(model, MosLayer) for part in POOL_PARTS)
        return {k: v for k, v in selected.items() if not k.startswith(layer_refs)}

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        tuners = _module_names(model, MosModel)
        if len(tuners) != 1:
            raise ValueError(f"expected one MosModel inside the model, found {len(tuners)}")
        tuner_name = tuners[0][0]
        for layer_name, layer in _module_names(model, MosLayer):
            if adapter_name not in layer.pool_key:
                continue
            for part in POOL_PARTS:
                source = f"{tuner_name}.{part}.{adapter_name}.{layer.pool_key[adapter_name]}"
                if source not in remapped:
                    raise KeyError(f"MoS checkpoint lacks the pool {source!r} needed by {layer_name}")
                if not isinstance(remapped[source], nn.Parameter):
                    # One Parameter object under the tuner's key and every layer's: loading with assign=True
                    # (low_cpu_mem_usage) then puts that same object everywhere, so the layers stay tied.
                    remapped[source] = nn.Parameter(remapped[source], requires_grad=False)
                remapped[f"{layer_name}.{part}.{adapter_name}"] = remapped[source]
        return remapped


def count_mos_params(model: nn.Module, config: MosConfig) -> int:
    """Trainable parameters that ``config`` adds to an un-adapted ``model``: the sum over its groups of
    ``R * L * l * (ceil(d_in / l) + ceil(d_out / l))`` (`prolora.mos.rebuild.pool_params`)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    from prolora.peft_compat import include_all_linear_layers

    config = include_all_linear_layers(config, model)
    targets = [(name, *get_in_out_features(module)) for name, module in model.named_modules()
               if name and is_supported_linear(module) and check_target_module_exists(config, name)]
    if not targets:
        raise ValueError(f"no linear module of the model matches target_modules={config.target_modules!r}")
    groups = {member.group: member for member in plan_groups(targets, config.global_pool).values()}
    return sum(pool_params(m.in_features, m.out_features, config.mos_r, m.layers, config.shards_per_vector)
               for m in groups.values())
