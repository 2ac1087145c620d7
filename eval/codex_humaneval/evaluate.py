"""Score HumanEval completions: run each one against its unit tests (sandboxed) and report pass@k.

``python -m eval.codex_humaneval.evaluate --data_file HumanEval.jsonl.gz --samples_file S.jsonl --save_dir O
--allow_code_execution`` reads the problems (``.jsonl`` or ``.jsonl.gz``; task_id, prompt, test, entry_point)
and the samples (one ``{"task_id", "completion"}`` per line, any number per task), executes
``prompt + completion + test + check(entry_point)`` for every sample with :mod:`.execution`, and writes

* ``<save_dir>/<samples file name>_results.jsonl`` — each sample with ``passed`` and ``result`` ("passed",
  "timed out" or "failed: <reason>"), in input order (open-instruct's
  ``codex_eval_predictions.jsonl_results.jsonl``);
* ``<save_dir>/metrics.json`` — ``{"pass@1": ..., "pass@10": ...}`` in [0, 1] (open-instruct's schema).

pass@k is the unbiased estimator of Chen et al. (2021): with n samples of a task of which c pass,
pass@k = 1 − C(n−c, k) / C(n, k), averaged over the tasks that have samples. A k larger than some task's n
is skipped with a warning. Running model-written code needs an explicit opt-in (``--allow_code_execution`` or
``HF_ALLOW_CODE_EVAL=1``).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from eval.codex_humaneval.execution import (
    OPT_IN_ENV,
    OPT_IN_MESSAGE,
    SandboxError,
    SandboxLimits,
    build_program,
    code_execution_allowed,
    execute_programs,
)
from eval.common import EvalError, cli_main, require_files
from open_instruct.io_utils import iter_jsonl, write_json, write_jsonl

logger = logging.getLogger(__name__)

PROBLEM_KEYS = ("task_id", "prompt", "test", "entry_point")


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...]) -> list[dict]:
    """Rows of a ``.jsonl`` or ``.jsonl.gz`` file; a bad line is an error naming file and line number."""
    rows = []
    for where, row in iter_jsonl(path, error=EvalError):
        missing = [key for key in required if not isinstance(row, dict) or not isinstance(row.get(key), str)]
        if missing:
            raise EvalError(f"{where}: expected string field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


def read_problems(data_file: str | os.PathLike) -> dict[str, dict]:
    """HumanEval problems by task_id."""
    require_files([Path(data_file)], "HumanEval")
    problems = {}
    for row in read_jsonl(data_file, PROBLEM_KEYS):
        if row["task_id"] in problems:
            raise EvalError(f"{data_file}: task_id {row['task_id']!r} appears twice")
        problems[row["task_id"]] = row
    if not problems:
        raise EvalError(f"{data_file} has no problems")
    return problems


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with `n` samples, `c` correct: 1 − C(n−c, k)/C(n, k).

    Computed as 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which avoids the huge binomial coefficients.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k(correct_by_task: dict[str, list[bool]], ks: list[int]) -> dict[str, float]:
    """``{"pass@k": mean over tasks}`` for every k that every task has enough samples for."""
    fewest = min(len(v) for v in correct_by_task.values())
    metrics = {}
    for k in ks:
        if k > fewest:
            logger.warning("skipping pass@%d: some task has only %d sample(s)", k, fewest)
            continue
        scores = [estimate_pass_at_k(len(v), sum(v), k) for v in correct_by_task.values()]
        metrics[f"pass@{k}"] = sum(scores) / len(scores)
    return metrics


def evaluate_samples(problems: dict[str, dict], samples: list[dict], ks: list[int], samples_name: str = "samples",
                     limits: SandboxLimits = SandboxLimits(), n_workers: int = 4) -> tuple[dict, list[dict]]:
    """Execute every sample against its task's tests; returns (metrics, samples with passed/result).

    Completion ids number each task's samples in file order, so results are keyed by (task_id, completion_id).
    """
    if not samples:
        raise EvalError(f"{samples_name} has no samples")
    keys, programs, per_task_count = [], {}, {}
    for number, sample in enumerate(samples, start=1):
        task_id = sample["task_id"]
        if task_id not in problems:
            raise EvalError(f"{samples_name}: sample #{number} has task_id {task_id!r}, which is not in the data file")
        key = (task_id, per_task_count.get(task_id, 0))
        per_task_count[task_id] = key[1] + 1
        keys.append(key)
        programs[key] = build_program(problems[task_id], sample["completion"])
    logger.info("executing %d samples of %d/%d problems (timeout %.1fs, %d workers)", len(samples),
                len(per_task_count), len(problems), limits.timeout, n_workers)
    try:
        outcomes = execute_programs(programs, limits, n_workers)
    except SandboxError as err:
        raise EvalError(str(err)) from None
    rows, correct_by_task = [], {}
    for sample, key in zip(samples, keys):
        outcome = outcomes[key]
        rows.append({**sample, "result": outcome.result, "passed": outcome.passed})
        correct_by_task.setdefault(key[0], []).append(outcome.passed)
    metrics = pass_at_k(correct_by_task, ks)
    return metrics, rows


def score_and_save(problems: dict[str, dict], samples: list[dict], samples_file: str | os.PathLike,
                   save_dir: str | os.PathLike, ks: list[int], limits: SandboxLimits = SandboxLimits(),
                   n_workers: int = 4) -> dict:
    """Evaluate, then write ``<samples name>_results.jsonl`` and ``metrics.json`` atomically into `save_dir`."""
    metrics, rows = evaluate_samples(problems, samples, ks, str(samples_file), limits, n_workers)
    save_dir = Path(save_dir)
    write_jsonl(save_dir / f"{Path(samples_file).name}_results.jsonl", rows)
    write_json(save_dir / "metrics.json", metrics)
    logger.info("%s", ", ".join(f"{name} = {value:.4f}" for name, value in metrics.items()))
    return metrics


def check_ks(ks: list[int]) -> None:
    bad = [k for k in ks if k < 1]
    if bad or not ks:
        raise EvalError(f"--eval_pass_at_ks must be positive integers, got {ks}")


def default_workers() -> int:
    return max(1, min(32, os.cpu_count() or 1))


def main(args: argparse.Namespace) -> dict:
    if not code_execution_allowed(args.allow_code_execution):
        raise EvalError(OPT_IN_MESSAGE)
    check_ks(args.eval_pass_at_ks)
    if args.timeout <= 0 or args.n_workers < 1:
        raise EvalError(f"--timeout must be > 0 and --n_workers >= 1, got {args.timeout} and {args.n_workers}")
    problems = read_problems(args.data_file)
    require_files([Path(args.samples_file)], "samples")
    samples = read_jsonl(args.samples_file, ("task_id", "completion"))
    return score_and_save(problems, samples, args.samples_file, args.save_dir, args.eval_pass_at_ks,
                          SandboxLimits(timeout=args.timeout), args.n_workers)


def add_execution_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared with run_eval: which pass@k to report and the opt-in to run model-written code."""
    parser.add_argument("--eval_pass_at_ks", nargs="+", type=int, default=[1], help="k values of pass@k")
    parser.add_argument("--allow_code_execution", action="store_true",
                        help=f"run the (untrusted) completions in the sandbox; or set {OPT_IN_ENV}=1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_file", type=str, default="data/eval/codex_humaneval/HumanEval.jsonl.gz",
                        help="HumanEval problems (.jsonl or .jsonl.gz)")
    parser.add_argument("--samples_file", type=str, required=True, help="jsonl of {task_id, completion}")
    parser.add_argument("--save_dir", type=str, required=True, help="folder for the results file and metrics.json")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds each program may run")
    parser.add_argument("--n_workers", type=int, default=default_workers(), help="programs run in parallel")
    add_execution_args(parser)
    return parser


if __name__ == "__main__":
    cli_main(main, build_parser())
