"""GSM8K grade-school math: 8-shot chain-of-thought prompting, greedy decoding, last-number exact match.

Data: ``<data_dir>/test.jsonl`` (openai/grade-school-math; ``question`` and ``answer`` whose text after
``####`` is the gold number). Prompt: "Answer the following questions.\\n\\n" + the eight CoT demonstrations
of Wei et al. (2022, Table 20) as "Question: ...\\nAnswer: ..." separated by blank lines (``--n_shot`` < 8
samples a subset with seed 42; ``--no_cot`` keeps only the final numbers), then "Question: {q}" and
"\\nAnswer:" — or, with ``--use_chat_format``, one user turn followed by "Answer:". Greedy, at most 512 new
tokens, stopping at the first newline only without chat format.

Outputs in ``--save_dir``: ``predictions.jsonl`` (question, answer, model_output, prediction) and
``metrics.json`` = ``{"exact_match": ...}`` in [0, 1].
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path
from typing import Callable

from eval.common import EvalError, add_model_args, check_model_args, cli_main, require_files
from eval.metrics import exact_match, extract_last_number, remove_thousands_separators
from eval.templates import chat_prompt, resolve_chat_formatter
from open_instruct.io_utils import iter_jsonl, write_json, write_jsonl

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 512

# The eight chain-of-thought demonstrations for math word problems from "Chain-of-Thought Prompting Elicits
# Reasoning in Large Language Models" (Wei et al., 2022, Table 20): question, reasoning, final number.
EXEMPLARS = [
    {"question": "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
                 "are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "cot_answer": "There are 15 trees originally. Then there were 21 trees after some more were planted. So there "
                   "must have been 21 - 15 = 6. So the answer is 6.",
     "short_answer": "6"},
    {"question": "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking "
                 "lot?",
     "cot_answer": "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.",
     "short_answer": "5"},
    {"question": "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in "
                 "total?",
     "cot_answer": "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After "
                   "eating 35, they had 74 - 35 = 39. So the answer is 39.",
     "short_answer": "39"},
    {"question": "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
                 "lollipops did Jason give to Denny?",
     "cot_answer": "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny "
                   "20 - 12 = 8. So the answer is 8.",
     "short_answer": "8"},
    {"question": "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does "
                 "he have now?",
     "cot_answer": "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
                   "5 + 4 = 9. So the answer is 9.",
     "short_answer": "9"},
    {"question": "There were nine computers in the server room. Five more computers were installed each day, from "
                 "monday to thursday. How many computers are now in the server room?",
     "cot_answer": "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = "
                   "20 computers were added. 9 + 20 is 29. So the answer is 29.",
     "short_answer": "29"},
    {"question": "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How "
                 "many golf balls did he have at the end of wednesday?",
     "cot_answer": "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After "
                   "losing 2 more, he had 35 - 2 = 33 golf balls. So the answer is 33.",
     "short_answer": "33"},
    {"question": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "cot_answer": "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
                   "23 - 15 dollars left. 23 - 15 is 8. So the answer is 8.",
     "short_answer": "8"},
]


def load_test_data(path: Path) -> list[dict]:
    """``{"question", "answer"}`` per line; the gold answer is the number after ``####`` without commas."""
    require_files([path], "GSM")
    examples = []
    for where, row in iter_jsonl(path, error=EvalError):
        try:
            gold = remove_thousands_separators(row["answer"].split("####")[1].strip())
            float(gold)
        except (TypeError, KeyError, IndexError, ValueError, AttributeError):
            raise EvalError(f"{where}: expected JSON with 'question' and an 'answer' ending in "
                            "'#### <number>'") from None
        examples.append({"question": row["question"], "answer": gold})
    if not examples:
        raise EvalError(f"{path} has no examples")
    return examples


def prompt_prefix(exemplars: list[dict], no_cot: bool) -> str:
    if not exemplars:
        return "Answer the following question.\n\n"
    key = "short_answer" if no_cot else "cot_answer"
    demos = [f"Question: {e['question']}\nAnswer: {e[key]}" for e in exemplars]
    return "Answer the following questions.\n\n" + "\n\n".join(demos) + "\n\n"


def build_prompt(prefix: str, question: str, formatter: Callable | None) -> str:
    text = prefix + "Question: " + question.strip()
    return chat_prompt(formatter, text, "Answer:") if formatter else text + "\nAnswer:"


def main(args: argparse.Namespace) -> dict:
    check_model_args(args)
    if args.n_shot < 0:
        raise EvalError(f"--n_shot must be >= 0, got {args.n_shot}")
    rng = random.Random(42)
    test_data = load_test_data(Path(args.data_dir) / "test.jsonl")
    if args.max_num_examples and len(test_data) > args.max_num_examples:
        test_data = rng.sample(test_data, args.max_num_examples)
    if args.n_shot > len(EXEMPLARS):
        logger.warning("--n_shot %d > %d available demonstrations: using all %d", args.n_shot, len(EXEMPLARS),
                       len(EXEMPLARS))
    exemplars = rng.sample(EXEMPLARS, args.n_shot) if args.n_shot < len(EXEMPLARS) else EXEMPLARS
    prefix = prompt_prefix(exemplars, args.no_cot)

    from eval.backends import make_backend

    backend = make_backend(args)
    formatter = resolve_chat_formatter(args.chat_formatting_function, backend.tokenizer) \
        if args.use_chat_format else None
    prompts = [build_prompt(prefix, ex["question"], formatter) for ex in test_data]
    stop = None if args.use_chat_format else ["\n"]
    outputs = [o[0] for o in backend.generate(prompts, args.max_new_tokens, stop=stop, batch_size=args.eval_batch_size)]
    predictions = [extract_last_number(o) for o in outputs]
    metrics = {"exact_match": exact_match(predictions, [ex["answer"] for ex in test_data])}

    save_dir = Path(args.save_dir)
    write_jsonl(save_dir / "predictions.jsonl",
                ({"question": ex["question"], "answer": ex["answer"], "model_output": out, "prediction": pred}
                 for ex, out, pred in zip(test_data, outputs, predictions)))
    write_json(save_dir / "metrics.json", metrics)
    logger.info("exact match %.4f on %d questions", metrics["exact_match"], len(test_data))
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", type=str, default="data/eval/gsm", help="folder with test.jsonl")
    parser.add_argument("--max_num_examples", type=int, default=None,
                        help="evaluate a random subset (seed 42) of at most this many questions")
    parser.add_argument("--n_shot", type=int, default=8, help="number of demonstrations (at most 8)")
    parser.add_argument("--no_cot", action="store_true", help="demonstrations give only the final number")
    add_model_args(parser, save_dir="results/gsm", max_new_tokens=MAX_NEW_TOKENS)
    return parser


if __name__ == "__main__":
    cli_main(main, build_parser())
