"""finetune's command line: the flags (open-instruct's names plus the PRoLoRA authors'), and their validation.

`parse_args` reads a command line (the authors' Trainer-style spelling, ``--use_lora True --max_steps ...``, is
rewritten first by `open_instruct.training.trainer_flags`); `validate_args` checks ranges and combinations of the
values.
Neither reads a file nor imports torch, transformers or peft (only a flag that needs one asks for it, e.g.
``--mixed_precision fp16`` asks torch for a GPU), so a typo ends the run at once with one ``error:`` line.
The files the flags name are checked next, in `open_instruct.training.inputs`.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys

from open_instruct.cli import ArgumentParser, UsageError
from open_instruct.peft_methods import LLAMA_PROJECTIONS, METHODS, MOS_SETTINGS, add_mos_arguments, build_peft_config
from open_instruct.training import trainer_flags

EVAL_SPLIT_SEED = 42  # the authors hold out `train_test_split(test_size=1024, seed=42)` whatever the run's seed
# transformers' SchedulerType values finetune accepts (get_scheduler takes the name)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
DEFAULT_LR_SCHEDULER = "linear"
ADAPTER_FLAGS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "unshared_r", "reduce_lora_A_x",
                 "reduce_lora_B_x", "no_lora_rotation", "no_rectified_init", *(s.flag for s in MOS_SETTINGS))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description="Instruction-tune a causal LM with LoRA / PRoLoRA / VeRA / Tied-LoRA (or fully) "
                       "in an accelerate loop.")
    try:  # the authors' Trainer-style spelling (--use_lora True, --max_steps, --optim ...) -> ours
        argv = trainer_flags.translate(sys.argv[1:] if argv is None else list(argv))
    except ValueError as e:
        p.error(str(e))
    data = p.add_argument_group("data")
    data.add_argument("--train_file", help="jsonl of {'messages': [...]} or {'prompt', 'completion'} records")
    data.add_argument("--dataset_name", help="a datasets-hub dataset (its 'train' split) instead of --train_file")
    data.add_argument("--dataset_config_name")
    data.add_argument("--eval_file", help="held-out jsonl in the same format, for eval_loss")
    data.add_argument("--eval_split_size", type=int, default=0,
                      help=f"hold out this many training records for eval_loss (seed {EVAL_SPLIT_SEED}; "
                           "the authors used 1024)")
    data.add_argument("--max_seq_length", type=int, default=512)
    data.add_argument("--group_by_length", action="store_true",
                      help="batch examples of similar length together (less padding), as HF Trainer's option")
    data.add_argument("--preprocessing_num_workers", type=int, default=None)
    data.add_argument("--overwrite_cache", action="store_true", help="re-encode the data instead of reading the "
                      "token cache")

    model = p.add_argument_group("model")
    model.add_argument("--model_name_or_path", required=True)
    model.add_argument("--tokenizer_name", help="defaults to --model_name_or_path")
    model.add_argument("--token", default=None, help="Hugging Face token (default: $HF_TOKEN, read by the hub)")
    model.add_argument("--gradient_checkpointing", action="store_true")
    model.add_argument("--config_name", help="build the model from this config (a name or folder) instead of the "
                       "checkpoint's own, as open-instruct's option")
    model.add_argument("--use_flash_attn", action="store_true",
                       help="FlashAttention-2 (attn_implementation='flash_attention_2') where flash-attn is installed "
                            "and the model is on a GPU; otherwise logged and the default attention kept")
    model.add_argument("--use_slow_tokenizer", action="store_true",
                       help="accepted for open-instruct's command lines; transformers 5 has one tokenizer class")
    model.add_argument("--low_cpu_mem_usage", action="store_true",
                       help="accepted for open-instruct's command lines; transformers 5 always loads that way")

    peft = p.add_argument_group("parameter-efficient fine-tuning")
    peft.add_argument("--use_lora", action="store_true", help="train an adapter (--peft_method) instead of all weights")
    peft.add_argument("--peft_method", choices=sorted(METHODS), default=None,
                      help="adapter type (default lora); giving it implies --use_lora")
    peft.add_argument("--use_qlora", action="store_true", help="load the base model in 4-bit NF4 (needs --use_lora)")
    peft.add_argument("--lora_rank", "--lora_r", dest="lora_rank", type=int, default=64)
    peft.add_argument("--lora_alpha", type=float, default=16.0)
    peft.add_argument("--lora_dropout", type=float, default=0.1)
    peft.add_argument("--lora_target_modules", nargs="+", default=list(LLAMA_PROJECTIONS),
                      help="module names to adapt, or 'all-linear'")
    peft.add_argument("--unshared_r", type=int, default=0, help="PRoLoRA: ranks kept unshared (u)")
    peft.add_argument("--reduce_lora_A_x", type=int, default=1, help="PRoLoRA: chunks along A's input dim (m)")
    peft.add_argument("--reduce_lora_B_x", type=int, default=1, help="PRoLoRA: chunks along B's output dim (n)")
    peft.add_argument("--no_lora_rotation", action="store_true", help="PRoLoRA: share chunks without rotation")
    peft.add_argument("--no_rectified_init", action="store_true", help="PRoLoRA: plain Kaiming init of A chunks")
    add_mos_arguments(peft)  # MoS: --mos_r, --mos_private_r, --mos_shards_per_vector, --no_mos_* (peft_methods)

    optim = p.add_argument_group("optimisation")
    optim.add_argument("--per_device_train_batch_size", type=int, default=8)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--learning_rate", type=float, default=5e-5)
    optim.add_argument("--weight_decay", type=float, default=0.0)
    optim.add_argument("--lr_scheduler_type", default=DEFAULT_LR_SCHEDULER, choices=LR_SCHEDULERS)
    optim.add_argument("--warmup_ratio", type=float, default=0.0)
    optim.add_argument("--num_train_epochs", type=int, default=3)
    optim.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps; overrides epochs")
    optim.add_argument("--clip_grad_norm", type=float, default=-1, help="max gradient norm; <= 0 disables")
    optim.add_argument("--use_paged_optimizer", action="store_true",
                       help="bitsandbytes paged AdamW 32-bit, as QLoRA (pages to CPU only on CUDA); "
                            "--use_qlora implies it, as open-instruct")
    optim.add_argument("--use_8bit_optimizer", action="store_true",
                       help="bitsandbytes 8-bit AdamW (paged with --use_qlora / --use_paged_optimizer)")
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                       help="default: what `accelerate launch` was given, else no")
    optim.add_argument("--bf16", action="store_true", help="same as --mixed_precision bf16")
    optim.add_argument("--seed", type=int, default=42)

    out = p.add_argument_group("output and logging")
    out.add_argument("--output_dir", required=True)
    out.add_argument("--checkpointing_steps", default=None,
                     help="save a resumable state every N optimizer steps, or 'epoch'")
    out.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep only the newest K checkpoints")
    out.add_argument("--resume_from_checkpoint", default=None, help="a step_N folder, or 'auto' for the newest one")
    out.add_argument("--eval_steps", type=int, default=None, help="compute eval_loss every N steps (and at the end)")
    out.add_argument("--logging_steps", type=int, default=10)
    out.add_argument("--with_tracking", action="store_true", help="log metrics to --report_to")
    out.add_argument("--report_to", default="tensorboard")
    args = p.parse_args(argv)

    if args.peft_method is None:
        args.peft_method = "lora"
    else:
        args.use_lora = True  # naming a method asks for an adapter
    if (args.train_file is None) == (args.dataset_name is None):
        p.error("give exactly one of --train_file and --dataset_name")
    if args.use_qlora and not args.use_lora:
        p.error("--use_qlora trains an adapter on a 4-bit base: add --use_lora")
    if args.bf16:
        if args.mixed_precision not in (None, "bf16"):
            p.error(f"--bf16 contradicts --mixed_precision {args.mixed_precision}")
        args.mixed_precision = "bf16"
    if args.eval_file and args.eval_split_size:
        p.error("give --eval_file or --eval_split_size, not both")
    return args



def validate_args(args: argparse.Namespace) -> None:
    """Ranges and combinations of the flags (nothing is read); raises UsageError naming the flag and value."""
    def need(ok: bool, flag: str, rule: str) -> None:
        if not ok:
            raise UsageError(f"--{flag} {rule}, got {getattr(args, flag)!r}")

    for flag in ("num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps",
                 "max_seq_length"):
        need(getattr(args, flag) >= 1, flag, "must be >= 1")
    for flag in ("max_train_steps", "checkpoints_total_limit", "eval_steps", "preprocessing_num_workers"):
        need(getattr(args, flag) is None or getattr(args, flag) >= 1, flag, "must be >= 1 (or left out)")
    need(args.eval_split_size >= 0, "eval_split_size", "must be >= 0")
    need(math.isfinite(args.learning_rate) and args.learning_rate > 0, "learning_rate", "must be > 0")
    need(math.isfinite(args.weight_decay) and args.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(0 <= args.warmup_ratio <= 1, "warmup_ratio", "must be in [0, 1]")
    need(not math.isnan(args.clip_grad_norm), "clip_grad_norm", "must be a number")
    need(0 <= args.seed < 2**32, "seed", "must be in [0, 2**32)")
    if args.mixed_precision == "fp16" and not _cuda_available():
        raise UsageError("--mixed_precision fp16 needs a CUDA GPU; use bf16 (or no mixed precision) on CPU")
    if args.with_tracking:
        from accelerate.utils import LoggerType

        known = sorted(t.value for t in LoggerType)
        need(args.report_to in known, "report_to", f"must be one of {', '.join(known)}")
        packages = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
        wanted = packages.get(args.report_to)
        if wanted and not any(importlib.util.find_spec(name) for name in wanted):
            raise UsageError(f"--with_tracking --report_to {args.report_to}: the {wanted[0]} package is not "
                             "installed")
    steps = args.checkpointing_steps
    need(steps in (None, "epoch") or (str(steps).isdigit() and int(steps) >= 1), "checkpointing_steps",
         "must be a positive integer or 'epoch'")
    if args.eval_steps and not (args.eval_file or args.eval_split_size):
        raise UsageError("--eval_steps needs held-out data: add --eval_file or --eval_split_size")
    if not args.use_lora:
        defaults = parse_args(["--model_name_or_path", "-", "--train_file", "-", "--output_dir", "-"])
        given = [flag for flag in ADAPTER_FLAGS if getattr(args, flag) != getattr(defaults, flag)]
        if given:
            raise UsageError(f"--{given[0]} configures an adapter, but this is a full fine-tune: add --use_lora "
                             "(or --peft_method, which implies it)")
        return
    need(args.lora_rank >= 1, "lora_rank", "must be >= 1")
    need(math.isfinite(args.lora_alpha) and args.lora_alpha > 0, "lora_alpha", "must be > 0")
    need(0 <= args.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
    try:
        build_peft_config(args)  # the method's own checks (u <= r, m, n >= 1, ...)
    except (ValueError, TypeError) as err:
        raise UsageError(f"--peft_method {args.peft_method}: {err}") from None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
