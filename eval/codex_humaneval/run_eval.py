"""Codex-HumanEval: sample function bodies from a model and report the unbiased pass@k of their unit tests.

Data: ``--data_file`` (default ``data/eval/codex_humaneval/HumanEval.jsonl.gz``; the gunzipped ``.jsonl`` works
too) with the 164 problems of Chen et al. (2021). Prompt: the problem's ``prompt`` (signature + docstring) —
or, with ``--use_chat_format``, one user turn "Complete the following python function.\\n\\n\\n{prompt}" followed
by the assistant's start "Here is the completed function:\\n\\n\\n{prompt}", so the model continues the body.
Generation: ``--unbiased_sampling_size_n`` samples per problem, temperature ``--temperature`` (0.1),
top_p 0.95, at most 512 new tokens, cut at the first "\\nclass", "\\ndef", "\\n#", "\\nif" or "\\nprint".
Scoring: :mod:`eval.codex_humaneval.evaluate` runs prompt + completion + tests in the sandbox of
:mod:`eval.codex_humaneval.execution` (opt-in: ``--allow_code_execution`` or ``HF_ALLOW_CODE_EVAL=1``).

Outputs in ``--save_dir``: ``codex_eval_predictions.jsonl`` (task_id, prompt, completion per sample),
``codex_eval_predictions.jsonl_results.jsonl`` (plus passed/result) and ``metrics.json`` =
``{"pass@k": ...}`` for each ``--eval_pass_at_ks`` value, in [0, 1].
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path
from typing import Callable

from eval.codex_humaneval.evaluate import add_execution_args, check_ks, default_workers, read_problems, score_and_save
from eval.codex_humaneval.execution import OPT_IN_MESSAGE, SandboxLimits, code_execution_allowed
from eval.common import EvalError, add_model_args, check_model_args, cli_main
from eval.templates import chat_prompt, resolve_chat_formatter
from open_instruct.io_utils import write_jsonl

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 512
TOP_P = 0.95
STOP_SEQUENCES = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
CHAT_INSTRUCTION = "Complete the following python function.\n\n\n"
CHAT_ANSWER_PREFIX = "Here is the completed function:\n\n\n"
PREDICTIONS_FILE = "codex_eval_predictions.jsonl"


def build_prompt(problem: dict, formatter: Callable | None) -> str:
    """The raw prompt, or the chat turn whose assistant part already repeats the prompt (body continues it)."""
    if formatter is None:
        return problem["prompt"]
    return chat_prompt(formatter, CHAT_INSTRUCTION + problem["prompt"], CHAT_ANSWER_PREFIX + problem["prompt"])


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be refused before a model is loaded."""
    if not code_execution_allowed(args.allow_code_execution):
        raise EvalError(OPT_IN_MESSAGE)
    check_model_args(args)
    check_ks(args.eval_pass_at_ks)
    n = args.unbiased_sampling_size_n
    if n < max(args.eval_pass_at_ks):
        raise EvalError(f"--unbiased_sampling_size_n {n} must be >= the largest k of --eval_pass_at_ks "
                        f"{args.eval_pass_at_ks}")
    if args.temperature < 0 or (args.temperature == 0 and n > 1):
        raise EvalError(f"--temperature {args.temperature}: must be > 0 to draw {n} samples per problem "
                        "(use 0 only with --unbiased_sampling_size_n 1)")
    if args.max_num_examples is not None and args.max_num_examples < 1:
        raise EvalError(f"--max_num_examples must be >= 1, got {args.max_num_examples}")


def main(args: argparse.Namespace) -> dict:
    check_args(args)
    problems = list(read_problems(args.data_file).values())
    if args.max_num_examples and len(problems) > args.max_num_examples:
        problems = random.Random(42).sample(problems, args.max_num_examples)

    from eval.backends import make_backend  # torch/transformers: only once the arguments are known to be good

    backend = make_backend(args)
    formatter = None
    if args.use_chat_format:
        try:
            formatter = resolve_chat_formatter(args.chat_formatting_function, backend.tokenizer)
        except ValueError as err:
            raise EvalError(str(err)) from None
    prompts = [build_prompt(problem, formatter) for problem in problems]
    logger.info("sampling %d completions for each of %d problems", args.unbiased_sampling_size_n, len(prompts))
    outputs = backend.generate(prompts, args.max_new_tokens, temperature=args.temperature, top_p=TOP_P,
                               n=args.unbiased_sampling_size_n, stop=STOP_SEQUENCES, batch_size=args.eval_batch_size)
    samples = [{"task_id": problem["task_id"], "prompt": problem["prompt"], "completion": completion}
               for problem, completions in zip(problems, outputs) for completion in completions]

    save_dir = Path(args.save_dir)
    write_jsonl(save_dir / PREDICTIONS_FILE, samples)
    return score_and_save({p["task_id"]: p for p in problems}, samples, PREDICTIONS_FILE, save_dir,
                          args.eval_pass_at_ks, SandboxLimits(timeout=args.timeout), args.n_workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_file", type=str, default="data/eval/codex_humaneval/HumanEval.jsonl.gz",
                        help="HumanEval problems (.jsonl or .jsonl.gz)")
    parser.add_argument("--max_num_examples", type=int, default=None,
                        help="evaluate a random subset (seed 42) of at most this many problems")
    parser.add_argument("--unbiased_sampling_size_n", type=int, default=20,
                        help="samples per problem (n of the unbiased pass@k estimator; must be >= every k)")
    parser.add_argument("--temperature", type=float, default=0.1, help="sampling temperature")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds each program may run")
    parser.add_argument("--n_workers", type=int, default=default_workers(), help="programs executed in parallel")
    add_execution_args(parser)
    add_model_args(parser, save_dir="results/codex_humaneval", max_new_tokens=MAX_NEW_TOKENS)
    return parser


if __name__ == "__main__":
    cli_main(main, build_parser())
