"""The MMLU, TyDiQA and BBH prompts against the upstream code that produced the paper's numbers.

The reference evals (open-instruct d61037f5; MMLU from the PRoLoRA authors' copy, "The answer is " suffix) are run
with their model loading and generation replaced by stubs that record the prompts; ours run with a backend that
does the same. Both see the same data and tokenizer (a byte-level one that adds a BOS, like Llama's), and every
prompt must be equal, in order.
"""

from __future__ import annotations

import json
import sys
import types
from argparse import Namespace
from pathlib import Path

import pytest
from finetune_helpers import byte_tokenizer
from reference_code import OPEN_INSTRUCT, PROLORA, load_module, requires_reference

from eval.bbh import run_eval as bbh
from eval.mmlu import run_eval as mmlu
from eval.tydiqa import run_eval as tydiqa

pytestmark = requires_reference


class Recorder:
    """Stands in for both sides' generation: records every batch of prompts, answers nothing useful."""

    def __init__(self):
        self.tokenizer = byte_tokenizer()
        self.batches: list[list[str]] = []

    def record(self, prompts) -> int:
        self.batches.append(list(prompts))
        return len(prompts)

    # our backend interface
    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, n=1, stop=None, batch_size=1):
        return [[""] for _ in range(self.record(prompts))]

    def score_choices(self, prompts, choices, batch_size=1):
        return [[0.0] * len(choices) for _ in range(self.record(prompts))]


@pytest.fixture
def upstream(monkeypatch):
    """Import an upstream eval module with stubs for vllm, evaluate and eval.utils; returns (loader, recorder)."""
    recorder = Recorder()
    tulu = load_module(OPEN_INSTRUCT / "eval" / "templates.py", "upstream_eval_templates")
    utils = types.ModuleType("eval.utils")
    utils.load_hf_lm_and_tokenizer = lambda **kwargs: (None, recorder.tokenizer)
    utils.dynamic_import_function = lambda path: getattr(tulu, path.rsplit(".", 1)[1])
    utils.query_openai_chat_model = None
    utils.generate_completions = lambda model, tokenizer, prompts, **kw: [""] * recorder.record(prompts)
    utils.get_next_word_predictions = lambda model, tokenizer, prompts, **kw: (
        [0] * recorder.record(prompts), [[0.25] * 4 for _ in prompts])
    evaluate = types.ModuleType("evaluate")
    evaluate.load = lambda name: types.SimpleNamespace(compute=lambda **kw: {"exact_match": 0.0, "f1": 0.0})
    monkeypatch.setitem(sys.modules, "eval.utils", utils)
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "evaluate", evaluate)
    monkeypatch.setitem(sys.modules, "eval.mmlu.categories",
                        load_module(OPEN_INSTRUCT / "eval" / "mmlu" / "categories.py", "upstream_mmlu_categories"))

    def load(path: Path, name: str):
        return load_module(path, name)

    return load, recorder


def ours(module, monkeypatch, argv: list[str]) -> list[list[str]]:
    recorder = Recorder()
    monkeypatch.setattr("eval.backends.make_backend", lambda args: recorder)
    module.main(module.build_parser().parse_args(argv))
    return recorder.batches


def upstream_args(tmp_path: Path, **kwargs) -> Namespace:
    common = dict(save_dir=str(tmp_path / "ref_out"), model_name_or_path="stub", tokenizer_name_or_path=None,
                  use_slow_tokenizer=False, openai_engine=None, eval_batch_size=1, load_in_8bit=False, gptq=False,
                  use_vllm=False, use_chat_format=False,
                  chat_formatting_function="eval.templates.create_prompt_with_tulu_chat_format")
    return Namespace(**(common | kwargs))


def chat_flags(chat: bool) -> list[str]:
    return ["--use_chat_format", "--chat_formatting_function",
            "eval.templates.create_prompt_with_tulu_chat_format"] if chat else []  # the authors' spelling


# --- TyDiQA -----------------------------------------------------------------------------------------------------

def squad(questions: list[tuple[str, str, str, str]]) -> dict:
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": 0}]}]}]}
        for qid, context, question, answer in questions]}


@pytest.fixture
def tydiqa_data(tmp_path) -> Path:
    long = "Helsinki is the capital and most populous city of Finland, on the shore of the Gulf of Finland. " * 3
    dev = [(f"english-{i}", f"Passage number {i}. " + (long if i % 2 else "Short."), f"Question {i}?", f"a{i}")
           for i in range(6)]
    dev[1:1] = [(f"finnish-{i}", "Lyhyt kappale." if i else long, f"Kysymys {i}?", f"v{i}") for i in range(2)]
    train = [(f"english-t{i}", long if i == 1 else f"Train passage {i}.", f"Train question {i}?", f"t{i}")
             for i in range(4)] + [(f"finnish-t{i}", long, f"Harjoitus {i}?", f"h{i}") for i in range(2)]
    data = tmp_path / "tydiqa"
    data.mkdir()
    (data / "tydiqa-goldp-v1.1-dev.json").write_text(json.dumps(squad(dev)))
    (data / "tydiqa-goldp-v1.1-train.json").write_text(json.dumps(squad(train)))
    return data


@pytest.mark.parametrize("max_per_lang,n_shot,no_context,max_context,chat", [
    (None, 1, False, 40, False),  # file order kept, long passages cut (with the BOS string)
    (3, 1, False, 40, True),  # english sampled (6 > 3), finnish whole (2 <= 3), then the demos
    (2, 2, False, 512, False),
    (3, 0, True, 40, True),
])
def test_tydiqa_prompts_equal_upstream(upstream, monkeypatch, tmp_path, tydiqa_data, max_per_lang, n_shot,
                                       no_context, max_context, chat):
    load, recorder = upstream
    ref = load(OPEN_INSTRUCT / "eval" / "tydiqa" / "run_eval.py", "upstream_tydiqa")
    ref.main(upstream_args(tmp_path, data_dir=str(tydiqa_data), max_num_examples_per_lang=max_per_lang,
                           n_shot=n_shot, no_context=no_context, max_context_length=max_context,
                           use_chat_format=chat))
    argv = ["--data_dir", str(tydiqa_data), "--save_dir", str(tmp_path / "out"), "--model_name_or_path", "stub",
            "--n_shot", str(n_shot), "--max_context_length", str(max_context), *chat_flags(chat)]
    argv += (["--max_num_examples_per_lang", str(max_per_lang)] if max_per_lang else []) + \
        (["--no_context"] if no_context else [])
    assert ours(tydiqa, monkeypatch, argv) == recorder.batches
    if max_context == 40 and not no_context:
        assert any("Passage: <s>" in p for p in recorder.batches[0])  # upstream's cut keeps a literal BOS


def test_tydiqa_clean_cut_has_no_bos(monkeypatch, tmp_path, tydiqa_data):
    argv = ["--data_dir", str(tydiqa_data), "--save_dir", str(tmp_path / "out"), "--model_name_or_path", "stub",
            "--max_context_length", "40"]
    default = ours(tydiqa, monkeypatch, argv)[0]
    clean = ours(tydiqa, monkeypatch, argv + ["--truncate_without_bos"])[0]
    assert "<s>" in "".join(default) and "<s>" not in "".join(clean)
    tokenizer = byte_tokenizer()
    long = "x" * 100
    assert tydiqa.truncate_context(long, tokenizer, 40) == "<s>" + "x" * 39
    assert tydiqa.truncate_context(long, tokenizer, 40, clean=True) == "x" * 40
    assert tydiqa.truncate_context("x" * 39, tokenizer, 40) == "x" * 39  # 39 + BOS fits: unchanged


# --- BBH --------------------------------------------------------------------------------------------------------

@pytest.fixture
def bbh_data(tmp_path) -> Path:
    data = tmp_path / "bbh_data"
    (data / "bbh").mkdir(parents=True)
    (data / "cot-prompts").mkdir()
    for t, task in enumerate(["zeta_task", "alpha_task", "mid_task"]):
        examples = [{"input": f"{task} question {i}", "target": f"t{i}"} for i in range(3 + t)]
        (data / "bbh" / f"{task}.json").write_text(json.dumps({"examples": examples}))
        (data / "cot-prompts" / f"{task}.txt").write_text(
            f"Header of {task}\n-----\nDo {task}.\n\nQ: demo one?\nA: Think. So the answer is yes.\n\n"
            "Q: demo two?\nA: Think more. So the answer is no.\n")
    return data


@pytest.mark.parametrize("no_cot,max_per_task,chat", [(False, None, False), (True, 3, True), (False, 2, False)])
def test_bbh_prompts_and_task_order_equal_upstream(upstream, monkeypatch, tmp_path, bbh_data, no_cot,
                                                   max_per_task, chat):
    load, recorder = upstream
    ref = load(OPEN_INSTRUCT / "eval" / "bbh" / "run_eval.py", "upstream_bbh")
    ref.main(upstream_args(tmp_path, data_dir=str(bbh_data), no_cot=no_cot, max_num_examples_per_task=max_per_task,
                           use_chat_format=chat))
    argv = ["--data_dir", str(bbh_data), "--save_dir", str(tmp_path / "out"), "--model_name_or_path", "stub",
            *chat_flags(chat)] + (["--no_cot"] if no_cot else []) + \
        (["--max_num_examples_per_task", str(max_per_task)] if max_per_task else [])
    assert ours(bbh, monkeypatch, argv) == recorder.batches
    reference_metrics = json.loads((tmp_path / "ref_out" / "metrics.json").read_text())
    assert list(json.loads((tmp_path / "out" / "metrics.json").read_text())) == list(reference_metrics)


# --- MMLU -------------------------------------------------------------------------------------------------------

NA_ROWS = [  # question, A-D, answer: cells pandas reads as missing or as numbers
    'Which value is missing?,None,NA,,nan,B',
    '"A question, with a comma",01,1.50,"two\nlines",N/A,A',
    'Plain question?,7,8,null,#N/A,D',
]


@pytest.fixture
def mmlu_data(tmp_path) -> Path:
    data = tmp_path / "mmlu"
    (data / "dev").mkdir(parents=True)
    (data / "test").mkdir()
    long = "word " * 300  # long demos: with 5 of them the prompt passes 2,048 tokens and demos are dropped
    (data / "dev" / "astronomy_dev.csv").write_text("".join(
        f"Demo {i} {long if i > 2 else ''}?,x{i},NA,z{i},w{i},{'ABCD'[i % 4]}\n" for i in range(5)))
    (data / "test" / "astronomy_test.csv").write_text("\n".join(NA_ROWS + [
        f"Question {i}?,{i},{i + 1},{i + 2},{i + 3},{'ABCD'[i % 4]}" for i in range(6)]) + "\n")
    (data / "dev" / "marketing_dev.csv").write_text("M demo?,None,b,c,d,C\n" + "M demo 2?,1,2,3,4,A\n" * 4)
    (data / "test" / "marketing_test.csv").write_text("\n".join(NA_ROWS) + "\n")
    return data


@pytest.mark.parametrize("ntrain,n_instances,chat", [(0, None, True), (5, None, False), (2, 4, True),
                                                     (5, 3, True)])
def test_mmlu_prompts_equal_the_authors(upstream, monkeypatch, tmp_path, mmlu_data, ntrain, n_instances, chat):
    load, recorder = upstream
    ref = load(PROLORA / "eval" / "mmlu" / "run_eval.py", "authors_mmlu")
    try:
        ref.main(upstream_args(tmp_path, data_dir=str(mmlu_data), ntrain=ntrain, subjects=None,
                               n_instances=n_instances, use_chat_format=chat))
    except ValueError:  # its metrics need every MMLU subcategory; the prompts are all recorded by then
        pass
    argv = ["--data_dir", str(mmlu_data), "--save_dir", str(tmp_path / "out"), "--model_name_or_path", "stub",
            "--ntrain", str(ntrain), *chat_flags(chat)] + (["--n_instances", str(n_instances)] if n_instances else [])
    mine = ours(mmlu, monkeypatch, argv)
    assert mine == recorder.batches
    assert "A. nan\nB. nan\nC. nan\nD. nan" in "".join(mine[0]) or n_instances  # NA-like cells as upstream shows
    if ntrain == 5 and not n_instances:
        assert "Demo 4" not in mine[0][0] and "Demo 0" in mine[0][0]  # demos dropped to fit 2,048 tokens
    for subject in ("astronomy", "marketing"):  # the per-subject csv has upstream's columns and cells
        ours_csv = (tmp_path / "out" / f"{subject}.csv").read_text().splitlines()
        ref_csv = (tmp_path / "ref_out" / f"{subject}.csv").read_text().splitlines()
        assert [line.rsplit(",", 5)[0] for line in ours_csv] == [line.rsplit(",", 5)[0] for line in ref_csv]


def test_mmlu_metrics_use_upstreams_category_names():
    categories = load_module(OPEN_INSTRUCT / "eval" / "mmlu" / "categories.py", "upstream_mmlu_categories_keys")
    from eval.metrics import MMLU_CATEGORIES, MMLU_SUBCATEGORIES, mmlu_metrics

    assert MMLU_CATEGORIES == categories.categories
    assert {s: [sub] for s, sub in MMLU_SUBCATEGORIES.items()} == categories.subcategories
    metrics = mmlu_metrics({"marketing": [True, False], "astronomy": [True]})
    assert set(metrics["cat_acc"]) == {"STEM", "other (business, health, misc.)"}
