"""TyDiQA-GoldP multilingual extractive QA: 1-shot prompting with the gold passage (or closed-book with
``--no_context``), greedy decoding, SQuAD v1.1 exact match and F1 per language and their unweighted mean.

Data: ``<data_dir>/tydiqa-goldp-v1.1-dev.json`` (evaluated) and ``-train.json`` (demonstrations), SQuAD format;
an example's language is its id prefix (``english-...``). Per language, instructions and field labels are in that
language. ``--n_shot`` demos per language are drawn from train with seed 42, after the optional per-language
subset, as upstream; passages are cut to ``--max_context_length`` tokens the way upstream cuts them (see
:func:`truncate_context`; ``--truncate_without_bos`` for a clean cut). Prompt: instruction + "\\n\\n" + demos
("Passage: c\\nQuestion: q\\nAnswer: a", blank-line separated) + "\\n\\n" + "Passage: c\\nQuestion: q\\n" +
"Answer:" — with ``--use_chat_format`` the text is one user turn followed by the answer label. Greedy, at most 50
new tokens, stopping at the first newline only without chat format; the answer is the stripped completion.

Outputs in ``--save_dir``: ``tydiaqa_predictions.jsonl`` (open-instruct's file name) and ``metrics.json`` =
``{<lang>: {exact_match, f1}, ..., "average": {f1, exact_match}}`` in 0–100.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Callable

from eval.common import EvalError, add_model_args, check_model_args, cli_main, require_files
from eval.metrics import tydiqa_metrics
from eval.templates import chat_prompt, resolve_chat_formatter
from open_instruct.io_utils import write_json, write_jsonl

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 50

# language -> (instruction, passage label, question label, answer label), as in open-instruct's TyDiQA eval.
TEMPLATES_WITH_CONTEXT = {
    "english": ("Answer the following question based on the information in the given passage.", "Passage:",
                "Question:", "Answer:"),
    "arabic": ("أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.", "المقطع:", "السؤال:", "الإجابة:"),
    "bengali": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।", "অধ্যায়:", "প্রশ্ন:",
                "উত্তর:"),
    "finnish": ("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.", "Kappale:", "Kysymys:",
                "Vastaus:"),
    "indonesian": ("Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.", "Bagian:",
                   "Pertanyaan:", "Jawaban:"),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос на основе информации в данном отрывке.", "Отрывок:", "Вопрос:",
                "Ответ:"),
    "swahili": ("Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.", "Kifungu:", "Swali:",
                "Jibu:"),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}
# language -> (instruction, question label, answer label) for closed-book prompting.
TEMPLATES_WITHOUT_CONTEXT = {
    "english": ("Answer the following question.", "Question:", "Answer:"),
    "arabic": ("أجب على السؤال التالي.", "السؤال:", "الإجابة:"),
    "bengali": ("নিম্নলিখিত প্রশ্নের উত্তর দিন।", "প্রশ্ন:", "উত্তর:"),
    "finnish": ("Vastaa seuraavaan kysymykseen.", "Kysymys:", "Vastaus:"),
    "indonesian": ("Jawab pertanyaan berikut.", "Pertanyaan:", "Jawaban:"),
    "korean": ("다음 질문에 답하십시오.", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос.", "Вопрос:", "Ответ:"),
    "swahili": ("Jibu swali lifuatalo.", "Swali:", "Jibu:"),
    "telugu": ("క్రింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "ప్రశ్న:", "సమాధానం:"),
}


def load_squad_examples(path: Path, languages: set[str] | None = None) -> list[dict]:
    """Flatten a SQuAD-format file into ``{id, lang, context, question, answers}`` records; with ``languages``
    only those languages' questions are kept (upstream reads the train file's evaluated languages only)."""
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
        examples = [{"id": qa["id"], "lang": qa["id"].split("-")[0], "context": paragraph["context"],
                     "question": qa["question"], "answers": qa["answers"]}
                    for article in articles for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
        if languages is not None:
            examples = [ex for ex in examples if ex["lang"] in languages]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise EvalError(f"{path}: not SQuAD-format JSON (data -> paragraphs -> qas with id/question/answers)") \
            from None
    for ex in examples:
        if ex["lang"] not in TEMPLATES_WITH_CONTEXT:
            raise EvalError(f"{path}: question {ex['id']!r} has unknown language prefix {ex['lang']!r}; expected "
                            f"one of {sorted(TEMPLATES_WITH_CONTEXT)}")
        if not ex["answers"]:
            raise EvalError(f"{path}: question {ex['id']!r} has no gold answers")
    if not examples:
        raise EvalError(f"{path} has no questions")
    return examples


def truncate_context(text: str, tokenizer, max_tokens: int, clean: bool = False) -> str:
    """Cut a passage to ``max_tokens`` tokens, as upstream open-instruct does unless ``clean``.

    Upstream encodes the passage *with* the tokenizer's special tokens (Llama: a leading BOS), keeps the first
    ``max_tokens`` ids when there are more, and decodes them without skipping special tokens: a long passage then
    keeps ``max_tokens - 1`` text tokens and starts with the literal BOS string (``"<s>"``), and that is what the
    authors' prompts contain. ``clean`` counts and keeps text tokens only, so the cut passage has no BOS string.
    """
    ids = tokenizer.encode(text, add_special_tokens=not clean)
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=clean)


def build_prompt(example: dict, demos: list[dict], no_context: bool, formatter: Callable | None) -> str:
    lang = example["lang"]
    if no_context:
        instruction, q_label, a_label = TEMPLATES_WITHOUT_CONTEXT[lang]

        def block(ex: dict) -> str:
            return f"{q_label} {ex['question']}\n"
    else:
        instruction, p_label, q_label, a_label = TEMPLATES_WITH_CONTEXT[lang]

        def block(ex: dict) -> str:
            return f"{p_label} {ex['context']}\n{q_label} {ex['question']}\n"
    text = instruction + "\n\n"
    if demos:
        text += "\n\n".join(block(d) + f"{a_label} {d['answers'][0]['text']}" for d in demos) + "\n\n"
    text += block(example)
    return chat_prompt(formatter, text, a_label) if formatter else text + a_label


def build_prompts(args: argparse.Namespace, tokenizer) -> tuple[list[dict], list[str]]:
    """The evaluated questions and their prompts, drawn and ordered as upstream.

    One ``random.Random(42)`` stream: per language (sorted), a sample of ``--max_num_examples_per_lang`` questions
    only where a language has more (the questions are then grouped by language; without the option they stay in
    file order), then per language ``--n_shot`` demonstrations from the train file. Passages of questions and
    demonstrations are cut by :func:`truncate_context`.
    """
    data_dir = Path(args.data_dir)
    dev_file = data_dir / "tydiqa-goldp-v1.1-dev.json"
    train_file = data_dir / "tydiqa-goldp-v1.1-train.json"
    rng = random.Random(42)
    test_data = load_squad_examples(dev_file)
    languages = sorted({ex["lang"] for ex in test_data})
    if args.max_num_examples_per_lang:
        sampled = []
        for lang in languages:
            exs = [ex for ex in test_data if ex["lang"] == lang]
            if len(exs) > args.max_num_examples_per_lang:
                exs = rng.sample(exs, args.max_num_examples_per_lang)
            sampled += exs
        test_data = sampled
    demos: dict[str, list[dict]] = {lang: [] for lang in languages}
    if args.n_shot > 0:
        train_data = load_squad_examples(train_file, set(languages))
        for lang in languages:
            pool = [ex for ex in train_data if ex["lang"] == lang]
            if len(pool) < args.n_shot:
                raise EvalError(f"{train_file} has {len(pool)} {lang} questions; --n_shot {args.n_shot} needs more")
            demos[lang] = rng.sample(pool, args.n_shot)
    logger.info("%d questions in %d languages: %s", len(test_data), len(languages), ", ".join(languages))
    if args.max_context_length:
        for ex in test_data + [d for ds in demos.values() for d in ds]:
            ex["context"] = truncate_context(ex["context"], tokenizer, args.max_context_length,
                                             clean=args.truncate_without_bos)
    formatter = resolve_chat_formatter(args.chat_formatting_function, tokenizer) if args.use_chat_format else None
    return test_data, [build_prompt(ex, demos[ex["lang"]], args.no_context, formatter) for ex in test_data]


def main(args: argparse.Namespace) -> dict:
    check_model_args(args)
    if args.n_shot < 0:
        raise EvalError(f"--n_shot must be >= 0, got {args.n_shot}")
    data_dir = Path(args.data_dir)
    dev_file = data_dir / "tydiqa-goldp-v1.1-dev.json"
    train_file = data_dir / "tydiqa-goldp-v1.1-train.json"
    require_files([dev_file] + ([train_file] if args.n_shot > 0 else []), "TyDiQA")
    languages = {ex["lang"] for ex in load_squad_examples(dev_file)}  # bad data fails before the model loads
    if args.n_shot > 0:
        train_data = load_squad_examples(train_file, languages)
        for lang in sorted(languages):
            if (count := sum(ex["lang"] == lang for ex in train_data)) < args.n_shot:
                raise EvalError(f"{train_file} has {count} {lang} questions; --n_shot {args.n_shot} needs more")

    from eval.backends import make_backend

    backend = make_backend(args)
    test_data, prompts = build_prompts(args, backend.tokenizer)
    languages = sorted({ex["lang"] for ex in test_data})
    by_lang = {lang: [ex for ex in test_data if ex["lang"] == lang] for lang in languages}
    outputs = [o[0].strip() for o in backend.generate(prompts, args.max_new_tokens,
                                                      stop=None if args.use_chat_format else ["\n"],
                                                      batch_size=args.eval_batch_size)]

    metrics = tydiqa_metrics({lang: ([o for ex, o in zip(test_data, outputs) if ex["lang"] == lang],
                                     [[a["text"] for a in ex["answers"]] for ex in by_lang[lang]])
                              for lang in languages})
    save_dir = Path(args.save_dir)
    write_jsonl(save_dir / "tydiaqa_predictions.jsonl",
                (dict(ex, prediction_text=out) for ex, out in zip(test_data, outputs)))
    write_json(save_dir / "metrics.json", metrics)
    logger.info("average F1 %.2f, exact match %.2f", metrics["average"]["f1"], metrics["average"]["exact_match"])
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", type=str, default="data/eval/tydiqa",
                        help="folder with tydiqa-goldp-v1.1-{dev,train}.json")
    parser.add_argument("--max_num_examples_per_lang", type=int, default=None,
                        help="evaluate a random subset (seed 42) of at most this many questions per language")
    parser.add_argument("--n_shot", type=int, default=1, help="demonstrations per language (from the train file)")
    parser.add_argument("--no_context", action="store_true", help="closed-book: no passage in the prompt")
    parser.add_argument("--max_context_length", type=int, default=512,
                        help="cut passages to this many tokens (0 = no cut); as upstream, the count includes the "
                             "BOS the tokenizer adds, and a cut passage starts with the BOS string")
    parser.add_argument("--truncate_without_bos", action="store_true",
                        help="cut passages to --max_context_length text tokens with no BOS string (a clean cut; "
                             "not the authors' prompts)")
    add_model_args(parser, save_dir="results/tydiqa", max_new_tokens=MAX_NEW_TOKENS)
    return parser


if __name__ == "__main__":
    cli_main(main, build_parser())
