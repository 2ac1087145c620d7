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

Both modes also report each loop's model FLOP/s as a fraction of what torch's matmul reaches on the same machine in
the same run, in the same dtype and thread count (a measured ceiling, not a datasheet figure):

    fraction = (model FLOPs of the epoch or step / its seconds) / matmul FLOP/s

Model FLOPs: `training_step_flops` (its docstring has the formula: frozen base, so ≈ 4·N·T, not 6·N·T), from the
model's config and the shapes of every forward the loop really ran, padding included, and the LM-head positions it
really computed (both recorded by `ForwardShapes`). The ceiling (`matmul_flops_per_s`): the fastest of the
decoder's projection shapes at (batch × sequence) rows, the median of 5 timings each, measured before every timed
repeat (every epoch, with ``--against trainer``); the median of those is the table's ceiling.
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
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from open_instruct.offline_assets import smollm2_path  # noqa: E402
from open_instruct.paper.params import ModelDims  # noqa: E402
from open_instruct.peft_methods import LLAMA_PROJECTIONS  # noqa: E402

if TYPE_CHECKING:
    import torch

METHODS = ("lora", "prolora")
RANK = 8


def import_heavy() -> None:
    """Import torch, PEFT, transformers and prolora (~10 s) into this module's namespace. `main` calls it only after
    argparse has accepted the command line, so a mistyped flag fails at once; code that loads this file for its
    functions (tests/test_bench_flops.py) calls it first. `training_step_flops` alone needs none of them."""
    global torch, LoraConfig, get_peft_model, AutoConfig, AutoModelForCausalLM, ProLoraConfig
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from prolora import ProLoraConfig


# ------------------------------------------------------------------- model FLOPs and the matmul ceiling

def training_step_flops(config: dict, target_modules, r: int, batch_shapes, lm_head_positions: int | None = None
                        ) -> int:
    """Matrix-multiply FLOPs of forward + backward of a Llama decoder with a frozen base and rank-``r`` adapters.

    ``config``: the model's config dict; ``target_modules``: the adapted projections (of q/k/v/o/gate/up/down);
    ``batch_shapes``: ``(batch, seq)`` of every forward, padding included (padded positions are computed like any
    other); ``lm_head_positions``: positions the LM head is applied to (default: all tokens; finetune's loss applies
    it only where the next token is labelled). A matmul ``(T × d_in) @ (d_in × d_out)`` costs ``2·T·d_in·d_out``.

    - frozen projection / LM head, per token: forward ``2·d_in·d_out``; backward only the activation gradient
      ``2·d_in·d_out``, and only where the input carries a gradient (the first layer's q/k/v read the normed
      embeddings, which do not); no weight gradient. Full fine-tuning would add another ``2·d_in·d_out``.
    - adapter on a projection, per token: forward ``2·r·(d_in + d_out)``; backward the weight gradients of A and B
      and B's activation gradient (``2·r·(d_in + 2·d_out)``), plus A's activation gradient ``2·r·d_in`` where the
      input carries a gradient. PRoLoRA counts as a LoRA of the same ``r``: its rebuilt A (r × d_in) and
      B (d_out × r) are multiplied exactly like LoRA's (rebuilding them is copying, not multiplying).
    - attention, per layer and sequence of length S, with D = heads × head_dim: forward QKᵀ and PV, ``2·S²·D``
      each, the full S × S square (causal masking computes it all; a kernel that skips the masked half does less
      work than counted); backward ``2·S²·D`` for each of dP, dV, dQ, dK that autograd needs.
    - not counted: norms, softmax, activations, RoPE, the loss, the optimizer step (elementwise, not matmuls).

    With every projection adapted this is ≈ ``4·N·T`` (N frozen projection + LM head weights) plus ``6·r·Σ(d_in +
    d_out)·T`` plus ``12·S²·D`` per layer and sequence — not the ``6·N·T`` of full fine-tuning.
    """
    shapes = ModelDims.from_config(config).projection_shapes()
    unknown = set(target_modules) - set(shapes)
    if unknown:
        raise ValueError(f"target_modules {sorted(unknown)}: not projections of a Llama decoder layer")
    hidden, vocab, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    attn_width = shapes["q_proj"][1]  # heads × head_dim (k and v are repeated to every query head)

    def linear(name: str, tokens: int, input_grad: bool) -> tuple[int, bool]:
        """FLOPs of one projection on ``tokens`` tokens, and whether its output carries a gradient."""
        d_in, d_out = shapes[name]
        flops = 2 * tokens * d_in * d_out * (2 if input_grad else 1)
        if name in target_modules:
            flops += 2 * tokens * r * (d_in + d_out)  # forward x·Aᵀ, then ·Bᵀ
            flops += 2 * tokens * r * (d_in + 2 * d_out) + (2 * tokens * r * d_in if input_grad else 0)
        return flops, input_grad or name in target_modules

    total = 0
    all_tokens = 0
    for batch, seq in batch_shapes:
        tokens = batch * seq
        all_tokens += tokens
        grad = False  # the embeddings are frozen
        for _ in range(layers):
            (fq, q_grad), (fk, k_grad), (fv, v_grad) = (linear(p, tokens, grad) for p in ("q_proj", "k_proj", "v_proj"))
            square = 2 * batch * seq * seq * attn_width
            scores_grad = q_grad or k_grad
            attention = 2 * square + square * (scores_grad + v_grad + q_grad + k_grad)  # fwd; dP, dV, dQ, dK
            fo, o_grad = linear("o_proj", tokens, scores_grad or v_grad)
            grad = grad or o_grad  # the residual stream
            (fg, g_grad), (fu, u_grad) = (linear(p, tokens, grad) for p in ("gate_proj", "up_proj"))
            fd, d_grad = linear("down_proj", tokens, g_grad or u_grad)
            grad = grad or d_grad
            total += fq + fk + fv + attention + fo + fg + fu + fd
    head_positions = all_tokens if lm_head_positions is None else lm_head_positions
    return total + 2 * head_positions * hidden * vocab * (2 if grad else 1)


def matmul_flops_per_s(tokens: int, config: dict, dtype: torch.dtype, device: str, repeats: int = 5) -> float:
    """What torch's matmul reaches here, now: the fastest of the decoder's three projection shapes
    ``(tokens × hidden) @ (hidden × intermediate)``, ``(tokens × intermediate) @ (intermediate × hidden)`` and
    ``(tokens × hidden) @ (hidden × hidden)``, each timed as the median of ``repeats`` runs (after a warm-up),
    in ``dtype`` with torch's current thread count."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    best = 0.0
    for d_in, d_out in ((hidden, inner), (inner, hidden), (hidden, hidden)):
        a = torch.randn(tokens, d_in, dtype=dtype, device=device)
        b = torch.randn(d_in, d_out, dtype=dtype, device=device)
        seconds = []
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.matmul(a, b)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first run is the warm-up
                seconds.append(time.perf_counter() - start)
        best = max(best, 2 * tokens * d_in * d_out / statistics.median(seconds))
    return best


class ForwardShapes:
    """Records, while active, the ``(batch, seq)`` of every input-embedding lookup and the positions every LM-head
    call covers, in any model of this vocabulary (a global forward pre-hook: it sees inside `finetune.main` too)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.batch_shapes: list[tuple[int, int]] = []
        self.lm_head_positions = 0

    def _hook(self, module, inputs):
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == self.vocab_size and inputs:
            self.batch_shapes.append(tuple(inputs[0].shape))
        elif isinstance(module, torch.nn.Linear) and module.out_features == self.vocab_size and inputs:
            self.lm_head_positions += inputs[0].shape[:-1].numel()

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def adapter_config(method: str):
    common = dict(task_type="CAUSAL_LM", r=RANK, lora_alpha=16, lora_dropout=0.05, target_modules=LLAMA_PROJECTIONS)
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

    from open_instruct.data.encoding import IGNORE_INDEX

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
    model_config = AutoConfig.from_pretrained(smollm2_path()).to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            source, max_seq_length = LOOP_DATASETS[name]
            n = args.examples if name == "asdiv" else args.long_examples
            data_file = subset_file(REPO / source, n, Path(tmp) / f"{name}.jsonl")
            tokens = non_pad_tokens(data_file, max_seq_length)
            seconds = {label: [] for label, *_ in LOOP_RUNS}
            flop_rate = {label: [] for label, *_ in LOOP_RUNS}  # model FLOP/s of each epoch
            ceilings = []  # matmul FLOP/s, measured right before each epoch
            for repeat in range(args.loop_repeats):  # order reversed every other repeat: load drift hits all alike
                for label, loop, method, grouped in LOOP_RUNS if repeat % 2 == 0 else reversed(LOOP_RUNS):
                    out = Path(tmp) / f"{name}_{repeat}_{len(seconds[label])}_{loop}_{method}_{grouped}"
                    ceilings.append(matmul_flops_per_s(args.batch_size * max_seq_length, model_config,
                                                       torch.float32, args.device))
                    with ForwardShapes(model_config["vocab_size"]) as shapes:
                        seconds[label].append(run_trainer(data_file, max_seq_length, grouped, args, out)
                                              if loop == "trainer" else
                                              run_ours(data_file, max_seq_length, method, grouped, args, out))
                    flops = training_step_flops(model_config, LLAMA_PROJECTIONS, RANK, shapes.batch_shapes,
                                                shapes.lm_head_positions)
                    flop_rate[label].append(flops / seconds[label][-1])
                    print(f"{name} repeat {repeat + 1}: {label:34s} {seconds[label][-1]:7.1f} s  "
                          f"{tokens / seconds[label][-1]:8,.0f} non-pad tok/s  {flop_rate[label][-1] / 1e9:6.2f} "
                          f"model GFLOP/s (matmul: {ceilings[-1] / 1e9:.1f})", flush=True)
            speed = {label: tokens / statistics.median(values) for label, values in seconds.items()}
            ceiling = statistics.median(ceilings)
            result[name] = {"examples": n, "non_pad_tokens": tokens, "tokens_per_s": speed,
                            "model_flops_per_s": {label: statistics.median(v) for label, v in flop_rate.items()},
                            "matmul_flops_per_s": ceiling,
                            "fraction_of_matmul": {label: statistics.median(v) / ceiling
                                                   for label, v in flop_rate.items()},
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
        print(f"  {name} ({r['examples']} examples, {r['non_pad_tokens']:,} tokens; matmul ceiling "
              f"{r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s):")
        for label, *_ in LOOP_RUNS:
            print(f"    {label:34s} {r['tokens_per_s'][label]:8,.0f} non-pad tok/s  "
                  f"{r['model_flops_per_s'][label] / 1e9:6.2f} model GFLOP/s = "
                  f"{r['fraction_of_matmul'][label]:.1%} of matmul")
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
    p.add_argument("--device", help="default: cuda if available, else cpu")
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
    import_heavy()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
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
    model_config = models["lora"][0].config.to_dict()
    # model(**batch) with labels: the LM head at every position; PRoLoRA counts as LoRA of the same rank
    step_flops = training_step_flops(model_config, LLAMA_PROJECTIONS, RANK, [(args.batch_size, args.seq_len)])
    ceilings = []
    for repeat in range(args.repeats):
        ceilings.append(matmul_flops_per_s(tokens, model_config, torch.float32, args.device))
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
        "model_flops_per_step": step_flops, "matmul_flops_per_s": statistics.median(ceilings),
        **{f"{m}_fraction_of_matmul": step_flops / median[m] / statistics.median(ceilings) for m in METHODS},
        "time_ratio_prolora_over_lora": median["prolora"] / median["lora"],
        "memory_ratio_prolora_over_lora": memory["prolora"] / memory["lora"],
    }
    print(f"\nSmolLM2-135M, batch {args.batch_size} × {args.seq_len} tokens, {args.device}, "
          f"median of {args.repeats} × {args.steps} steps; {step_flops / 1e9:,.1f} model GFLOP per step, "
          f"matmul ceiling {result['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s")
    for m in METHODS:
        print(f"  {m:8s} {result[f'{m}_tokens_per_s']:10,.0f} tok/s   {step_flops / median[m] / 1e9:6.2f} model "
              f"GFLOP/s = {result[f'{m}_fraction_of_matmul']:.1%} of matmul   {memory[m]:8,.0f} MiB ({memory_kind})   "
              f"{trainable[m]:,} trainable params")
    print(f"  time ratio PRoLoRA/LoRA   {result['time_ratio_prolora_over_lora']:.3f}  (target ≤ 1.03)")
    print(f"  memory ratio PRoLoRA/LoRA {result['memory_ratio_prolora_over_lora']:.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
