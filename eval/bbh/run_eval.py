"""BIG-Bench Hard: 3-shot prompting (chain-of-thought by default, direct answers with ``--no_cot``), greedy
decoding, exact match per task and the macro average over tasks.

Data: ``<data_dir>/bbh/<task>.json`` (``{"examples": [{"input", "target"}, ...]}``) and
``<data_dir>/cot-prompts/<task>.txt`` (the BBH repository layout; the first two lines of a prompt file are a
header and are dropped). ``--no_cot`` rewrites each "Q:" demonstration to "question\\nA: <answer>" where the
answer is the text after "So the answer is". Prompt: task prompt + "\\n\\nQ: " + input + "\\nA:" — or, with
``--use_chat_format``, one user turn followed by "A:". Greedy, at most 512 new tokens, stopping at the first
blank line only without chat format (``--stop_at_blank_line`` stops there with it too: a model that was not
tuned to end its turn otherwise runs on into a next "Q:", which scores as wrong). The prediction is the text
after "the answer is" up to the next period.

Outputs in ``--save_dir``: ``predictions/<task>.jsonl`` (input, target, raw_output, prediction) and
``metrics.json`` = ``{<task>: em, ..., "average_exact_match": macro mean}`` in [0, 1].
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import random
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from eval.common import EvalError, add_model_args, check_model_args, cli_main, require_files
from eval.metrics import bbh_metrics, extract_bbh_answer
from eval.templates import chat_prompt, resolve_chat_formatter
from open_instruct.io_utils import write_json, write_jsonl

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 512


def load_tasks(data_dir: Path) -> dict[str, list[dict]]:
    """``{task: examples}`` from ``bbh/*.json``, in upstream's order: ``glob.glob``'s, i.e. the directory's listing
    order (it decides which examples ``--max_num_examples_per_task`` draws for each task, and the order of the
    metrics). A task is named by its file name up to the first dot, as upstream."""
    task_dir = data_dir / "bbh"
    files = [Path(f) for f in glob.glob(os.path.join(glob.escape(str(task_dir)), "*.json"))]
    if not files:
        require_files([task_dir / "<task>.json"], "BBH")
    tasks = {}
    for path in files:
        try:
            examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
        except (json.JSONDecodeError, KeyError, TypeError):
            examples = None
        if not examples or not all(isinstance(ex, dict) and "input" in ex and "target" in ex for ex in examples):
            raise EvalError(f"{path}: expected {{\"examples\": [{{\"input\", \"target\"}}, ...]}} "
                            "with at least one example")
        tasks[path.name.split(".")[0]] = examples
    return tasks


def sample_examples(tasks: dict[str, list[dict]], max_per_task: int | None) -> dict[str, list[dict]]:
    """Upstream's subset: one ``random.Random(42)`` stream, one ``sample`` per task in task order (a task with no
    more examples than asked is shuffled whole, as ``random.sample`` does)."""
    if not max_per_task:
        return tasks
    rng = random.Random(42)
    return {task: rng.sample(examples, min(max_per_task, len(examples))) for task, examples in tasks.items()}


def strip_chain_of_thought(task_prompt: str, task: str) -> str:
    """Turn every "Q: ...\\nA: <reasoning> So the answer is X." demo into "Q: ...\\nA: X."."""
    fields = []
    for field in task_prompt.split("\n\n"):
        if field.startswith("Q:"):
            if "So the answer is" not in field or "\nA:" not in field:
                raise EvalError(f"cot-prompts/{task}.txt: a 'Q:' demonstration lacks '\\nA:' or 'So the answer is'")
            answer = field.split("So the answer is")[-1].strip()
            question = field.split("\nA:")[0].strip()
            field = question + "\nA: " + answer
        fields.append(field)
    return "\n\n".join(fields)


def load_task_prompts(data_dir: Path, tasks: list[str], no_cot: bool) -> dict[str, str]:
    prompt_dir = data_dir / "cot-prompts"
    require_files([prompt_dir / f"{task}.txt" for task in tasks], "BBH prompt")
    prompts = {}
    for task in tasks:
        with open(prompt_dir / f"{task}.txt", encoding="utf-8") as f:
            text = "".join(f.readlines()[2:])  # readlines: split at "\n" only, as upstream
        prompts[task] = strip_chain_of_thought(text, task) if no_cot else text
    return prompts


def build_prompt(task_prompt: str, question: str, formatter: Callable | None) -> str:
    text = task_prompt.strip() + "\n\nQ: " + question
    return chat_prompt(formatter, text, "A:") if formatter else text + "\nA:"


def main(args: argparse.Namespace) -> dict:
    check_model_args(args)
    data_dir = Path(args.data_dir)
    tasks = sample_examples(load_tasks(data_dir), args.max_num_examples_per_task)
    task_prompts = load_task_prompts(data_dir, list(tasks), args.no_cot)

    from eval.backends import make_backend

    backend = make_backend(args)
    formatter = resolve_chat_formatter(args.chat_formatting_function, backend.tokenizer) \
        if args.use_chat_format else None
    stop_at_blank_line = args.stop_at_blank_line or not args.use_chat_format
    records: dict[str, list[dict]] = {}
    per_task: dict[str, tuple[list[str], list[str]]] = {}
    for task, examples in tqdm(tasks.items(), desc="tasks"):
        prompts = [build_prompt(task_prompts[task], ex["input"], formatter) for ex in examples]
        outputs = [o[0] for o in backend.generate(prompts, args.max_new_tokens,
                                                  stop=["\n\n"] if stop_at_blank_line else None,
                                                  batch_size=args.eval_batch_size)]
        predictions = [extract_bbh_answer(o) for o in outputs]
        records[task] = [dict(ex, raw_output=o, prediction=p) for ex, o, p in zip(examples, outputs, predictions)]
        per_task[task] = (predictions, [ex["target"] for ex in examples])

    metrics = bbh_metrics(per_task)
    save_dir = Path(args.save_dir)
    for task, rows in records.items():
        write_jsonl(save_dir / "predictions" / f"{task}.jsonl", rows)
    write_json(save_dir / "metrics.json", metrics)
    for task in tasks:
        logger.info("exact match %.3f - %s", metrics[task], task)
    logger.info("average exact match %.4f over %d tasks", metrics["average_exact_match"], len(tasks))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", type=str, default="data/eval/bbh", help="folder with bbh/ and cot-prompts/")
    parser.add_argument("--no_cot", action="store_true", help="direct-answer demonstrations (no chain of thought)")
    parser.add_argument("--max_num_examples_per_task", type=int, default=None,
                        help="evaluate a random subset (seed 42) of at most this many examples per task")
    parser.add_argument("--stop_at_blank_line", action="store_true",
                        help="stop at the first blank line with --use_chat_format too (upstream stops there only "
                             "without it)")
    add_model_args(parser, save_dir="results/bbh", max_new_tokens=MAX_NEW_TOKENS)
    return parser


if __name__ == "__main__":
    cli_main(main, build_parser())
