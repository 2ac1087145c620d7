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
``output_dir/step_N``, written under a temporary name and renamed when complete, so a run killed at any point
resumes (``--resume_from_checkpoint auto``) from the last complete one, skips the batches it had already
consumed in that epoch, and ends with the same adapter as a run that was never interrupted.

The final output in ``--output_dir`` is the PEFT adapter (or the full model without ``--use_lora``), the
tokenizer, ``all_results.json`` and, written last, an empty ``completed`` marker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
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

from open_instruct.encoding import IGNORE_INDEX, encode_record, has_trainable_tokens
from open_instruct.io_utils import atomic_dir, write_json, write_text
from open_instruct.peft_methods import LLAMA_PROJECTIONS, PEFT_BUILDERS, build_peft_config, describe_peft_config

logger = get_logger(__name__)

EVAL_SPLIT_SEED = 42  # the authors hold out `train_test_split(test_size=1024, seed=42)` whatever the run's seed
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"
COMPLETED_MARKER = "completed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = p.add_argument_group("data")
    data.add_argument("--train_file", help="jsonl of {'messages': [...]} or {'prompt', 'completion'} records")
    data.add_argument("--dataset_name", help="a datasets-hub dataset (its 'train' split) instead of --train_file")
    data.add_argument("--dataset_config_name")
    data.add_argument("--eval_file", help="held-out jsonl in the same format, for eval_loss")
    data.add_argument("--eval_split_size", type=int, default=0,
                      help=f"hold out this many training records for eval_loss (seed {EVAL_SPLIT_SEED}; "
                           "the authors used 1024)")
    data.add_argument("--max_seq_length", type=int, default=512)
    data.add_argument("--preprocessing_num_workers", type=int, default=None)

    model = p.add_argument_group("model")
    model.add_argument("--model_name_or_path", required=True)
    model.add_argument("--tokenizer_name", help="defaults to --model_name_or_path")
    model.add_argument("--token", default=None, help="Hugging Face token (default: $HF_TOKEN, read by the hub)")
    model.add_argument("--gradient_checkpointing", action="store_true")

    peft = p.add_argument_group("parameter-efficient fine-tuning")
    peft.add_argument("--use_lora", action="store_true", help="train an adapter (--peft_method) instead of all weights")
    peft.add_argument("--peft_method", choices=sorted(PEFT_BUILDERS), default="lora")
    peft.add_argument("--use_qlora", action="store_true", help="load the base model in 4-bit NF4 (needs --use_lora)")
    peft.add_argument("--lora_rank", "--lora_r", dest="lora_rank", type=int, default=64)
    peft.add_argument("--lora_alpha", type=float, default=16.0)
    peft.add_argument("--lora_dropout", type=float, default=0.1)
    peft.add_argument("--lora_target_modules", nargs="+", default=LLAMA_PROJECTIONS,
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
                       help="bitsandbytes paged AdamW 32-bit, as QLoRA (pages to CPU only on CUDA)")
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
    if args.checkpointing_steps not in (None, "epoch") and not str(args.checkpointing_steps).isdigit():
        p.error(f"--checkpointing_steps must be a positive integer or 'epoch', got {args.checkpointing_steps!r}")
    return args


# ----------------------------------------------------------------------------------------------- data

def read_records(path: str) -> list[dict]:
    """Read and validate a jsonl file; a bad line raises DataValidationError naming `path:line`."""
    from open_instruct.validate_data import iter_validated_jsonl

    records = list(iter_validated_jsonl(path))
    if not records:
        raise ValueError(f"{path}: no records")
    return records


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


def encode_dataset(records: list[dict], tokenizer, args, name: str) -> datasets.Dataset:
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
        raise ValueError(f"{name}: no example has a trainable token within --max_seq_length {args.max_seq_length}")
    return kept


def load_datasets(args, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    records = read_records(args.train_file) if args.train_file else hub_records(args.dataset_name,
                                                                                  args.dataset_config_name)
    eval_records = read_records(args.eval_file) if args.eval_file else None
    if args.eval_split_size:
        if args.eval_split_size >= len(records):
            raise ValueError(f"--eval_split_size {args.eval_split_size} leaves no training data "
                             f"({len(records)} records)")
        split = datasets.Dataset.from_dict({"index": list(range(len(records)))}).train_test_split(
            test_size=args.eval_split_size, seed=EVAL_SPLIT_SEED)
        eval_records = [records[i] for i in split["test"]["index"]]
        records = [records[i] for i in split["train"]["index"]]
    train = encode_dataset(records, tokenizer, args, "train")
    return train, encode_dataset(eval_records, tokenizer, args, "eval") if eval_records else None


# ---------------------------------------------------------------------------------------- model

def load_model_and_tokenizer(args, accelerator):
    """The base model (4-bit NF4 with --use_qlora) and its tokenizer, with a pad token and room for it."""
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path, token=args.token)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    kwargs = {"token": args.token}
    if args.use_qlora:
        from transformers import BitsAndBytesConfig

        on_gpu = accelerator.device.type == "cuda"
        compute_dtype = torch.bfloat16 if on_gpu else torch.float32  # bnb's CPU kernels compute in fp32
        kwargs.update(dtype=compute_dtype, device_map={"": accelerator.local_process_index if on_gpu else "cpu"},
                      quantization_config=BitsAndBytesConfig(
                          load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                          bnb_4bit_compute_dtype=compute_dtype))
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


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as unpacked, ZeRO-3 shards at their full size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    sizes = [(p.ds_numel if hasattr(p, "ds_numel") else p.numel(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, trainable in sizes if trainable), sum(n for n, _ in sizes)


def build_optimizer(model, args):
    """AdamW with no decay on biases and norm weights; QLoRA's paged AdamW 32-bit with --use_paged_optimizer."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "norm" in name else decay).append(param)
    groups = [{"params": params, "weight_decay": wd} for params, wd in ((decay, args.weight_decay), (no_decay, 0.0))
              if params]  # DeepSpeed drops empty groups, which would desynchronise the LR scheduler
    if args.use_paged_optimizer:
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(groups, lr=args.learning_rate)
    return torch.optim.AdamW(groups, lr=args.learning_rate)


# ----------------------------------------------------------------------------------------- checkpoints

def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (a `step_N` folder exists only once fully written), oldest first."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = CHECKPOINT_PATTERN.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
    return sorted(found)


def save_checkpoint(accelerator, output_dir: Path, state: dict, keep: int | None) -> None:
    """accelerate.save_state into a temporary folder (all ranks), renamed to step_N by the main process."""
    final = output_dir / f"step_{state['global_step']}"
    with atomic_dir(final) if accelerator.is_main_process else contextlib.nullcontext() as tmp:
        tmp = broadcast_object_list([str(tmp) if tmp else None])[0]
        accelerator.save_state(tmp)
        if accelerator.is_main_process:
            write_json(Path(tmp) / TRAINER_STATE, state)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process and keep:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info(f"saved checkpoint {final}")


def resolve_resume(args, output_dir: Path) -> Path | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "auto":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(args.resume_from_checkpoint)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {TRAINER_STATE})")
    return path


# ----------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model, eval_dl, accelerator) -> float:
    """Mean loss per trainable token over the held-out set (all ranks together)."""
    model.eval()
    loss_sum = torch.zeros((), device=accelerator.device)
    token_count = torch.zeros((), device=accelerator.device)
    for batch in tqdm(eval_dl, desc="eval", disable=not accelerator.is_local_main_process, leave=False):
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        loss_sum += model(**batch).loss.float() * tokens
        token_count += tokens
    model.train()
    return (accelerator.reduce(loss_sum, "sum") / accelerator.reduce(token_count, "sum")).item()


# ----------------------------------------------------------------------------------------------- main

def train(args) -> dict:
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
        (output_dir / COMPLETED_MARKER).unlink(missing_ok=True)  # this folder is being (re)written
        for leftover in [*output_dir.glob(".step_*.tmp"), *output_dir.glob(".final.*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # half-written by a killed run
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
    train_dl = DataLoader(train_ds, shuffle=True, batch_size=args.per_device_train_batch_size, collate_fn=collator,
                          generator=torch.Generator().manual_seed(args.seed))
    eval_dl = DataLoader(eval_ds, batch_size=args.per_device_train_batch_size, collate_fn=collator) if eval_ds else None

    # Optimizer and schedule. accelerate steps a prepared scheduler once per process, hence the factor.
    optimizer = build_optimizer(model, args)
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
    state = {"global_step": 0, "loss_sum": 0.0, "train_runtime": 0.0}
    checkpoint = resolve_resume(args, output_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
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
        for batch in epoch_dl:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
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
                eval_loss = evaluate(model, eval_dl, accelerator)
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
        eval_loss = evaluate(model, eval_dl, accelerator)
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
    }
    save_final(accelerator, model, tokenizer, output_dir, results)
    if args.with_tracking:
        accelerator.end_training()
    return results


def save_final(accelerator, model, tokenizer, output_dir: Path, results: dict) -> None:
    """Adapter (or full model) + tokenizer + all_results.json, then the `completed` marker.

    Every rank takes part in `get_state_dict` (under ZeRO-3 it gathers the shards); only the main process
    writes. Files are written in a temporary folder and moved in, so nothing half-written is left behind.
    """
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    # An added <pad> embedding row is never trained: keep embeddings out of the adapter (merge re-adds the row).
    extra = {"save_embedding_layers": False} if isinstance(unwrapped, PeftModel) else {}
    if accelerator.is_main_process:
        with tempfile.TemporaryDirectory(prefix=".final.", dir=output_dir) as tmp:
            unwrapped.save_pretrained(tmp, state_dict=state_dict, **extra)
            tokenizer.save_pretrained(tmp)
            write_json(Path(tmp) / "all_results.json", results)
            for item in Path(tmp).iterdir():
                target = output_dir / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(item, target)
        write_text(output_dir / COMPLETED_MARKER, "")
        logger.info(f"saved {output_dir}: train_loss {results['train_loss']:.4f}, eval_loss {results['eval_loss']}")
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
