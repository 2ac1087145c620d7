"""Build the PEFT config for `finetune.py --peft_method {lora,prolora,vera,tied_lora}` from its CLI values.

One builder per method, looked up by name in `PEFT_BUILDERS`. Each receives the parsed arguments and reads the
fields that method understands: `lora_rank`, `lora_alpha`, `lora_dropout`, `lora_target_modules` for all of them,
and the PRoLoRA fields (`unshared_r`, `reduce_lora_A_x`, `reduce_lora_B_x`, `no_lora_rotation`,
`no_rectified_init`) for `prolora` only. Giving a PRoLoRA field a non-default value with another method is an
error rather than a silently ignored flag.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Callable

from peft import LoraConfig, PeftConfig, VeraConfig

from prolora import ProLoraConfig  # importing registers the PROLORA PEFT type
from open_instruct.tied_lora import TiedLoraConfig  # importing registers the TIED_LORA PEFT type

LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The values finetune.py's parser gives the PRoLoRA-only flags when they are not passed.
PROLORA_DEFAULTS = {"unshared_r": 0, "reduce_lora_A_x": 1, "reduce_lora_B_x": 1,
                    "no_lora_rotation": False, "no_rectified_init": False}


def target_modules(args: Namespace) -> list[str] | str:
    """`--lora_target_modules` as PEFT wants it: a list of module names, or the string "all-linear"."""
    names = args.lora_target_modules
    return "all-linear" if names == ["all-linear"] else list(names)


def build_lora(args: Namespace) -> PeftConfig:
    return LoraConfig(task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha,
                      lora_dropout=args.lora_dropout, bias="none", target_modules=target_modules(args))


def build_prolora(args: Namespace) -> PeftConfig:
    return ProLoraConfig(task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha,
                         lora_dropout=args.lora_dropout, target_modules=target_modules(args),
                         unshared_r=args.unshared_r, reduce_lora_A_x=args.reduce_lora_A_x,
                         reduce_lora_B_x=args.reduce_lora_B_x, enable_lora_rotation=not args.no_lora_rotation,
                         rectified_init=not args.no_rectified_init)


def build_vera(args: Namespace) -> PeftConfig:
    # VeRA has no alpha: its per-layer scaling vectors play that role.
    return VeraConfig(task_type="CAUSAL_LM", r=args.lora_rank, vera_dropout=args.lora_dropout,
                      target_modules=target_modules(args))


def build_tied_lora(args: Namespace) -> PeftConfig:
    return TiedLoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=target_modules(args), task_type="CAUSAL_LM")


PEFT_BUILDERS: dict[str, Callable[[Namespace], PeftConfig]] = {
    "lora": build_lora,
    "prolora": build_prolora,
    "vera": build_vera,
    "tied_lora": build_tied_lora,
}


def build_peft_config(args: Namespace) -> PeftConfig:
    """The PEFT config for `args.peft_method`; raises ValueError for flags that method does not use."""
    if args.peft_method not in PEFT_BUILDERS:
        raise ValueError(f"unknown --peft_method {args.peft_method!r}; choose from {sorted(PEFT_BUILDERS)}")
    if args.peft_method != "prolora":
        for name, default in PROLORA_DEFAULTS.items():
            if getattr(args, name) != default:
                raise ValueError(f"--{name}={getattr(args, name)} only applies to --peft_method prolora, "
                                 f"not {args.peft_method}")
    return PEFT_BUILDERS[args.peft_method](args)


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
