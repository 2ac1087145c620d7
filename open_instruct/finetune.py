"""Instruction-tune a causal LM with LoRA / PRoLoRA / VeRA / Tied-LoRA (or fully) in an accelerate loop.

It keeps open-instruct's command line (``--model_name_or_path``, ``--train_file``, ``--use_lora --lora_rank ...``,
``--use_qlora``) and adds ``--peft_method`` with the PRoLoRA authors' flag names (``--unshared_r``,
``--reduce_lora_A_x``, ``--reduce_lora_B_x``, ``--no_lora_rotation``, ``--no_rectified_init``); their
Trainer-style command lines (``--use_lora True --max_steps ...``) work as well. Launch it any of these ways::

    python -m open_instruct.finetune ...
    accelerate launch [--num_processes N] -m open_instruct.finetune ...
    accelerate launch --use_deepspeed --deepspeed_config_file configs/ds_configs/stage3_no_offloading_accelerate.conf \\
        -m open_instruct.finetune ...

This file reads top to bottom: parse -> check inputs -> load -> wrap with PEFT -> data -> loop -> save; each step
lives in `open_instruct.training` (one module per role). Before anything heavy loads, every flag and every file it
names is checked; a problem ends the run with one ``error:`` line and exit status 2 and leaves an earlier run in
``--output_dir`` as it was. ``--peft_method`` implies ``--use_lora``; adapter flags in a full fine-tune are an error.

With ``--checkpointing_steps`` a run killed at any point resumes (``--resume_from_checkpoint auto``) from the newest
whole checkpoint and ends with the same adapter as a run that was never interrupted. The final ``--output_dir``
holds the adapter (or the full model), the tokenizer, ``all_results.json``, an empty ``completed`` marker and this
run's checkpoints, swapped in as a whole (`open_instruct.training.checkpoints`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from open_instruct.cli import run as run_cli
from open_instruct.training.args import parse_args, validate_args
from open_instruct.training.inputs import check_adapter_geometry, check_inputs

# parse_args, validate_args and check_adapter_geometry: also what the grid's --dry_run checks a command line with
__all__ = ["check_adapter_geometry", "check_inputs", "main", "parse_args", "train", "validate_args"]


def train(args) -> dict:
    """One fine-tuning run of validated ``args``; returns what it writes to all_results.json.

    torch, transformers and peft are imported here, after `main` has checked the flags.
    """
    import datasets
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed

    from open_instruct import base_quantization
    from open_instruct.training import checkpoints, data, loop
    from open_instruct.training import model as modelling
    from open_instruct.training.label_loss import CausalLMLoss

    checkpoint = check_inputs(args)  # an existing run in --output_dir is not touched before this passes
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.with_tracking else None, project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed))
    log = get_logger(__name__)
    log.info(accelerator.state, main_process_only=False)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.disable_progress_bar()
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.clean_leftovers(output_dir)  # a previous run here stays whole (and `completed`) until the swap
    accelerator.wait_for_everyone()

    # Load the base model and tokenizer; wrap it with the adapter.
    model, tokenizer = modelling.load_model_and_tokenizer(args, accelerator)
    model, peft_summary = modelling.wrap_with_peft(model, args)
    trainable_params, total_params = modelling.count_parameters(model)
    log.info(f"trainable parameters: {trainable_params:,} of {total_params:,} "
             f"({100 * trainable_params / total_params:.4f}%)")

    # Data.
    with accelerator.main_process_first():
        train_ds, eval_ds = data.load_datasets(args, tokenizer)
    train_dl, length_sampler = data.train_dataloader(train_ds, tokenizer, args)
    eval_dl = data.eval_dataloader(eval_ds, args.per_device_train_batch_size, data.collate(tokenizer)) \
        if eval_ds else None
    loss_fn = CausalLMLoss(model)

    # Optimizer, schedule, and accelerate's wrappers.
    optimizer = modelling.build_optimizer(model, args, fused=accelerator.distributed_type != DistributedType.DEEPSPEED)
    schedule = loop.Schedule.of(args, len(train_ds), accelerator.num_processes)
    scheduler = loop.build_scheduler(args, optimizer, schedule, accelerator)
    model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    if eval_dl is not None:
        eval_dl = accelerator.prepare(eval_dl)
    if args.with_tracking:
        config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers("finetune", config)

    # Loop, from the start or from the checkpoint (model, optimizer, scheduler and RNG restored).
    state = checkpoints.new_state(args)
    if checkpoint is not None:
        state = checkpoints.load_checkpoint(accelerator, checkpoint, state)
    eval_metrics = loop.train_loop(args, accelerator, model, optimizer, scheduler, train_dl, eval_dl, loss_fn,
                                length_sampler, schedule, state, output_dir)

    # Save: the adapter (or model), tokenizer and results replace --output_dir as a whole.
    results = {
        "train_loss": state["loss_sum"] / max(state["global_step"], 1),
        "eval_loss": eval_metrics.get("eval_loss"),
        "eval_token_accuracy": eval_metrics.get("eval_token_accuracy"),
        "eval_tokens": eval_metrics.get("eval_tokens"),
        "train_runtime": state["train_runtime"],
        "global_step": state["global_step"],
        "trainable_params": trainable_params,
        "total_params": total_params,
        "peft_method": args.peft_method if args.use_lora else None,
        "peft_config": peft_summary,
        base_quantization.KEY: base_quantization.record() if args.use_qlora else None,  # read by the evals
    }
    checkpoints.save_final(accelerator, model, tokenizer, output_dir, results, state["run_id"],
                           keep=checkpoints.FOREIGN_ENTRIES + (("finetune",) if args.with_tracking else ()))
    if args.with_tracking:
        accelerator.end_training()
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    validate_args(args)  # flags only: nothing heavy is imported before a typo is reported
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train(args)


if __name__ == "__main__":
    run_cli(main)
