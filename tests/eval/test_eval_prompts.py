"""Every task's prompt builder on the fixture data, plain and chat, with and without CoT / context."""

from __future__ import annotations

from eval_helpers import FIXTURES

from eval.bbh import run_eval as bbh
from eval.gsm import run_eval as gsm
from eval.mmlu import run_eval as mmlu
from eval.templates import resolve_chat_formatter
from eval.tydiqa import run_eval as tydiqa

TULU = resolve_chat_formatter("tulu")

MMLU_PLAIN = (
    "The following are multiple choice questions (with answers) about  astronomy.\n\n"
    "Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars\nAnswer: B\n\n"
    "What is the name of the galaxy that contains the Solar System?\nA. Andromeda\nB. Triangulum\nC. Milky Way\n"
    "D. Sombrero\nAnswer: C\n\n"
    "Which planet is known for its prominent ring system?\nA. Saturn\nB. Mars\nC. Mercury\nD. Venus\nAnswer:")


def _mmlu_inputs():
    demos = mmlu.read_mmlu_csv(FIXTURES / "mmlu" / "dev" / "astronomy_dev.csv")
    row = mmlu.read_mmlu_csv(FIXTURES / "mmlu" / "test" / "astronomy_test.csv")[0]
    return demos, row


def test_mmlu_prompt_plain_and_chat():
    demos, row = _mmlu_inputs()
    assert row == ["Which planet is known for its prominent ring system?", "Saturn", "Mars", "Mercury", "Venus", "A"]
    assert mmlu.build_prompt("astronomy", demos, row, None, "") == MMLU_PLAIN
    prolora = mmlu.build_prompt("astronomy", demos, row, TULU, mmlu.CHAT_ANSWER_PREFIXES["prolora"])
    assert prolora == "<|user|>\n" + MMLU_PLAIN + "\n<|assistant|>\nThe answer is "
    upstream = mmlu.build_prompt("astronomy", demos[:0], row, TULU, mmlu.CHAT_ANSWER_PREFIXES["open_instruct"])
    assert upstream == ("<|user|>\nThe following are multiple choice questions (with answers) about  astronomy.\n\n"
                        "Which planet is known for its prominent ring system?\nA. Saturn\nB. Mars\nC. Mercury\n"
                        "D. Venus\nAnswer:\n<|assistant|>\nThe answer is:")


def test_mmlu_quoted_csv_fields_survive():
    rows = mmlu.read_mmlu_csv(FIXTURES / "mmlu" / "test" / "marketing_test.csv")
    assert rows[0][0] == 'Which of the "four Ps" describes where a product is sold?' and rows[0][5] == "D"


def test_mmlu_drops_demos_until_prompt_fits(monkeypatch, smollm2_tokenizer):
    demos, row = _mmlu_inputs()
    one_demo = mmlu.build_prompt("astronomy", demos[:1], row, None, "")
    limit = len(smollm2_tokenizer(one_demo, add_special_tokens=False)["input_ids"])
    monkeypatch.setattr(mmlu, "MAX_PROMPT_TOKENS", limit)
    assert mmlu.fit_prompt("astronomy", demos, row, None, "", smollm2_tokenizer) == one_demo
    monkeypatch.setattr(mmlu, "MAX_PROMPT_TOKENS", 1)
    assert "Answer: B" not in mmlu.fit_prompt("astronomy", demos, row, None, "", smollm2_tokenizer)


def test_mmlu_sampling_matches_pandas():
    import pandas as pd

    rows = [[str(i)] for i in range(40)]
    expected = pd.DataFrame({"i": range(40)}).sample(7, random_state=42)["i"].tolist()
    assert [int(r[0]) for r in mmlu.sample_rows(rows, 7)] == expected
    assert mmlu.sample_rows(rows, 100) == rows


GSM_Q = "Tom has 3 boxes with 4 pens in each box. How many pens does he have?"


def test_gsm_exemplars_are_the_eight_cot_demos():
    assert len(gsm.EXEMPLARS) == 8
    assert all(e["cot_answer"].endswith(f"So the answer is {e['short_answer']}.") for e in gsm.EXEMPLARS)


def test_gsm_prompts():
    first = gsm.EXEMPLARS[0]
    cot = gsm.prompt_prefix([first], no_cot=False)
    assert cot == ("Answer the following questions.\n\nQuestion: " + first["question"] + "\nAnswer: "
                   + first["cot_answer"] + "\n\n")
    assert gsm.prompt_prefix([first], no_cot=True).endswith("\nAnswer: 6\n\n")
    assert "Quesion" not in gsm.prompt_prefix(gsm.EXEMPLARS, no_cot=True)
    zero = gsm.prompt_prefix([], no_cot=False)
    assert zero == "Answer the following question.\n\n"
    assert gsm.build_prompt(zero, "  " + GSM_Q + " ", None) == zero + "Question: " + GSM_Q + "\nAnswer:"
    chat = gsm.build_prompt(zero, GSM_Q, TULU)
    assert chat == "<|user|>\n" + zero + "Question: " + GSM_Q + "\n<|assistant|>\nAnswer:"


def test_gsm_gold_answers_drop_commas():
    data = gsm.load_test_data(FIXTURES / "gsm" / "test.jsonl")
    assert [d["answer"] for d in data] == ["12", "1500", "8"]


BOOL_COT = ("Evaluate the result of a Boolean expression.\n\n"
            "Q: True and not False is\nA: Let's think step by step.\n"
            "not False = True, so the expression is True and True = True. So the answer is True.\n\n"
            "Q: not not False or False is\nA: Let's think step by step.\n"
            "not not False = False, and False or False = False. So the answer is False.")


def test_bbh_prompts_with_and_without_cot():
    cot = bbh.load_task_prompts(FIXTURES / "bbh", ["boolean_expressions"], no_cot=False)["boolean_expressions"]
    assert cot == BOOL_COT
    direct = bbh.load_task_prompts(FIXTURES / "bbh", ["boolean_expressions"], no_cot=True)["boolean_expressions"]
    assert direct == ("Evaluate the result of a Boolean expression.\n\n"
                      "Q: True and not False is\nA: True.\n\nQ: not not False or False is\nA: False.")
    assert bbh.build_prompt(cot + "\n", "True and not True is", None) == BOOL_COT + "\n\nQ: True and not True is\nA:"
    assert bbh.build_prompt(cot, "X is", TULU) == "<|user|>\n" + BOOL_COT + "\n\nQ: X is\n<|assistant|>\nA:"


def _tydiqa_examples():
    dev = {ex["id"]: ex for ex in tydiqa.load_squad_examples(FIXTURES / "tydiqa" / "tydiqa-goldp-v1.1-dev.json")}
    train = {ex["id"]: ex for ex in tydiqa.load_squad_examples(FIXTURES / "tydiqa" / "tydiqa-goldp-v1.1-train.json")}
    return dev["english-2001-0"], train["english-4001-0"]


def test_tydiqa_prompt_with_context():
    example, demo = _tydiqa_examples()
    assert example["lang"] == "english" and example["answers"][0]["text"] == "the Mediterranean Sea"
    body = ("Answer the following question based on the information in the given passage.\n\n"
            "Passage: The Rhine rises in the Swiss Alps and empties into the North Sea.\n"
            "Question: Where does the Rhine rise?\nAnswer: the Swiss Alps\n\n"
            "Passage: The Nile is a major river in northeastern Africa and flows into the Mediterranean Sea.\n"
            "Question: Into which sea does the Nile flow?\n")
    assert tydiqa.build_prompt(example, [demo], False, None) == body + "Answer:"
    assert tydiqa.build_prompt(example, [demo], False, TULU) == "<|user|>\n" + body + "\n<|assistant|>\nAnswer:"


def test_tydiqa_prompt_closed_book_and_zero_shot():
    example, demo = _tydiqa_examples()
    assert tydiqa.build_prompt(example, [demo], True, None) == (
        "Answer the following question.\n\nQuestion: Where does the Rhine rise?\nAnswer: the Swiss Alps\n\n"
        "Question: Into which sea does the Nile flow?\nAnswer:")
    finnish = dict(example, lang="finnish")
    assert tydiqa.build_prompt(finnish, [], True, None) == (
        "Vastaa seuraavaan kysymykseen.\n\nKysymys: Into which sea does the Nile flow?\nVastaus:")


def test_tydiqa_context_truncation(smollm2_tokenizer):
    text = "one two three four five six seven eight nine ten"
    cut = tydiqa.truncate_context(text, smollm2_tokenizer, 3)
    assert cut == smollm2_tokenizer.decode(smollm2_tokenizer.encode(text, add_special_tokens=False)[:3])
    assert text.startswith(cut) and len(cut) < len(text)
    assert tydiqa.truncate_context(text, smollm2_tokenizer, 512) == text
