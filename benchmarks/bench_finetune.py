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

``--against trainer`` measures the training loop instead, against HF ``Trainer`` + PEFT LoRA r=8 as the baseline,
in the same run on the same real data (the first ``--examples`` ASDiv problems, and ``--long_examples`` BIG-bench
examples: long prompt, one-token answer), encoded by finetune's own encoder, one epoch each, so every run sees
exactly the same examples. Five kinds of run, each timed ``--loop_repeats`` times in alternating order:
Trainer + LoRA with its default random sampling and with ``train_sampling_strategy="group_by_length"``;
``open_instruct.finetune`` with PRoLoRA r=8 u=1 m=n=2, random and ``--group_by_length``; finetune with LoRA r=8,
random (the like-for-like loop comparison). Both loops run fp32, batch ``--batch_size``, no clipping.

    tokens/s = non-pad tokens of the epoch (sum of the examples' lengths) / seconds of the training loop

(Trainer's ``train_runtime``, finetune's ``train_runtime``: neither includes loading the model or the data.)
Targets: PRoLoRA grouped / Trainer random ≥ 1.5, PRoLoRA grouped / Trainer grouped ≥ 1.25.

    python benchmarks/bench_finetune.py --against trainer --batch_size 8 [--datasets asdiv bigbench]
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


# ------------------------------------------------------------------- the training loop against HF Trainer

LOOP_DATASETS = {  # name → (training file made by `open_instruct.offline_data train --bigbench`, max_seq_length)
    "asdiv": ("data/processed/asdiv/asdiv_data.jsonl", 256),
    "bigbench": ("data/processed/bigbench/bigbench_data.jsonl", 512),  # long prompt, answer "(B)"
}
LOOP_RUNS = (  # (label, trainer or ours, method, length-grouped)
    ("Trainer + LoRA, random", "trainer", "lora", False),
    ("finetune PRoLoRA, grouped", "ours", "prolora", True),
    ("Trainer + LoRA, group_by_length", "trainer", "lora", True),
    ("finetune PRoLoRA, random", "ours", "prolora", False),
    ("finetune LoRA, random", "ours", "lora", False),
)


def subset_file(source: Path, n: int, out: Path) -> Path:
    """The first `n` records of a jsonl file (every run trains on exactly these, one epoch)."""
    with open(source, encoding="utf-8") as f:
        out.write_text("".join(line for line, _ in zip(f, range(n))), encoding="utf-8")
    return out


def run_trainer(data_file: Path, max_seq_length: int, grouped: bool, args, out: Path) -> float:
    """Seconds of `Trainer.train()` for one epoch of PEFT LoRA on `data_file` (same encoding as finetune)."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from open_instruct.encoding import IGNORE_INDEX

    tokenizer, dataset = encode(data_file, max_seq_length)
    torch.manual_seed(args.seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32),
                           adapter_config("lora"))
    training_args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, num_train_epochs=1,
        learning_rate=args.learning_rate, lr_scheduler_type="linear", max_grad_norm=0.0, save_strategy="no",
        report_to="none", logging_steps=10**6, disable_tqdm=True, seed=args.seed,
        use_cpu=not torch.cuda.is_available(), train_sampling_strategy="group_by_length" if grouped else "random")
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding="longest",
                                                           label_pad_token_id=IGNORE_INDEX))
    return trainer.train().metrics["train_runtime"]


def run_ours(data_file: Path, max_seq_length: int, method: str, grouped: bool, args, out: Path) -> float:
    """Seconds of finetune's training loop for one epoch of the same adapter on the same file."""
    from open_instruct import finetune

    extra = ["--unshared_r", "1", "--reduce_lora_A_x", "2", "--reduce_lora_B_x", "2"] if method == "prolora" else []
    results = finetune.main([
        "--model_name_or_path", str(smollm2_path()), "--train_file", str(data_file), "--output_dir", str(out),
        "--peft_method", method, "--lora_rank", "8", "--lora_alpha", "16", "--lora_dropout", "0.05", *extra,
        "--max_seq_length", str(max_seq_length), "--per_device_train_batch_size", str(args.batch_size),
        "--num_train_epochs", "1", "--learning_rate", str(args.learning_rate), "--lr_scheduler_type", "linear",
        "--logging_steps", "1000000", "--seed", str(args.seed), *(["--group_by_length"] if grouped else [])])
    return results["train_runtime"]


def encode(data_file: Path, max_seq_length: int):
    """SmolLM2's tokenizer and `data_file` encoded exactly as finetune encodes it."""
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from open_instruct.training import data

    PartialState()  # finetune logs through accelerate
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    encode_args = argparse.Namespace(max_seq_length=max_seq_length, preprocessing_num_workers=None)
    return tokenizer, data.encode_records(data.read_and_validate_records(str(data_file)), tokenizer, encode_args,
                                          "train")


def non_pad_tokens(data_file: Path, max_seq_length: int) -> int:
    return sum(len(ids) for ids in encode(data_file, max_seq_length)[1]["input_ids"])


def compare_with_trainer(args) -> dict:
    """tokens/s of each LOOP_RUNS entry on each dataset, and the ratios the issue sets targets for."""
    import logging
    import tempfile

    logging.basicConfig(level=logging.WARNING)
    result = {"device": args.device, "batch_size": args.batch_size, "threads": args.threads,
              "loop_repeats": args.loop_repeats}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            source, max_seq_length = LOOP_DATASETS[name]
            n = args.examples if name == "asdiv" else args.long_examples
            data_file = subset_file(REPO / source, n, Path(tmp) / f"{name}.jsonl")
            tokens = non_pad_tokens(data_file, max_seq_length)
            seconds = {label: [] for label, *_ in LOOP_RUNS}
            for repeat in range(args.loop_repeats):  # order reversed every other repeat: load drift hits all alike
                for label, loop, method, grouped in LOOP_RUNS if repeat % 2 == 0 else reversed(LOOP_RUNS):
                    out = Path(tmp) / f"{name}_{repeat}_{len(seconds[label])}_{loop}_{method}_{grouped}"
                    seconds[label].append(run_trainer(data_file, max_seq_length, grouped, args, out)
                                          if loop == "trainer" else
                                          run_ours(data_file, max_seq_length, method, grouped, args, out))
                    print(f"{name} repeat {repeat + 1}: {label:34s} {seconds[label][-1]:7.1f} s  "
                          f"{tokens / seconds[label][-1]:8,.0f} non-pad tok/s", flush=True)
            speed = {label: tokens / statistics.median(values) for label, values in seconds.items()}
            result[name] = {"examples": n, "non_pad_tokens": tokens, "tokens_per_s": speed,
                            "ratio_prolora_grouped_over_trainer_random":
                                speed["finetune PRoLoRA, grouped"] / speed["Trainer + LoRA, random"],
                            "ratio_prolora_grouped_over_trainer_grouped":
                                speed["finetune PRoLoRA, grouped"] / speed["Trainer + LoRA, group_by_length"],
                            "ratio_prolora_random_over_trainer_random":
                                speed["finetune PRoLoRA, random"] / speed["Trainer + LoRA, random"],
                            "ratio_lora_random_over_trainer_random":
                                speed["finetune LoRA, random"] / speed["Trainer + LoRA, random"]}
    print(f"\nSmolLM2-135M, LoRA / PRoLoRA r=8 (u=1, m=n=2 for PRoLoRA), batch {args.batch_size}, one epoch, "
          f"{args.device}, {args.threads} threads; tokens/s = non-pad tokens of the epoch / training-loop seconds")
    for name in args.datasets:
        r = result[name]
        print(f"  {name} ({r['examples']} examples, {r['non_pad_tokens']:,} tokens):")
        print(f"    PRoLoRA grouped / Trainer+LoRA random   {r['ratio_prolora_grouped_over_trainer_random']:.2f}x"
              "  (target >= 1.5)")
        print(f"    PRoLoRA grouped / Trainer+LoRA grouped  {r['ratio_prolora_grouped_over_trainer_grouped']:.2f}x"
              "  (target >= 1.25)")
        print(f"    PRoLoRA random  / Trainer+LoRA random   {r['ratio_prolora_random_over_trainer_random']:.2f}x")
        print(f"    LoRA random     / Trainer+LoRA random   {r['ratio_lora_random_over_trainer_random']:.2f}x")
    print(json.dumps(result))
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--memory_only", choices=METHODS, help=argparse.SUPPRESS)  # the CPU memory subprocess
    loop = p.add_argument_group("--against trainer: finetune's loop vs HF Trainer + PEFT LoRA on real data")
    p.add_argument("--against", choices=["lora", "trainer"], default="lora",
                   help="lora: PRoLoRA vs LoRA training steps on random tokens; trainer: see below")
    loop.add_argument("--datasets", nargs="+", choices=sorted(LOOP_DATASETS), default=sorted(LOOP_DATASETS))
    loop.add_argument("--examples", type=int, default=160, help="ASDiv examples (one epoch)")
    loop.add_argument("--long_examples", type=int, default=64, help="BIG-bench examples (one epoch)")
    loop.add_argument("--learning_rate", type=float, default=1e-4)
    loop.add_argument("--seed", type=int, default=1)
    loop.add_argument("--loop_repeats", type=int, default=2, help="epochs timed per run kind (median is used)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.against == "trainer":
        return compare_with_trainer(args)

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
