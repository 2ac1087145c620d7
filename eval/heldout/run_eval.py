"""Held-out accuracy on conversations in the training format: answer each problem as the model was tuned to.

The paper's evals (MMLU, GSM, BBH, ...) wrap a question in their own prompt ("Question: ... Answer:", 3-shot demos),
which is the protocol for comparing with the paper. A small model tuned for a few dozen steps on a stand-in set
(the CPU mini-replication) is better measured on the held-out part of *that* set, asked exactly as in training:

Data: ``--data_file``, open-instruct ``messages`` jsonl (what ``open_instruct.offline_data`` and the converters
write). The prompt is every message but the last; the gold answer is the last (assistant) message. With
``--use_chat_format`` (finetune trains on the chat format: give it to ask as in training) the prompt is in the
chat format (``--chat_formatting_function``, tulu by default, as finetune encodes), ending with the assistant tag;
without it, as in the other evals, it is plain text: the messages' contents, a blank line between two, and a
newline after the last. Greedy, stopping at the first newline. ``--max_num_examples`` takes a random subset (seed 42).

Scoring (``--answer``): ``number`` — the last number of the output equals the last number of the gold answer
("The answer is 9." vs "9"; ASDiv); ``text`` — the output equals the gold answer after lower-casing and deleting
punctuation, as BBH's exact match ("(B)." vs "(B)"; the BIG-bench tasks).

Outputs in ``--save_dir``: ``predictions.jsonl`` (id, gold, model_output, prediction, correct) and ``metrics.json``
= ``{"accuracy": fraction correct, "num_examples": n}``.
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path

from eval.common import EvalError, add_model_args, check_model_args, cli_main, require_files
from eval.metrics import exact_match, extract_last_number
from eval.templates import resolve_chat_formatter
from open_instruct.io_utils import iter_jsonl, write_json, write_jsonl

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 32


def load_conversations(path: Path) -> list[dict]:
    """``{"id", "messages"}`` per line whose last message is the assistant's answer."""
    require_files([path], "held-out")
    examples = []
    for where, row in iter_jsonl(path, error=EvalError):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not (isinstance(messages, list) and len(messages) >= 2 and all(isinstance(m, dict) for m in messages)
                and messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str)):
            raise EvalError(f"{where}: expected {{'messages': [...]}} with at least two messages, the last one "
                            "from the assistant")
        examples.append({"id": row.get("id", where), "messages": messages})
    if not examples:
        raise EvalError(f"{path} has no examples")
    return examples


def plain_prompt(messages: list[dict]) -> str:
    """The prompt without ``--use_chat_format``: the contents of the messages, no role tags."""
    return "\n\n".join(m["content"] for m in messages) + "\n"


def is_correct(prediction: str, gold: str, answer: str) -> bool:
    if answer == "text":
        return exact_match([prediction.strip()], [gold.strip()]) == 1.0
    predicted, expected = extract_last_number(prediction), extract_last_number(gold)
    try:
        return float(predicted) == float(expected)
    except ValueError:
        return False


def main(args: argparse.Namespace) -> dict:
    check_model_args(args)
    examples = load_conversations(Path(args.data_file))
    if args.max_num_examples is not None:
        if args.max_num_examples < 1:
            raise EvalError(f"--max_num_examples must be >= 1, got {args.max_num_examples}")
        if len(examples) > args.max_num_examples:
            examples = random.Random(42).sample(examples, args.max_num_examples)

    from eval.backends import make_backend

    backend = make_backend(args)
    formatter = resolve_chat_formatter(args.chat_formatting_function, backend.tokenizer) if args.use_chat_format \
        else plain_prompt
    prompts = [formatter(ex["messages"][:-1]) for ex in examples]
    outputs = [o[0] for o in backend.generate(prompts, args.max_new_tokens, stop=["\n"],
                                              batch_size=args.eval_batch_size)]
    rows = []
    for ex, output in zip(examples, outputs):
        gold = ex["messages"][-1]["content"]
        prediction = output.strip()
        rows.append({"id": ex["id"], "gold": gold, "model_output": output, "prediction": prediction,
                     "correct": is_correct(prediction, gold, args.answer)})
    metrics = {"accuracy": sum(r["correct"] for r in rows) / len(rows), "num_examples": len(rows)}

    save_dir = Path(args.save_dir)
    write_jsonl(save_dir / "predictions.jsonl", rows)
    write_json(save_dir / "metrics.json", metrics)
    logger.info("accuracy %.4f on %d held-out examples of %s", metrics["accuracy"], len(rows), args.data_file)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_file", type=str, required=True, help="held-out conversations (messages jsonl)")
    parser.add_argument("--answer", choices=["number", "text"], default="text",
                        help="compare the last numbers, or the normalised texts")
    parser.add_argument("--max_num_examples", type=int, default=None,
                        help="evaluate a random subset (seed 42) of at most this many examples")
    add_model_args(parser, save_dir="results/heldout", max_new_tokens=MAX_NEW_TOKENS)
    return parser


if __name__ == "__main__":
    cli_main(main, build_parser())
