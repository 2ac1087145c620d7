"""Instruction-tune a causal LM with LoRA / PRoLoRA / VeRA / Tied-LoRA (or fully) in an accelerate loop.

The script reads top to bottom: parse → load model and tokenizer → wrap with PEFT → data → train with
checkpoints → save. It keeps open-instruct's command line (``--model_name_or_path``, ``--train_file``,
``--use_lora --lora_rank ...``, ``--use_qlora``) and adds ``--peft_method`` with the PRoLoRA authors' flag
names (``--unshared_r``, ``--reduce_lora_A_x``, ``--reduce_lora_B_x``, ``--no_lora_rotation``,
``--no_rectified_init``).

Launch it any of these ways::

    python -m open_instruct.finetune ...
    accelerate launch [--num_processes N] -m open_instruct.finetune ...
    accelerate launch --use_deepspeed --deepspeed_config_file configs/ds_configs/stage3_no_offloading_accelerate.conf \\
        -m open_instruct.finetune ...

Checkpoints (``--checkpointing_steps``) are full accelerate states (model, optimizer, scheduler, RNG) in
``output_dir/step_N``, written under a temporary name and renamed when complete, with a ``manifest.json`` (size
and sha256 of every file), so a run killed at any point resumes (``--resume_from_checkpoint auto``) from the
newest checkpoint that matches its manifest (a corrupted one is skipped, and named in the log), skips the batches
it had already consumed in that epoch, and ends with the same adapter as a run that was never interrupted.

The final output in ``--output_dir`` is the PEFT adapter (or the full model without ``--use_lora``), the
tokenizer, ``all_results.json``, an empty ``completed`` marker and this run's checkpoints. It replaces the folder
as a whole in one swap: files of an earlier run there (another method's weights, its results) never survive next
to the new ones, and a kill leaves either the earlier run or the new one.

Before anything heavy loads, every flag, the data files (read and validated in full), the model's config.json
(adapter targets, PRoLoRA's m and n against the projection sizes), the checkpoint to resume from and the output
folder are checked (`validate_args`, `check_inputs`); a problem ends the run with one ``error:`` line and exit
status 2 (`open_instruct.cli`) and leaves an earlier run in ``--output_dir`` as it was. ``--peft_method`` implies
``--use_lora``; adapter flags in a full fine-tune are an error.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, broadcast_object_list, set_seed
from peft import PeftModel, get_peft_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, SchedulerType, get_scheduler

from open_instruct import base_quantization, token_cache, trainer_flags
from open_instruct.cli import (
    ArgumentParser,
    UsageError,
    check_model_source,
    check_readable_file,
    check_writable_dir,
    read_json_file,
)
from open_instruct.cli import run as run_cli
from open_instruct.encoding import IGNORE_INDEX, encode_record, has_trainable_tokens
from open_instruct.io_utils import atomic_dir, write_json, write_text
from open_instruct.label_loss import CausalLMLoss
from open_instruct.length_sampler import LengthGroupedSampler
from open_instruct.peft_methods import (
    LLAMA_PROJECTIONS,
    METHODS,
    build_peft_config,
    describe_peft_config,
    qlora_compute_dtype,
    qlora_quantization_config,
)

logger = get_logger(__name__)

EVAL_SPLIT_SEED = 42  # the authors hold out `train_test_split(test_size=1024, seed=42)` whatever the run's seed
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"
COMPLETED_MARKER = "completed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n")[0])
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

    optim = p.add_argument_group("optimisation")
    optim.add_argument("--per_device_train_batch_size", type=int, default=8)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--learning_rate", type=float, default=5e-5)
    optim.add_argument("--weight_decay", type=float, default=0.0)
    optim.add_argument("--lr_scheduler_type", type=SchedulerType, default="linear",
                       choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                "constant_with_warmup"])
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


# ----------------------------------------------------------------------------------------- validation
# Everything below runs before the model, the tokenizer or any output is touched: a bad flag, file or setting
# ends the run with one `error:` line (open_instruct.cli) and leaves an existing run in --output_dir as it was.

ADAPTER_FLAGS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "unshared_r", "reduce_lora_A_x",
                 "reduce_lora_B_x", "no_lora_rotation", "no_rectified_init")
# Settings a checkpoint must share with the run that resumes it (they decide the state's shapes and the batches).
RESUME_SETTINGS = ("use_lora", "use_qlora", "peft_method", "lora_rank", "lora_target_modules", "unshared_r",
                   "reduce_lora_A_x", "reduce_lora_B_x", "per_device_train_batch_size", "gradient_accumulation_steps")
# Entries of a run folder written by other tools around a run (open_instruct.paper.grid); a new run keeps them.
FOREIGN_ENTRIES = ("run_config.json", ".grid", "logs")
MANIFEST = "manifest.json"


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
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
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


@functools.lru_cache(maxsize=4)
def _read_validated(path: str) -> tuple[dict, ...]:
    from open_instruct.validate_data import iter_validated_jsonl

    check_readable_file(path, "data file")
    records = tuple(iter_validated_jsonl(path))
    if not records:
        raise UsageError(f"{path}: no records (the file is empty)")
    return records


def read_and_validate_records(path: str) -> list[dict]:
    """Every record of a jsonl file, each validated; one line naming ``path:line`` on the first bad one.

    Reads (and validates) a file once per process however often it is asked for.
    """
    return list(_read_validated(str(path)))


def check_adapter_geometry(args, config_dir: Path) -> None:
    """The adapter's target modules, and PRoLoRA's m and n, against the model's layer shapes.

    The model is built from its config.json on the meta device: no weight is read or allocated.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from prolora.params import target_linear_dims

    config_file = config_dir / "config.json"
    read_json_file(config_file)  # a missing or malformed file: one line naming it
    try:
        config = AutoConfig.from_pretrained(config_dir)
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{config_file}: not a causal-LM config transformers can build ({first})") from None
    targets = [] if args.lora_target_modules == ["all-linear"] else args.lora_target_modules
    names = [name for name, _ in skeleton.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise UsageError(f"--lora_target_modules {target}: no such module in {args.model_name_or_path}")
    dims = target_linear_dims(skeleton, build_peft_config(args))
    if not dims:
        raise UsageError(f"--lora_target_modules {' '.join(args.lora_target_modules)}: no linear layer of "
                         f"{args.model_name_or_path} matches")
    if args.peft_method != "prolora":
        return
    for name, (d_in, d_out) in dims.items():
        if args.reduce_lora_A_x > d_in:
            raise UsageError(f"--reduce_lora_A_x {args.reduce_lora_A_x} is larger than the input size {d_in} of "
                             f"{name} in {args.model_name_or_path}")
        if args.reduce_lora_B_x > d_out:
            raise UsageError(f"--reduce_lora_B_x {args.reduce_lora_B_x} is larger than the output size {d_out} of "
                             f"{name} in {args.model_name_or_path}")


def looks_like_run(folder: Path) -> bool:
    """A folder holding a (finished, unfinished or grid-prepared) fine-tuning run of this script."""
    names = {child.name for child in folder.iterdir()}
    return bool(names & {COMPLETED_MARKER, "all_results.json", "adapter_config.json", *FOREIGN_ENTRIES}) or any(
        CHECKPOINT_PATTERN.match(name) or name.startswith(".step_") for name in names)


def check_inputs(args) -> Path | None:
    """Model config, data, resume target and output folder, all before anything heavy; returns the checkpoint."""
    model_dir = check_model_source(args.model_name_or_path, "--model_name_or_path")
    if args.tokenizer_name:
        check_model_source(args.tokenizer_name, "--tokenizer_name", need="")
    config_dir = check_model_source(args.config_name, "--config_name") if args.config_name else model_dir
    if config_dir is not None and not args.use_lora:
        read_json_file(config_dir / "config.json")  # a missing or malformed file: one line naming it
    if config_dir is not None and args.use_lora:
        check_adapter_geometry(args, config_dir)

    output_dir = Path(args.output_dir)
    check_writable_dir(output_dir, "--output_dir")
    out = output_dir.resolve()
    protected = {"--model_name_or_path": model_dir, "--train_file": args.train_file, "--eval_file": args.eval_file}
    for flag, path in protected.items():
        if path is not None and (Path(path).resolve() == out or Path(path).resolve().is_relative_to(out)):
            raise UsageError(f"--output_dir {args.output_dir}: holds {flag} {path}, which a new run would replace")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not looks_like_run(output_dir):
        raise UsageError(f"--output_dir {args.output_dir}: folder holds files that are not a fine-tuning run; "
                         "choose a new or empty folder")

    if args.dataset_name:  # resolves the dataset (not its data), so a wrong or unreachable name fails now
        try:
            datasets.load_dataset_builder(args.dataset_name, args.dataset_config_name, token=args.token)
        except Exception as err:  # noqa: BLE001 - datasets raises many types; each becomes this one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"--dataset_name {args.dataset_name}: {first}") from None
    for flag in ("train_file", "eval_file"):
        if getattr(args, flag):
            check_readable_file(getattr(args, flag), f"--{flag}")
            records = read_and_validate_records(getattr(args, flag))
            if flag == "train_file" and args.eval_split_size >= len(records):
                raise UsageError(f"--eval_split_size {args.eval_split_size} leaves no training data "
                                 f"({args.train_file} has {len(records)} records)")
    return resolve_resume(args, output_dir)


# ----------------------------------------------------------------------------------------------- data

def hub_records(name: str, config_name: str | None) -> list[dict]:
    from open_instruct.validate_data import validate_record

    rows = datasets.load_dataset(name, config_name, split="train")
    records = []
    for index, record in enumerate(rows):
        validate_record(record, where=f"{name}:{index}")
        records.append(record)
    return records


def normalise(record: dict) -> dict:
    """Keep only the fields encoding reads, with one schema for both record shapes (Arrow needs one)."""
    messages = record.get("messages")
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages] if messages else None,
        "prompt": record.get("prompt"),
        "completion": record.get("completion"),
    }


def encode_records(records: list[dict], tokenizer, args, name: str) -> datasets.Dataset:
    """Tokenise + mask with `datasets.map`, then drop examples left with no trainable token."""
    raw = datasets.Dataset.from_list([normalise(r) for r in records])
    encoded = raw.map(lambda r: encode_record(r, tokenizer, args.max_seq_length),
                      remove_columns=raw.column_names, num_proc=args.preprocessing_num_workers,
                      desc=f"Tokenizing {name}")
    kept = encoded.filter(has_trainable_tokens, num_proc=args.preprocessing_num_workers,
                          desc=f"Dropping {name} examples without trainable tokens")
    logger.info(f"{name}: {len(kept)} examples, {len(encoded) - len(kept)} dropped (no trainable token "
                f"within {args.max_seq_length} tokens)")
    if len(kept) == 0:
        raise UsageError(f"{name}: no example has a trainable token within --max_seq_length {args.max_seq_length}")
    return kept


def encode_file(path: str, tokenizer, tokenizer_hash: str, args, name: str) -> datasets.Dataset:
    """`encode_records` of a jsonl file, through the on-disk cache (`open_instruct.token_cache`)."""
    return token_cache.cached_encode(path, tokenizer_hash, args.max_seq_length,
                                     lambda: encode_records(read_and_validate_records(path), tokenizer, args, name),
                                     overwrite=getattr(args, "overwrite_cache", False))


def load_datasets(args, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Encoded training and held-out sets.

    With --eval_split_size N the held-out set is carved as the authors did: the whole file is encoded, examples
    without a trainable token are dropped, and `train_test_split(test_size=N, seed=42)` splits what is left.
    """
    tokenizer_hash = token_cache.tokenizer_sha256(tokenizer)
    if args.train_file:
        train = encode_file(args.train_file, tokenizer, tokenizer_hash, args, "train")
    else:  # the datasets hub caches downloads itself; its records are encoded afresh
        train = encode_records(hub_records(args.dataset_name, args.dataset_config_name), tokenizer, args, "train")
    eval_ds = encode_file(args.eval_file, tokenizer, tokenizer_hash, args, "eval") if args.eval_file else None
    if args.eval_split_size:
        if args.eval_split_size >= len(train):
            raise UsageError(f"--eval_split_size {args.eval_split_size} leaves no training data "
                             f"({len(train)} examples with a trainable token)")
        split = train.train_test_split(test_size=args.eval_split_size, seed=EVAL_SPLIT_SEED)
        train, eval_ds = split["train"], split["test"]
    return train, eval_ds


# ---------------------------------------------------------------------------------------- model

def load_model_and_tokenizer(args, accelerator):
    """The base model (4-bit NF4 with --use_qlora) and its tokenizer, with a pad token and room for it."""
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path, token=args.token)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    kwargs = {"token": args.token} | compatibility_kwargs(args, accelerator.device.type == "cuda")
    if args.use_qlora:
        on_gpu = accelerator.device.type == "cuda"
        compute_dtype = qlora_compute_dtype(on_gpu)
        kwargs.update(dtype=compute_dtype, device_map={"": accelerator.local_process_index if on_gpu else "cpu"},
                      quantization_config=qlora_quantization_config(compute_dtype))
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **kwargs)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # the new <pad> row is never a training target
    model.config.use_cache = False
    if args.use_qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    elif args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def compatibility_kwargs(args, on_gpu: bool) -> dict:
    """from_pretrained arguments for open-instruct's model flags (--config_name, --use_flash_attn); the two flags
    that change nothing under transformers 5 say so in the log."""
    from transformers import AutoConfig

    kwargs = {}
    if args.config_name:
        kwargs["config"] = AutoConfig.from_pretrained(args.config_name, token=args.token)
    if args.use_flash_attn:
        import importlib.util

        if on_gpu and importlib.util.find_spec("flash_attn") is not None:
            kwargs["attn_implementation"] = "flash_attention_2"
        else:
            logger.info("--use_flash_attn: flash-attn is not installed or there is no GPU; keeping the default "
                        "attention (same results, more memory)")
    if args.use_slow_tokenizer:
        logger.info("--use_slow_tokenizer changes nothing: transformers 5 has one tokenizer class per model")
    if args.low_cpu_mem_usage:
        logger.info("--low_cpu_mem_usage changes nothing: transformers 5 always loads weights that way")
    return kwargs


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as unpacked, ZeRO-3 shards at their full size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    sizes = [(p.ds_numel if hasattr(p, "ds_numel") else p.numel(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, trainable in sizes if trainable), sum(n for n, _ in sizes)


def build_optimizer(model, args, fused: bool = True):
    """AdamW with no decay on biases and norm weights: torch's fused kernel (one pass over all parameters, as HF
    Trainer's default ``adamw_torch_fused``) unless ``fused`` is off (DeepSpeed steps its own partitions). As
    open-instruct, QLoRA uses bitsandbytes' paged AdamW (32-bit, 8-bit with --use_8bit_optimizer);
    --use_paged_optimizer / --use_8bit_optimizer ask for it alone."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "norm" in name else decay).append(param)
    groups = [{"params": params, "weight_decay": wd} for params, wd in ((decay, args.weight_decay), (no_decay, 0.0))
              if params]  # DeepSpeed drops empty groups, which would desynchronise the LR scheduler
    paged = args.use_paged_optimizer or args.use_qlora
    if paged or args.use_8bit_optimizer:
        import bitsandbytes as bnb

        return bnb.optim.AdamW(groups, lr=args.learning_rate, optim_bits=8 if args.use_8bit_optimizer else 32,
                               is_paged=paged)
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = fused and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=fused or None)


# ----------------------------------------------------------------------------------------- checkpoints

def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders (a `step_N` folder exists only once fully written), oldest first."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = CHECKPOINT_PATTERN.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def write_manifest(folder: Path) -> None:
    """``manifest.json``: size and sha256 of every file of a checkpoint, written last."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            with open(path, "rb") as f:
                files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size,
                                                              "sha256": hashlib.file_digest(f, "sha256").hexdigest()}
    write_json(folder / MANIFEST, {"files": files})


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (missing, truncated or altered files), or None when it is whole."""
    if not folder.is_dir():
        return "no such folder"
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
        files = manifest["files"]
        int(state["global_step"])
    except FileNotFoundError as err:
        return f"no {Path(err.filename).name}"
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} or {TRAINER_STATE} ({type(err).__name__}: {err})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['size']}"
        with open(path, "rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != expected["sha256"]:
                return f"{name} does not match its sha256 in the manifest"
    return None


def checkpoint_state(folder: Path) -> dict:
    return json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))


def run_settings(args) -> dict:
    return {name: getattr(args, name) for name in RESUME_SETTINGS}


def save_checkpoint(accelerator, output_dir: Path, state: dict, keep: int | None) -> None:
    """accelerate.save_state into a temporary folder (all ranks), renamed to step_N by the main process.

    The main process adds trainer_state.json and, last, the manifest. `keep` prunes this run's older checkpoints.
    """
    final = output_dir / f"step_{state['global_step']}"
    with atomic_dir(final) if accelerator.is_main_process else contextlib.nullcontext() as tmp:
        tmp = broadcast_object_list([str(tmp) if tmp else None])[0]
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(Path(tmp) / TRAINER_STATE, state)
            write_manifest(Path(tmp))
    if accelerator.is_main_process and keep:
        ours = [path for _, path in list_checkpoints(output_dir) if same_run(path, state["run_id"])]
        for old in ours[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info(f"saved checkpoint {final}")


def same_run(folder: Path, run_id: str) -> bool:
    try:
        return checkpoint_state(folder).get("run_id") == run_id
    except (OSError, ValueError):
        return False


def resolve_resume(args, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: an explicit `step_N` folder, or with 'auto' the newest whole one.

    'auto' skips (and reports) checkpoints whose files do not match their manifest. A checkpoint written with other
    adapter or batch settings is refused rather than loaded into a model it does not fit.
    """
    flag = f"--resume_from_checkpoint {args.resume_from_checkpoint}"
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "auto":
        checkpoint = None
        for _, candidate in reversed(list_checkpoints(output_dir)):
            problem = checkpoint_problem(candidate)
            if problem is None:
                checkpoint = candidate
                break
            logging.getLogger(__name__).warning(f"skipping corrupted checkpoint {candidate}: {problem}")
        if checkpoint is None:
            return None
    else:
        checkpoint = Path(args.resume_from_checkpoint)
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise UsageError(f"{flag}: not a whole checkpoint ({problem})")
    state = checkpoint_state(checkpoint)
    if args.max_train_steps is not None and state["global_step"] >= args.max_train_steps:
        raise UsageError(f"{flag}: {checkpoint} is already at step {state['global_step']}, not before "
                         f"--max_train_steps {args.max_train_steps}")
    saved = state.get("settings", {})
    for name, value in run_settings(args).items():
        if name in saved and saved[name] != value:
            raise UsageError(f"{flag}: {checkpoint} was written with --{name} {saved[name]}, this run has {value}; "
                             "resume with the same settings or use another --output_dir")
    return checkpoint


# ----------------------------------------------------------------------------------------- evaluation

def eval_dataloader(eval_ds, batch_size: int, collator) -> DataLoader:
    """Held-out batches, shortest examples first: little padding, and `evaluate`'s token-weighted mean does not
    depend on the order."""
    lengths = [len(ids) for ids in eval_ds["input_ids"]]
    return DataLoader(eval_ds, sampler=sorted(range(len(lengths)), key=lengths.__getitem__), batch_size=batch_size,
                      collate_fn=collator)


@torch.no_grad()
def evaluate(model, eval_dl, accelerator, loss_fn: CausalLMLoss) -> float:
    """Mean loss per trainable token over the held-out set (all ranks together)."""
    model.eval()
    loss_sum = torch.zeros((), device=accelerator.device)
    token_count = torch.zeros((), device=accelerator.device)
    for batch in tqdm(eval_dl, desc="eval", disable=not accelerator.is_local_main_process, leave=False):
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        loss_sum += loss_fn(model, batch).float() * tokens
        token_count += tokens
    model.train()
    return (accelerator.reduce(loss_sum, "sum") / accelerator.reduce(token_count, "sum")).item()


# ----------------------------------------------------------------------------------------------- main

def train(args) -> dict:
    checkpoint = check_inputs(args)  # before anything heavy; an existing run is not touched before this passes
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None, project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed))
    logger.info(accelerator.state, main_process_only=False)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.disable_progress_bar()
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        clean_leftovers(output_dir)  # a previous run here stays whole (and `completed`) until the final swap
    accelerator.wait_for_everyone()

    # Model, tokenizer, adapter.
    model, tokenizer = load_model_and_tokenizer(args, accelerator)
    peft_summary = None
    if args.use_lora:
        peft_config = build_peft_config(args)
        model = get_peft_model(model, peft_config)
        peft_summary = describe_peft_config(peft_config)
    trainable_params, total_params = count_parameters(model)
    logger.info(f"trainable parameters: {trainable_params:,} of {total_params:,} "
                f"({100 * trainable_params / total_params:.4f}%)")

    # Data.
    with accelerator.main_process_first():
        train_ds, eval_ds = load_datasets(args, tokenizer)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)
    length_sampler = None
    if args.group_by_length:  # as HF Trainer, megabatches of batches from all accumulation steps
        length_sampler = LengthGroupedSampler([len(ids) for ids in train_ds["input_ids"]],
                                              args.per_device_train_batch_size * args.gradient_accumulation_steps,
                                              seed=args.seed)
        train_dl = DataLoader(train_ds, sampler=length_sampler, batch_size=args.per_device_train_batch_size,
                              collate_fn=collator, generator=torch.Generator().manual_seed(args.seed))
    else:  # (a DataLoader without its own generator would draw from the global RNG, which a resume restores)
        train_dl = DataLoader(train_ds, shuffle=True, batch_size=args.per_device_train_batch_size,
                              collate_fn=collator, generator=torch.Generator().manual_seed(args.seed))
    loss_fn = CausalLMLoss(model)
    eval_dl = eval_dataloader(eval_ds, args.per_device_train_batch_size, collator) if eval_ds else None

    # Optimizer and schedule. accelerate steps a prepared scheduler once per process, hence the factor.
    optimizer = build_optimizer(model, args, fused=accelerator.distributed_type != DistributedType.DEEPSPEED)
    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / (args.per_device_train_batch_size *
                                                           accelerator.num_processes))
                                / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer,
                              num_warmup_steps=int(max_train_steps * args.warmup_ratio) * accelerator.num_processes,
                              num_training_steps=max_train_steps * accelerator.num_processes)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        if ds_config.get("gradient_clipping", "auto") == "auto":
            ds_config["gradient_clipping"] = max(args.clip_grad_norm, 0.0)  # DeepSpeed clips inside its step
    model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    if eval_dl is not None:
        eval_dl = accelerator.prepare(eval_dl)

    if args.with_tracking:
        config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers("finetune", config)

    # Resume: restore model/optimizer/scheduler/RNG, then skip the batches that step already consumed.
    state = {"global_step": 0, "loss_sum": 0.0, "train_runtime": 0.0, "run_id": uuid.uuid4().hex,
             "settings": run_settings(args)}  # run_id: the checkpoints of this run (and of the runs it resumes)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = {**state, **checkpoint_state(checkpoint)}
        logger.info(f"resumed from {checkpoint} at step {state['global_step']}")
    starting_epoch, steps_done_in_epoch = divmod(state["global_step"], steps_per_epoch)

    # Train.
    logger.info(f"{len(train_ds)} examples, {num_epochs} epochs, {max_train_steps} optimizer steps of "
                f"{args.per_device_train_batch_size} × {args.gradient_accumulation_steps} × "
                f"{accelerator.num_processes} examples")
    progress = tqdm(total=max_train_steps, initial=state["global_step"], desc="train",
                    disable=not accelerator.is_local_main_process)
    save_every = int(args.checkpointing_steps) if str(args.checkpointing_steps).isdigit() else None
    started = time.time()
    model.train()
    window_loss, window_steps, eval_loss = 0.0, 0, None
    micro_loss = torch.zeros((), device=accelerator.device)
    micro_count = 0
    for epoch in range(starting_epoch, num_epochs):
        epoch_dl = train_dl
        if epoch == starting_epoch and steps_done_in_epoch:
            epoch_dl = accelerator.skip_first_batches(train_dl, steps_done_in_epoch * args.gradient_accumulation_steps)
        epoch_dl.set_epoch(epoch)
        if length_sampler is not None:
            length_sampler.set_epoch(epoch)  # however deep accelerate's wrappers hid it
        for batch in epoch_dl:
            with accelerator.accumulate(model):
                loss = loss_fn(model, batch)
                accelerator.backward(loss)
                micro_loss += loss.detach().float()
                micro_count += 1
                if accelerator.sync_gradients and args.clip_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step_loss = accelerator.reduce(micro_loss / micro_count, "mean").item()
            micro_loss.zero_()
            micro_count = 0
            state["global_step"] += 1
            state["loss_sum"] += step_loss
            window_loss += step_loss
            window_steps += 1
            progress.update(1)
            step = state["global_step"]
            if step % args.logging_steps == 0 or step == max_train_steps:
                metrics = {"train_loss": window_loss / window_steps, "learning_rate": scheduler.get_last_lr()[0]}
                progress.set_postfix(loss=f"{metrics['train_loss']:.4f}")
                logger.info(f"step {step}: loss {metrics['train_loss']:.4f}, lr {metrics['learning_rate']:.3e}")
                if args.with_tracking:
                    accelerator.log(metrics, step=step)
                window_loss, window_steps = 0.0, 0
            if eval_dl is not None and args.eval_steps and step % args.eval_steps == 0 and step < max_train_steps:
                eval_loss = evaluate(model, eval_dl, accelerator, loss_fn)
                logger.info(f"step {step}: eval_loss {eval_loss:.4f}")
                if args.with_tracking:
                    accelerator.log({"eval_loss": eval_loss}, step=step)
            end_of_epoch = step % steps_per_epoch == 0
            if step < max_train_steps and ((save_every and step % save_every == 0) or
                                           (args.checkpointing_steps == "epoch" and end_of_epoch)):
                state["train_runtime"] += time.time() - started
                started = time.time()
                save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit)
            if step >= max_train_steps:
                break
    progress.close()
    state["train_runtime"] += time.time() - started

    # Final evaluation and save.
    if eval_dl is not None:
        eval_loss = evaluate(model, eval_dl, accelerator, loss_fn)
        logger.info(f"final eval_loss {eval_loss:.4f}")
        if args.with_tracking:
            accelerator.log({"eval_loss": eval_loss}, step=state["global_step"])
    results = {
        "train_loss": state["loss_sum"] / max(state["global_step"], 1),
        "eval_loss": eval_loss,
        "train_runtime": state["train_runtime"],
        "global_step": state["global_step"],
        "trainable_params": trainable_params,
        "total_params": total_params,
        "peft_method": args.peft_method if args.use_lora else None,
        "peft_config": peft_summary,
        base_quantization.KEY: base_quantization.record() if args.use_qlora else None,  # read by the evals
    }
    save_final(accelerator, model, tokenizer, output_dir, results, state["run_id"],
               keep=FOREIGN_ENTRIES + (("finetune",) if args.with_tracking else ()))  # tracker logs
    if args.with_tracking:
        accelerator.end_training()
    return results


def save_final(accelerator, model, tokenizer, output_dir: Path, results: dict, run_id: str,
               keep: tuple[str, ...] = FOREIGN_ENTRIES) -> None:
    """Replace `output_dir` as a whole by the finished run: adapter (or full model), tokenizer, all_results.json,
    the `completed` marker, this run's checkpoints and the `keep` entries of other tools.

    Every rank takes part in `get_state_dict` (under ZeRO-3 it gathers the shards); only the main process writes.
    The new folder is built next to `output_dir` (checkpoints and kept entries are hard links, not copies) and
    swapped in with one rename, so a reader (or a kill at any moment) sees the previous run or this one, whole.
    """
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    # An added <pad> embedding row is never trained: keep embeddings out of the adapter (merge re-adds the row).
    extra = {"save_embedding_layers": False} if isinstance(unwrapped, PeftModel) else {}
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_dir(output_dir) as tmp:
            unwrapped.save_pretrained(tmp, state_dict=state_dict, **extra)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / "all_results.json", results)
            write_text(tmp / COMPLETED_MARKER, "")
            for child in output_dir.iterdir():
                if child.name in keep or (CHECKPOINT_PATTERN.match(child.name) and same_run(child, run_id)):
                    link_tree(child, tmp / child.name)
        logger.info(f"saved {output_dir}: train_loss {results['train_loss']:.4f}, eval_loss {results['eval_loss']}")
    accelerator.wait_for_everyone()


def link_tree(source: Path, target: Path) -> None:
    """Hard-link a file or folder tree (copy where the filesystem cannot link)."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link, symlinks=True)
    else:
        link(source, target)


def clean_leftovers(output_dir: Path) -> None:
    """Remove what a killed run left half-written: temporary checkpoints and final folders."""
    staged = re.compile(rf"\.{re.escape(output_dir.name)}\.[a-z0-9_]{{8}}\.tmp")  # atomic_dir's mkdtemp names
    for leftover in [*output_dir.glob(".step_*.tmp"), output_dir.with_name(f".{output_dir.name}.old"),
                     *(p for p in output_dir.parent.iterdir() if staged.fullmatch(p.name))]:
        shutil.rmtree(leftover, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    validate_args(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train(args)


if __name__ == "__main__":
    run_cli(main)
