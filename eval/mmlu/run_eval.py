"""MMLU (Hendrycks et al.) multiple-choice accuracy, scored like open-instruct: no generation, the answer is the
letter among " A"/" B"/" C"/" D" with the highest next-token probability after the prompt.

Data: ``<data_dir>/test/<subject>_test.csv`` and ``<data_dir>/dev/<subject>_dev.csv`` — headerless rows
``question, A, B, C, D, answer-letter`` (the layout of https://people.eecs.berkeley.edu/~hendrycks/data.tar),
read with pandas as upstream reads them (so "None"/"NA" cells show as "nan" in the prompt, as in the authors').
Prompt: "The following are multiple choice questions (with answers) about {subject words}.\\n\\n", ``--ntrain``
dev questions with their answers, then the test question ending in "Answer:"; the number of demos shrinks
until the prompt fits in 2048 tokens. With ``--use_chat_format`` the text is one user turn followed by an
answer prefix (PRoLoRA's "The answer is " by default, open-instruct's "The answer is:" on request).

Outputs in ``--save_dir``: ``<subject>.csv`` (test rows + ``correct`` + ``choice{A..D}_probs``) and
``metrics.json`` = ``{average_acc, subject_acc, subcat_acc, cat_acc}`` with upstream's category names
(``STEM``, ``humanities``, ``social sciences``, ``other (business, health, misc.)``).

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


def read_mmlu_frame(path: Path):
    """A headerless MMLU csv read as upstream reads it: ``pandas.read_csv(path, header=None)``.

    pandas' defaults decide what a cell becomes, and the prompts show that: "None", "NA", "nan", an empty
    cell, ... are missing values (printed "nan"), and a column of numbers holds numbers ("01" prints as "1",
    and as "1.0" when the column also has a missing value). The rows must have six columns and the last must
    be an answer letter.
    """
    import pandas as pd

    with open(path, newline="", encoding="utf-8") as f:  # pandas pads short rows silently: check them first
        reader = csv.reader(f)
        for row in reader:
            if len(row) != 6:
                raise EvalError(f"{path}:{reader.line_num}: expected 6 columns (question, A, B, C, D, answer "
                                f"letter), got {row[:1]}... with {len(row)} columns")
    try:
        frame = pd.read_csv(path, header=None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: not a readable MMLU csv ({str(e).strip().splitlines()[-1]})") from None
    if frame.shape[1] != 6:
        raise EvalError(f"{path}: expected 6 columns (question, A, B, C, D, answer letter), got {frame.shape[1]}")
    for row_no, answer in enumerate(frame.iloc[:, 5], start=1):
        if str(answer).strip() not in CHOICES:
            raise EvalError(f"{path}: row {row_no}: the answer column should be one of A/B/C/D, got {answer!r}")
    if frame.empty:
        raise EvalError(f"{path} has no rows")
    return frame


def frame_rows(frame) -> list[list[str]]:
    """Each row as the six strings upstream's prompt shows (``"{}".format`` of the pandas cell)."""
    return [["{}".format(frame.iloc[i, j]) for j in range(6)] for i in range(frame.shape[0])]


def read_mmlu_csv(path: Path) -> list[list[str]]:
    """Rows ``[question, A, B, C, D, answer]`` of a headerless MMLU csv, as upstream's prompts show them."""
    return frame_rows(read_mmlu_frame(path))


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


def sample_positions(n_rows: int, n: int | None) -> list[int] | None:
    """Row positions of upstream's subset, ``df.sample(n, random_state=42)`` (None: keep all rows)."""
    import pandas as pd

    if not n or n >= n_rows:
        return None
    return pd.RangeIndex(n_rows).to_series().sample(n, random_state=42).tolist()


def sample_rows(rows: list, n: int | None) -> list:
    """``n`` rows without replacement, the same ones, in the same order, as ``df.sample(n, random_state=42)``."""
    positions = sample_positions(len(rows), n)
    return rows if positions is None else [rows[i] for i in positions]


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


def write_subject_csv(path: Path, frame, correct: list[bool], probs: list[list[float]]) -> None:
    """The test rows plus ``correct`` and ``choice{A..D}_probs`` columns, written as upstream writes them
    (``DataFrame.to_csv(index=None)``)."""
    frame = frame.copy()
    frame["correct"] = correct
    for j, letter in enumerate(CHOICES):
        frame[f"choice{letter}_probs"] = [p[j] for p in probs]
    with atomic_open(path) as f:
        frame.to_csv(f, index=None)


def main(args: argparse.Namespace) -> dict:
    check_model_args(args)
    if args.ntrain < 0:
        raise EvalError(f"--ntrain must be >= 0, got {args.ntrain}")
    data_dir = Path(args.data_dir)
    subjects = list_subjects(data_dir, args.subjects)
    frames = {}
    for subject in subjects:
        frame = read_mmlu_frame(data_dir / "test" / f"{subject}_test.csv")
        positions = sample_positions(frame.shape[0], args.n_instances)
        frames[subject] = frame if positions is None else frame.iloc[positions]
    tests = {s: frame_rows(frame) for s, frame in frames.items()}
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
        outputs[subject] = (frames[subject], correct, [[float(np.exp(x)) for x in lp] for lp in log_probs])
        logger.info("accuracy %.3f - %s", sum(correct) / len(correct), subject)

    metrics = mmlu_metrics(correct_by_subject)
    save_dir = Path(args.save_dir)
    for subject, (frame, correct, probs) in outputs.items():
        write_subject_csv(save_dir / f"{subject}.csv", frame, correct, probs)
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
