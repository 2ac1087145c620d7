"""MMLU (Hendrycks et al.) multiple-choice accuracy, scored like open-instruct: no generation, the answer is the
letter among " A"/" B"/" C"/" D" with the highest next-token probability after the prompt.

Data: ``<data_dir>/test/<subject>_test.csv`` and ``<data_dir>/dev/<subject>_dev.csv`` — headerless rows
``question, A, B, C, D, answer-letter`` (the layout of https://people.eecs.berkeley.edu/~hendrycks/data.tar).
Prompt: "The following are multiple choice questions (with answers) about {subject words}.\\n\\n", ``--ntrain``
dev questions with their answers, then the test question ending in "Answer:"; the number of demos shrinks
until the prompt fits in 2048 tokens. With ``--use_chat_format`` the text is one user turn followed by an
answer prefix (PRoLoRA's "The answer is " by default, open-instruct's "The answer is:" on request).

Outputs in ``--save_dir``: ``<subject>.csv`` (test rows + ``correct`` + ``choice{A..D}_probs``) and
``metrics.json`` = ``{average_acc, subject_acc, subcat_acc, cat_acc}``.

    python -m eval.mmlu.run_eval --data_dir data/eval/mmlu --save_dir results/mmlu \\
        --model_name_or_path BASE --adapter_name_or_path ADAPTER --ntrain 0 --use_chat_format --eval_batch_size 16
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from eval.common import EvalError, add_model_args, check_model_args, cli_main, require_files
from eval.metrics import mmlu_metrics
from eval.templates import chat_prompt, resolve_chat_formatter
from open_instruct.io_utils import atomic_open, write_json

logger = logging.getLogger(__name__)

CHOICES = ["A", "B", "C", "D"]
MAX_PROMPT_TOKENS = 2048
# Text appended after the chat-format assistant header, before the answer letter.
CHAT_ANSWER_PREFIXES = {"prolora": "The answer is ", "open_instruct": "The answer is:"}


def read_mmlu_csv(path: Path) -> list[list[str]]:
    """Rows of a headerless MMLU csv, each ``[question, A, B, C, D, answer]`` kept as raw strings."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if len(row) != 6 or row[5].strip() not in CHOICES:
                raise EvalError(f"{path}:{line_no}: expected 6 columns (question, A, B, C, D, answer letter), "
                                f"got {row[:1]}... with {len(row)} columns")
            rows.append(row[:5] + [row[5].strip()])
    if not rows:
        raise EvalError(f"{path} has no rows")
    return rows


def format_subject(subject: str) -> str:
    """``high_school_physics`` -> `` high school physics`` (each word space-prefixed, as in the original)."""
    return "".join(" " + word for word in subject.split("_"))


def format_example(row: list[str], include_answer: bool) -> str:
    text = row[0] + "".join(f"\n{letter}. {option}" for letter, option in zip(CHOICES, row[1:5])) + "\nAnswer:"
    return text + f" {row[5]}\n\n" if include_answer else text


def build_prompt(subject: str, demos: list[list[str]], row: list[str],
                 formatter: Callable | None, chat_answer_prefix: str) -> str:
    """Header + demos + question; in chat format wrapped as one user turn followed by the answer prefix."""
    text = (f"The following are multiple choice questions (with answers) about {format_subject(subject)}.\n\n"
            + "".join(format_example(d, include_answer=True) for d in demos)
            + format_example(row, include_answer=False))
    return chat_prompt(formatter, text, chat_answer_prefix) if formatter else text


def fit_prompt(subject: str, demos: list[list[str]], row: list[str], formatter: Callable | None,
               chat_answer_prefix: str, tokenizer) -> str:
    """Drop demos from the end until the prompt has at most 2048 tokens (as open-instruct does)."""
    k = len(demos)
    while True:
        prompt = build_prompt(subject, demos[:k], row, formatter, chat_answer_prefix)
        if k == 0 or len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= MAX_PROMPT_TOKENS:
            return prompt
        k -= 1


def sample_rows(rows: list, n: int) -> list:
    """``n`` rows without replacement, the same ones as pandas' ``df.sample(n, random_state=42)``."""
    if n >= len(rows):
        return rows
    return [rows[i] for i in np.random.RandomState(42).choice(len(rows), size=n, replace=False)]


def list_subjects(data_dir: Path, wanted: list[str] | None) -> list[str]:
    test_dir = data_dir / "test"
    if not test_dir.is_dir():
        require_files([test_dir / "<subject>_test.csv"], "MMLU")
    available = sorted(p.name[: -len("_test.csv")] for p in test_dir.glob("*_test.csv"))
    if not available:
        require_files([test_dir / "<subject>_test.csv"], "MMLU")
    if wanted:
        unknown = [s for s in wanted if s not in available]
        if unknown:
            raise EvalError(f"--subjects not found in {test_dir}: {', '.join(unknown)}")
        return list(wanted)
    return available


def load_demos(data_dir: Path, subject: str, ntrain: int) -> list[list[str]]:
    if ntrain == 0:
        return []
    dev_file = data_dir / "dev" / f"{subject}_dev.csv"
    if not dev_file.is_file():
        logger.warning("%s has no dev file (%s): evaluating it 0-shot instead of %d-shot", subject, dev_file, ntrain)
        return []
    return read_mmlu_csv(dev_file)[:ntrain]


def write_subject_csv(path: Path, rows: list[list[str]], correct: list[bool], probs: list[list[float]]) -> None:
    """Test rows plus correctness and per-letter probabilities, with open-instruct's column names."""
    with atomic_open(path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["0", "1", "2", "3", "4", "5", "correct"] + [f"choice{c}_probs" for c in CHOICES])
        for row, ok, p in zip(rows, correct, probs):
            writer.writerow(row + [str(ok)] + [repr(x) for x in p])


def main(args: argparse.Namespace) -> dict:
    check_model_args(args)
    if args.ntrain < 0:
        raise EvalError(f"--ntrain must be >= 0, got {args.ntrain}")
    data_dir = Path(args.data_dir)
    subjects = list_subjects(data_dir, args.subjects)
    tests = {s: read_mmlu_csv(data_dir / "test" / f"{s}_test.csv") for s in subjects}
    if args.n_instances:
        tests = {s: sample_rows(rows, args.n_instances) for s, rows in tests.items()}
    demos = {s: load_demos(data_dir, s, args.ntrain) for s in subjects}

    from eval.backends import make_backend

    backend = make_backend(args)
    formatter = resolve_chat_formatter(args.chat_formatting_function, backend.tokenizer) \
        if args.use_chat_format else None
    answer_prefix = CHAT_ANSWER_PREFIXES[args.chat_answer_prefix]
    candidates = [" " + c for c in CHOICES]

    correct_by_subject: dict[str, list[bool]] = {}
    outputs = {}
    for subject in tqdm(subjects, desc="subjects"):
        rows = tests[subject]
        prompts = [fit_prompt(subject, demos[subject], row, formatter, answer_prefix, backend.tokenizer)
                   for row in rows]
        log_probs = backend.score_choices(prompts, candidates, batch_size=args.eval_batch_size)
        predictions = [CHOICES[int(np.argmax(lp))] for lp in log_probs]
        correct = [pred == row[5] for pred, row in zip(predictions, rows)]
        correct_by_subject[subject] = correct
        outputs[subject] = (rows, correct, [[float(np.exp(x)) for x in lp] for lp in log_probs])
        logger.info("accuracy %.3f - %s", sum(correct) / len(correct), subject)

    metrics = mmlu_metrics(correct_by_subject)
    save_dir = Path(args.save_dir)
    for subject, (rows, correct, probs) in outputs.items():
        write_subject_csv(save_dir / f"{subject}.csv", rows, correct, probs)
    write_json(save_dir / "metrics.json", metrics)
    logger.info("average accuracy %.3f; categories %s", metrics["average_acc"], metrics["cat_acc"])
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", type=str, default="data/eval/mmlu", help="folder with dev/ and test/")
    parser.add_argument("--ntrain", type=int, default=5, help="few-shot demos per question (from the dev file)")
    parser.add_argument("--subjects", nargs="*", default=None, help="subjects to evaluate (default: all found)")
    parser.add_argument("--n_instances", type=int, default=None,
                        help="evaluate at most this many test questions per subject (sampled with seed 42)")
    parser.add_argument("--chat_answer_prefix", choices=sorted(CHAT_ANSWER_PREFIXES), default="prolora",
                        help="with --use_chat_format, text after the assistant header: 'prolora' = \"The answer is "
                             "\" (the PRoLoRA paper's eval, the default), 'open_instruct' = \"The answer is:\" "
                             "(upstream open-instruct)")
    add_model_args(parser, save_dir="results/mmlu")
    return parser


if __name__ == "__main__":
    cli_main(main, build_parser())
