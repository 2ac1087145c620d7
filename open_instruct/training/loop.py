"""finetune's training loop and held-out evaluation.

One optimizer step is ``--gradient_accumulation_steps`` micro-batches on every process. The loop logs the mean
loss every ``--logging_steps``, computes ``eval_loss`` and ``eval_token_accuracy`` every ``--eval_steps`` (and once
at the end), and writes a checkpoint every ``--checkpointing_steps`` (`open_instruct.training.checkpoints`). A
resumed run skips the batches its checkpoint's epoch had already consumed, so it sees the same batches as a run that
was never interrupted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from tqdm.auto import tqdm
from transformers import get_scheduler

from open_instruct.training import checkpoints
from open_instruct.training.label_loss import CausalLMLoss

logger = get_logger(__name__)


@dataclass(frozen=True)
class Schedule:
    """How long the run is: training examples, optimizer steps per epoch and in all, and the epochs they span."""

    num_examples: int
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int

    @classmethod
    def of(cls, args, num_examples: int, num_processes: int) -> Schedule:
        steps_per_epoch = math.ceil(math.ceil(num_examples / (args.per_device_train_batch_size * num_processes))
                                    / args.gradient_accumulation_steps)
        max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
        return cls(num_examples, steps_per_epoch, max_train_steps, math.ceil(max_train_steps / steps_per_epoch))


def build_scheduler(args, optimizer, schedule: Schedule, accelerator):
    """The --lr_scheduler_type schedule; accelerate steps a prepared scheduler once per process, hence the factor.

    Under DeepSpeed, --clip_grad_norm goes into its config ("auto" there), as DeepSpeed clips inside its step.
    """
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer,
        num_warmup_steps=int(schedule.max_train_steps * args.warmup_ratio) * accelerator.num_processes,
        num_training_steps=schedule.max_train_steps * accelerator.num_processes)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        if ds_config.get("gradient_clipping", "auto") == "auto":
            ds_config["gradient_clipping"] = max(args.clip_grad_norm, 0.0)
    return scheduler


@torch.no_grad()
def evaluate(model, eval_dl, accelerator, loss_fn: CausalLMLoss) -> dict[str, float]:
    """Over the held-out set (all ranks together): ``eval_loss``, the mean cross-entropy per labelled token, and
    ``eval_token_accuracy``, the fraction of labelled tokens that are the model's greedy next-token choice (a
    held-out accuracy with thousands of trials, far from chance and from ceiling, computed in the same pass)."""
    model.eval()
    loss_sum = torch.zeros((), device=accelerator.device)
    hits = torch.zeros((), device=accelerator.device)
    token_count = torch.zeros((), device=accelerator.device)
    for batch in tqdm(eval_dl, desc="eval", disable=not accelerator.is_local_main_process, leave=False):
        logits, targets = loss_fn.labelled_logits(model, batch)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        hits += (logits.argmax(dim=-1) == targets).sum()
        token_count += targets.numel()
    model.train()
    tokens = accelerator.reduce(token_count, "sum")
    return {"eval_loss": (accelerator.reduce(loss_sum, "sum") / tokens).item(),
            "eval_token_accuracy": (accelerator.reduce(hits, "sum") / tokens).item(),
            "eval_tokens": int(tokens.item())}  # the accuracy's number of trials


def _log_eval(args, accelerator, metrics: dict[str, float], step: int, prefix: str) -> None:
    logger.info(f"{prefix}: eval_loss {metrics['eval_loss']:.4f}, "
                f"eval_token_accuracy {metrics['eval_token_accuracy']:.4f}")
    if args.with_tracking:
        accelerator.log(metrics, step=step)


def train_loop(args, accelerator, model, optimizer, scheduler, train_dl, eval_dl, loss_fn: CausalLMLoss,
               length_sampler, schedule: Schedule, state: dict, output_dir: Path) -> dict[str, float]:
    """Train from ``state["global_step"]`` to the schedule's end, updating ``state`` (step, summed loss, run time)
    and checkpointing on the way; returns the final ``evaluate`` metrics ({} without held-out data)."""
    max_train_steps, steps_per_epoch = schedule.max_train_steps, schedule.steps_per_epoch
    starting_epoch, steps_done_in_epoch = divmod(state["global_step"], steps_per_epoch)
    logger.info(f"{schedule.num_examples} examples, {schedule.num_epochs} epochs, {max_train_steps} optimizer steps "
                f"of {args.per_device_train_batch_size} × {args.gradient_accumulation_steps} × "
                f"{accelerator.num_processes} examples")
    progress = tqdm(total=max_train_steps, initial=state["global_step"], desc="train",
                    disable=not accelerator.is_local_main_process)
    save_every = int(args.checkpointing_steps) if str(args.checkpointing_steps).isdigit() else None
    started = time.time()
    model.train()
    window_loss, window_steps, eval_metrics = 0.0, 0, {}
    micro_loss = torch.zeros((), device=accelerator.device)
    micro_count = 0
    for epoch in range(starting_epoch, schedule.num_epochs):
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
                _log_eval(args, accelerator, evaluate(model, eval_dl, accelerator, loss_fn), step, f"step {step}")
            end_of_epoch = step % steps_per_epoch == 0
            if step < max_train_steps and ((save_every and step % save_every == 0) or
                                           (args.checkpointing_steps == "epoch" and end_of_epoch)):
                state["train_runtime"] += time.time() - started
                started = time.time()
                checkpoints.save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit)
            if step >= max_train_steps:
                break
    progress.close()
    state["train_runtime"] += time.time() - started

    if eval_dl is not None:
        eval_metrics = evaluate(model, eval_dl, accelerator, loss_fn)
        _log_eval(args, accelerator, eval_metrics, state["global_step"], "final")
    return eval_metrics
