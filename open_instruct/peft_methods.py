"""The one registry of the fine-tuning methods: LoRA, PRoLoRA, MoS, VeRA and Tied-LoRA.

Each `PeftMethod` says everything the harness needs to know about a method, so finetune (`--peft_method`), merge,
the evals (which PEFT type an adapter folder holds), the grid, the summarizer and the parameter calculator read it
from here instead of keeping their own lists:

* ``name``: the ``--peft_method`` value and the grid's ``method``; ``label``: its name in tables;
* ``peft_type``: what ``adapter_config.json`` records; ``package``: the module whose import registers that type with
  PEFT (None for PEFT's own methods);
* ``build``: ``finetune.py``'s parsed arguments -> the PEFT config (reading ``lora_rank``, ``lora_alpha``,
  ``lora_dropout``, ``lora_target_modules`` and, for PRoLoRA only, the `PROLORA_SETTINGS`, for MoS only the
  `MOS_SETTINGS`);
* ``count_params``: the trainable-parameter formula over a decoder's projection shapes (`open_instruct.paper.params`).

Also defined here, once: the seven Llama projection names (`LLAMA_PROJECTIONS`) and the spelling of the PRoLoRA
and MoS settings across config, command line and grid (`PROLORA_SETTINGS`, `MOS_SETTINGS`; `add_mos_arguments`
puts the MoS flags on finetune's argument group). Importing this module is cheap (no torch, no
peft): the builders import what they need when called.
"""

from __future__ import annotations

import importlib
from argparse import Namespace
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from peft import PeftConfig

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# projection -> (d_in, d_out) of one decoder layer
Shapes = dict[str, tuple[int, int]]


@dataclass(frozen=True)
class ProLoraSetting:
    """One PRoLoRA hyper-parameter, spelled as `prolora.ProLoraConfig` spells it (the authors' names).

    ``flag`` is finetune's command-line destination (a ``--no_*`` switch for the two booleans, ``negated``), and
    ``aliases`` the short names a grid YAML may use instead (the paper's letters).
    """

    field: str
    flag: str
    default: object
    aliases: tuple[str, ...] = ()
    negated: bool = False

    def config_value(self, args: Namespace):
        value = getattr(args, self.flag)
        return not value if self.negated else value

    def flag_value(self, config_value):
        return not config_value if self.negated else config_value


PROLORA_SETTINGS = (
    ProLoraSetting("unshared_r", "unshared_r", 0, ("u",)),
    ProLoraSetting("reduce_lora_A_x", "reduce_lora_A_x", 1, ("m",)),
    ProLoraSetting("reduce_lora_B_x", "reduce_lora_B_x", 1, ("n",)),
    ProLoraSetting("enable_lora_rotation", "no_lora_rotation", True, ("rotation",), negated=True),
    ProLoraSetting("rectified_init", "no_rectified_init", True, negated=True),
)


# MoS (Mixture of Shards, `prolora.mos`): r is --lora_rank; one switch per differentiation strategy of the paper.
MOS_SETTINGS = (
    ProLoraSetting("mos_r", "mos_r", None, ("R",)),
    ProLoraSetting("private_r", "mos_private_r", 0, ("p",)),
    ProLoraSetting("shards_per_vector", "mos_shards_per_vector", 1, ("l",)),
    ProLoraSetting("subset_selection", "no_mos_subset_selection", True, negated=True),
    ProLoraSetting("pair_dissociation", "no_mos_pair_dissociation", True, negated=True),
    ProLoraSetting("global_pool", "no_mos_global_pool", True, negated=True),
)

_MOS_HELP = {
    "mos_r": "MoS: equivalent LoRA rank R of the shard pools (trainable count = LoRA at rank R; default: "
             "--lora_rank)",
    "mos_private_r": "MoS: rank vectors per layer made of private shards (shard privatization, p)",
    "mos_shards_per_vector": "MoS: shards per rank vector (vector sharding, l; 1 = whole vectors)",
    "no_mos_subset_selection": "MoS ablation: every layer takes the same shared shards",
    "no_mos_pair_dissociation": "MoS ablation: B uses A's shard indices",
    "no_mos_global_pool": "MoS ablation: a shard pool per layer instead of per projection type",
}


def add_mos_arguments(group) -> None:
    """Add the `MOS_SETTINGS` flags to an argparse group (finetune's "parameter-efficient fine-tuning")."""
    for setting in MOS_SETTINGS:
        if setting.negated:
            group.add_argument(f"--{setting.flag}", action="store_true", help=_MOS_HELP[setting.flag])
        else:
            group.add_argument(f"--{setting.flag}", type=int, default=setting.default, help=_MOS_HELP[setting.flag])


def mos_setting(name: str) -> Optional[ProLoraSetting]:
    """The MoS setting called ``name`` (its config field, flag or an alias), or None."""
    return next((s for s in MOS_SETTINGS if name in (s.field, s.flag) or name in s.aliases), None)


def prolora_setting(name: str) -> Optional[ProLoraSetting]:
    """The setting called ``name`` (its config field or an alias), or None."""
    return next((s for s in PROLORA_SETTINGS if name == s.field or name in s.aliases), None)


def target_modules(args: Namespace) -> list[str] | str:
    """`--lora_target_modules` as PEFT wants it: a list of module names, or the string "all-linear"."""
    names = list(args.lora_target_modules)
    return "all-linear" if names == ["all-linear"] else names


# ------------------------------------------------------------------------------------------ config builders

def build_lora(args: Namespace) -> PeftConfig:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha,
                      lora_dropout=args.lora_dropout, bias="none", target_modules=target_modules(args))


def build_prolora(args: Namespace) -> PeftConfig:
    from prolora import ProLoraConfig

    settings = {s.field: s.config_value(args) for s in PROLORA_SETTINGS}
    return ProLoraConfig(task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha,
                         lora_dropout=args.lora_dropout, target_modules=target_modules(args), **settings)


def build_mos(args: Namespace) -> PeftConfig:
    from prolora import MosConfig

    # A parser without the MoS flags gets the defaults (the settings' own).
    settings = {s.field: s.config_value(args) if hasattr(args, s.flag) else s.default for s in MOS_SETTINGS}
    return MosConfig(task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha,
                     lora_dropout=args.lora_dropout, target_modules=target_modules(args), **settings)


def build_vera(args: Namespace) -> PeftConfig:
    from peft import VeraConfig

    # VeRA has no alpha: its per-layer scaling vectors play that role.
    return VeraConfig(task_type="CAUSAL_LM", r=args.lora_rank, vera_dropout=args.lora_dropout,
                      target_modules=target_modules(args))


def build_tied_lora(args: Namespace) -> PeftConfig:
    from open_instruct.tied_lora import TiedLoraConfig

    return TiedLoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=target_modules(args), task_type="CAUSAL_LM")


# ------------------------------------------------------------------------------------- parameter formulas
# Each: (projection shapes, number of layers, r, u, m, n) -> trainable parameters of the whole decoder.

def lora_params(shapes: Shapes, num_layers: int, r: int, u: int = 0, m: int = 1, n: int = 1) -> int:
    from prolora.params import lora_layer_params

    return num_layers * sum(lora_layer_params(d_in, d_out, r) for d_in, d_out in shapes.values())


def prolora_params(shapes: Shapes, num_layers: int, r: int, u: int = 0, m: int = 1, n: int = 1) -> int:
    from prolora.params import prolora_layer_params

    return num_layers * sum(prolora_layer_params(d_in, d_out, r, u, m, n) for d_in, d_out in shapes.values())


def mos_params(shapes: Shapes, num_layers: int, r: int, u: int = 0, m: int = 1, n: int = 1, *,
               mos_r: Optional[int] = None, shards_per_vector: int = 1) -> int:
    # One pool pair per projection type over all layers: R * L * l * (ceil(d_in/l) + ceil(d_out/l)) (`prolora.mos`);
    # the same with a pool per layer. Neither r nor private_r changes it.
    from prolora.mos import pool_params

    R = r if mos_r is None else mos_r
    return sum(pool_params(d_in, d_out, R, num_layers, shards_per_vector) for d_in, d_out in shapes.values())


def vera_params(shapes: Shapes, num_layers: int, r: int, u: int = 0, m: int = 1, n: int = 1) -> int:
    # PEFT's trainable lambda_b (d_out) and lambda_d (r) per layer; its random A/B are frozen.
    return num_layers * sum(d_out + r for _, d_out in shapes.values())


def tied_lora_params(shapes: Shapes, num_layers: int, r: int, u: int = 0, m: int = 1, n: int = 1) -> int:
    # One shared A, B per projection type, plus per-layer u (r) and v (d_out); all four trained (vBuA).
    shared = sum(r * (d_in + d_out) for d_in, d_out in shapes.values())
    return shared + num_layers * sum(r + d_out for _, d_out in shapes.values())


# ------------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class PeftMethod:
    name: str
    label: str
    peft_type: str
    package: Optional[str]
    build: Callable[[Namespace], "PeftConfig"]
    count_params: Callable[..., int]
    has_alpha: bool = True

    def register(self) -> None:
        """Import the package that registers this method's PEFT type (nothing to do for PEFT's own)."""
        if self.package:
            importlib.import_module(self.package)


METHODS: dict[str, PeftMethod] = {m.name: m for m in (
    PeftMethod("lora", "LoRA", "LORA", None, build_lora, lora_params),
    PeftMethod("prolora", "PRoLoRA", "PROLORA", "prolora", build_prolora, prolora_params),
    PeftMethod("mos", "MoS", "MOS", "prolora", build_mos, mos_params),
    PeftMethod("vera", "VeRA", "VERA", None, build_vera, vera_params, has_alpha=False),
    PeftMethod("tied_lora", "Tied-LoRA", "TIED_LORA", "open_instruct.tied_lora", build_tied_lora, tied_lora_params),
)}


def method_for_peft_type(peft_type: object) -> Optional[PeftMethod]:
    """The method whose adapters record ``peft_type`` (a str or a PEFT enum member; any case), or None."""
    text = str(getattr(peft_type, "value", peft_type) or "").upper()
    return next((m for m in METHODS.values() if m.peft_type == text), None)


def register_all() -> None:
    """Make PEFT know every method's type, so any adapter folder of ours loads (merge_lora, the evals)."""
    for method in METHODS.values():
        method.register()


def build_peft_config(args: Namespace) -> PeftConfig:
    """The PEFT config for `args.peft_method`; raises ValueError for flags that method does not use."""
    if args.peft_method not in METHODS:
        raise ValueError(f"unknown --peft_method {args.peft_method!r}; choose from {sorted(METHODS)}")
    if args.peft_method != "prolora":
        for setting in PROLORA_SETTINGS:
            value = getattr(args, setting.flag)
            if value != setting.flag_value(setting.default):
                raise ValueError(f"--{setting.flag}={value} only applies to --peft_method prolora, "
                                 f"not {args.peft_method}")
    if args.peft_method != "mos":
        for setting in MOS_SETTINGS:
            value = getattr(args, setting.flag, setting.flag_value(setting.default))
            if value != setting.flag_value(setting.default):
                raise ValueError(f"--{setting.flag}={value} only applies to --peft_method mos, not {args.peft_method}")
    return METHODS[args.peft_method].build(args)


def describe_peft_config(config: PeftConfig) -> dict:
    """A JSON-friendly summary of a PEFT config for all_results.json (sets become sorted lists)."""
    summary = {}
    for key, value in config.to_dict().items():
        if isinstance(value, (set, frozenset)):
            value = sorted(value)
        if value is None or isinstance(value, (str, int, float, bool, list, dict)):
            summary[key] = value
        else:
            summary[key] = str(value)
    return summary


# ------------------------------------------------------------------------------------------------- QLoRA

def qlora_compute_dtype(on_gpu: bool):
    """QLoRA's compute dtype: bfloat16 on a GPU, float32 on CPU (bitsandbytes' CPU kernels compute in fp32)."""
    import torch

    return torch.bfloat16 if on_gpu else torch.float32


def qlora_quantization_config(compute_dtype):
    """The QLoRA recipe (4-bit NF4 with double quantisation), the one both training and merging load the base with:
    an adapter trained on a base quantised one way must be merged into the same dequantised weights."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)
