#!/usr/bin/env python
"""Training-step speed and peak memory of PRoLoRA vs LoRA on SmolLM2-135M, measured in the same run.

    python benchmarks/bench_finetune.py [--repeats 5] [--steps 3] [--batch_size 4] [--seq_len 256] [--device cpu]

Both adapters sit on all seven projections with rank 8 (PRoLoRA: u=1, m=n=2). A "step" is what finetune does
per batch: forward with labels, backward, AdamW step, zero_grad. The two models are timed in interleaved
repeats (order alternating, so drift in machine load hits both alike) and the medians are compared:

    time ratio = median PRoLoRA step time / median LoRA step time      (target ≤ 1.03)

Peak memory: on a GPU, `torch.cuda.max_memory_allocated` around each method's steps; on CPU torch's allocator
keeps no statistics, so each method runs once more in a fresh subprocess that samples its resident set size
(psutil, every 2 ms) while it trains: reported is the peak growth over the RSS after loading the model, i.e. the
memory the training steps need (activations, gradients, optimizer state, PRoLoRA's rebuilt A/B), without the
base weights every method shares.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from open_instruct.offline_assets import smollm2_path  # noqa: E402
from open_instruct.peft_methods import LLAMA_PROJECTIONS  # noqa: E402
from prolora import ProLoraConfig  # noqa: E402

METHODS = ("lora", "prolora")


def adapter_config(method: str):
    common = dict(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=LLAMA_PROJECTIONS)
    if method == "lora":
        return LoraConfig(**common)
    return ProLoraConfig(**common, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2)


def build(method: str, device: str):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32),
                           adapter_config(method)).to(device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def make_batch(args, vocab_size: int) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab_size, (args.batch_size, args.seq_len), generator=generator).to(args.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def train_steps(model, optimizer, batch, steps: int) -> float:
    """Seconds per step over `steps` full training steps."""
    if batch["input_ids"].is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if batch["input_ids"].is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


class RssSampler(threading.Thread):
    """Polls this process's resident set size in the background and keeps the maximum."""

    def __init__(self):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def stop(self) -> int:
        self.running = False
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def peak_rss_subprocess(method: str, args) -> float:
    """Peak RSS growth (MiB) while a fresh process that built `method` runs the same training steps."""
    cmd = [sys.executable, __file__, "--memory_only", method, "--steps", str(args.steps), "--batch_size",
           str(args.batch_size), "--seq_len", str(args.seq_len), "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--memory_only", choices=METHODS, help=argparse.SUPPRESS)  # the CPU memory subprocess
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.memory_only:
        model, optimizer = build(args.memory_only, args.device)
        batch = make_batch(args, model.config.vocab_size)
        sampler = RssSampler()
        baseline = sampler.peak
        sampler.start()
        train_steps(model, optimizer, batch, args.steps + 1)
        print(json.dumps({"peak_rss_mib": (sampler.stop() - baseline) / 2**20}))
        return {}

    models = {m: build(m, args.device) for m in METHODS}
    batch = make_batch(args, models["lora"][0].config.vocab_size)
    tokens = args.batch_size * args.seq_len
    for model, optimizer in models.values():
        train_steps(model, optimizer, batch, 1)  # warm-up: allocator, kernels, optimizer state
    times = {m: [] for m in METHODS}
    peak_gpu = {m: 0.0 for m in METHODS}
    for repeat in range(args.repeats):
        for method in METHODS if repeat % 2 == 0 else reversed(METHODS):
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            times[method].append(train_steps(*models[method], batch, args.steps))
            if args.device.startswith("cuda"):
                peak_gpu[method] = max(peak_gpu[method], torch.cuda.max_memory_allocated() / 2**20)
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{m} {tokens / times[m][-1]:,.0f} tok/s" for m in METHODS), flush=True)

    if args.device.startswith("cuda"):
        memory, memory_kind = peak_gpu, "peak CUDA memory allocated"
    else:
        del models
        memory, memory_kind = {m: peak_rss_subprocess(m, args) for m in METHODS}, "peak RSS growth in training"
    median = {m: statistics.median(times[m]) for m in METHODS}
    trainable = {m: sum(p.numel() for p in build(m, "cpu")[0].parameters() if p.requires_grad) for m in METHODS}
    result = {
        "device": args.device, "batch_size": args.batch_size, "seq_len": args.seq_len, "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        **{f"{m}_tokens_per_s": tokens / median[m] for m in METHODS},
        **{f"{m}_peak_memory_mib": memory[m] for m in METHODS},
        **{f"{m}_trainable_params": trainable[m] for m in METHODS},
        "time_ratio_prolora_over_lora": median["prolora"] / median["lora"],
        "memory_ratio_prolora_over_lora": memory["prolora"] / memory["lora"],
    }
    print(f"\nSmolLM2-135M, batch {args.batch_size} × {args.seq_len} tokens, {args.device}, "
          f"median of {args.repeats} × {args.steps} steps")
    for m in METHODS:
        print(f"  {m:8s} {result[f'{m}_tokens_per_s']:10,.0f} tok/s   {memory[m]:8,.0f} MiB ({memory_kind})   "
              f"{trainable[m]:,} trainable params")
    print(f"  time ratio PRoLoRA/LoRA   {result['time_ratio_prolora_over_lora']:.3f}  (target ≤ 1.03)")
    print(f"  memory ratio PRoLoRA/LoRA {result['memory_ratio_prolora_over_lora']:.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
