"""The results summarizer on synthetic run folders: grouping over seeds, mean ± std, missing and partial runs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from open_instruct.paper.summarize import (
    TASKS,
    Task,
    find_run_dirs,
    mean_std,
    read_run,
    summarize,
    summarize_runs,
    table_records,
)


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def make_run(root: Path, folder: str, config: dict | None = None, results: dict | None = None,
             evals: dict | None = None, completed: bool = True, adapter: dict | None = None) -> Path:
    run = root / folder
    run.mkdir(parents=True)
    if config is not None:
        write(run / "run_config.json", config)
    if results is not None:
        write(run / "all_results.json", results)
    if adapter is not None:
        write(run / "adapter_config.json", adapter)
    for relative, metrics in (evals or {}).items():
        write(run / relative / "metrics.json", metrics)
    if completed:
        write(run / "completed", "")
    return run


def mmlu(acc, other_key="other (business, health, misc.)"):
    return {"average_acc": acc,
            "cat_acc": {"STEM": acc - 0.1, "humanities": acc, "social sciences": acc, other_key: acc + 0.05}}


@pytest.fixture
def results_root(tmp_path):
    root = tmp_path / "out"
    lora = {"method": "lora", "label": "LoRA", "r": 8, "alpha": 16, "lr": 2e-4}
    for seed, acc, loss in ((1, 0.40, 1.5), (2, 0.42, 1.7), (3, 0.44, 1.6)):
        make_run(root, f"lora_r8_sd{seed}", {**lora, "seed": seed},
                 {"train_loss": 2.0, "eval_loss": loss, "train_runtime": 7200, "trainable_params": 19_988_480},
                 {"eval/mmlu": mmlu(acc), "eval/gsm": {"exact_match": 0.10 * seed},
                  "eval/tydiqa": {"average": {"f1": 30.0 + seed, "exact_match": 20.0}}})
    prolora = {"method": "prolora", "label": "PRoLoRA", "r": 8, "u": 1, "m": 2, "n": 2, "alpha": 16, "lr": 2e-4}
    make_run(root, "prolora_sd1", {**prolora, "seed": 1}, {"trainable_params": 11_243_520, "eval_loss": 1.4},
             {"eval/mmlu": mmlu(0.45), "eval/gsm": {"exact_match": 0.3}})
    make_run(root, "prolora_sd2", {**prolora, "seed": 2}, {"trainable_params": 11_243_520, "eval_loss": 1.2},
             {"eval/gsm": {"exact_match": 0.2}})  # MMLU of seed 2 missing
    make_run(root, "vera_sd1", {"method": "vera", "label": "VeRA", "r": 256, "lr": 1e-3, "seed": 1}, None,
             {}, completed=False)  # interrupted: no completed marker, no results
    make_run(root, "base", {"method": "base", "label": "base model"}, None, {"eval/mmlu": mmlu(0.30, "other")},
             completed=False)  # written before the category took upstream's name
    # the PRoLoRA authors' layout: hyper-parameters in the folder name and adapter config, their eval folder names
    authors = make_run(root, "superni_20240101-000000_GPU_0_r_8_unshared_1_x_A4B4_lr_0.0003_sd_42", None,
                       {"train_loss": 1.0, "eval_loss": 1.1, "train_runtime": 3600, "trainable_params": 6_871_040},
                       {"mmlu_results": mmlu(0.5), "bbh_results/cot": {"average_exact_match": 0.25},
                        "bbh_results/no_cot": {"average_exact_match": 0.35},
                        "codex_eval_results/pass1": {"pass@1": 0.1, "pass@5": 0.15, "pass@10": 0.17, "pass@20": 0.2},
                        "codex_eval_results/pass10": {"pass@10": 0.2}},
                       adapter={"peft_type": "PROLORA", "r": 8, "lora_alpha": 16, "unshared_r": 1,
                                "reduce_lora_A_x": 4, "reduce_lora_B_x": 4, "enable_lora_rotation": True,
                                "rectified_init": True})
    write(authors / "checkpoint-1000" / "all_results.json", {"eval_loss": 99.0})  # must not count as a run
    return root


def records_by_method(records):
    return {(rec["method"], rec["m"]): rec for rec in records}


def test_grouping_mean_std_missing_and_partial(results_root):
    runs = [read_run(p) for p in find_run_dirs([results_root])]
    assert len(runs) == 8
    columns, records = table_records(summarize_runs(runs, TASKS["paper"]), TASKS["paper"])
    by = records_by_method(records)
    lora = by[("LoRA", None)]
    assert lora["seeds"] == 3 and lora["MMLU"] == pytest.approx(42.0) and lora["MMLU std"] == pytest.approx(2.0)
    assert lora["TyDiQA F1"] == pytest.approx(32.0) and lora["TyDiQA F1 std"] == pytest.approx(1.0)  # already 0-100
    assert lora["% LoRA"] == pytest.approx(100.0)
    assert lora["Avg."] is None  # no BBH / HumanEval for these runs: the average is missing, not a partial mean
    prolora = by[("PRoLoRA", 2)]
    assert prolora["seeds"] == 2 and prolora["MMLU"] == pytest.approx(45.0) and prolora["MMLU n"] == 1
    assert prolora["MMLU std"] is None and prolora["GSM8K"] == pytest.approx(25.0)
    assert prolora["GSM8K std"] == pytest.approx(7.0710678, rel=1e-6)  # sample std of 30, 20
    assert prolora["% LoRA"] == pytest.approx(56.25)
    assert by[("VeRA", None)]["partial"] and by[("VeRA", None)]["MMLU"] is None
    base = by[("base model", None)]
    assert not base["partial"] and base["params"] is None and base["MMLU"] == pytest.approx(30.0)
    authors = by[("PRoLoRA", 4)]
    assert authors["lr"] == pytest.approx(3e-4) and authors["BBH CoT"] == pytest.approx(25.0)
    assert authors["HumanEval P@1"] == pytest.approx(10.0)
    assert authors["Avg."] is None  # TyDiQA and GSM missing
    assert [r for r in runs if r.label == "PRoLoRA" and r.hparams.get("m") == 4][0].seed == 42


def test_average_is_per_run_then_over_seeds(tmp_path):
    root = tmp_path / "runs"
    for seed, (asdiv, bigbench) in enumerate([(0.2, 0.4), (0.4, 0.8)], start=1):
        make_run(root, f"lora_sd{seed}", {"method": "lora", "label": "LoRA", "r": 8, "seed": seed},
                 {"trainable_params": 100, "eval_loss": 2.0 + seed},
                 {"eval/asdiv": {"exact_match": asdiv}, "eval/bigbench": {"accuracy": bigbench}})
    runs = [read_run(p) for p in find_run_dirs([root])]
    task = Task(("held-out loss", "ASDiv EM", "BIG-bench acc", "MMLU"), averaged=("ASDiv EM", "BIG-bench acc", "MMLU"))
    _, records = table_records(summarize_runs(runs, task), task)
    assert records[0]["Avg."] is None  # an averaged column is missing: no average rather than a partial one
    _, records = table_records(summarize_runs(runs, TASKS["mini"]), TASKS["mini"])  # MMLU is not averaged there
    (rec,) = records
    # per-run averages 30 and 60 -> mean 45, sample std 21.2132
    assert rec["Avg."] == pytest.approx(45.0) and rec["Avg. std"] == pytest.approx(21.2132034, rel=1e-6)
    assert rec["held-out loss"] == pytest.approx(3.5)


def test_markdown_and_csv_outputs(results_root, tmp_path):
    out = tmp_path / "tables"
    markdown = summarize([results_root], "mmlu", out)
    lines = markdown.splitlines()
    lora_line = next(line for line in lines if line.startswith("| LoRA |"))
    assert "42.00 ± 2.00" in lora_line and "19,988,480" in lora_line
    assert next(line for line in lines if line.startswith("| VeRA *")).count("–") >= 5
    prolora_line = next(line for line in lines if line.startswith("| PRoLoRA |") and "11,243,520" in line)
    assert "45.00 (n=1)" in prolora_line
    assert "* includes runs without a `completed` marker" in markdown
    rows = list(csv.DictReader(io.StringIO((out / "summary_mmlu.csv").read_text())))
    vera = next(row for row in rows if row["method"] == "VeRA")
    assert vera["MMLU"] == "" and vera["partial"] == "True"  # missing is empty, never 0
    assert len((out / "runs.csv").read_text().splitlines()) == 1 + 8

    skipped = summarize([results_root], "mmlu", out, skip_partial=True)
    assert "VeRA" not in skipped and "base model" in skipped  # a base row has nothing to complete


def test_mean_std_by_hand():
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(((16 / 9 + 1 / 9 + 25 / 9) / 2) ** 0.5)
    assert mean_std([5.0]) == (5.0, None)


def test_bad_inputs_give_one_line_errors(tmp_path):
    make_run(tmp_path / "r", "broken", {"method": "lora", "r": 8}, None, None)
    (tmp_path / "r" / "broken" / "all_results.json").write_text("{not json")
    with pytest.raises(ValueError, match="all_results.json: not valid JSON"):
        summarize([tmp_path / "r"], "paper", tmp_path / "o")
    proc = subprocess.run([sys.executable, "scripts/summarize_results.py", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr.strip().splitlines()[-1]
    with pytest.raises(ValueError, match="unknown task"):
        summarize([tmp_path / "r"], "squad", tmp_path / "o")


def test_cli_task_switch(results_root, tmp_path):
    proc = subprocess.run([sys.executable, "scripts/summarize_results.py", str(results_root), "--task", "bbh",
                           "--output_dir", str(tmp_path / "t")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "BBH CoT" in proc.stdout and "MMLU" not in proc.stdout
    assert (tmp_path / "t" / "summary_bbh.md").is_file() and (tmp_path / "t" / "summary_bbh.csv").is_file()


def test_runs_of_different_training_sets_join_per_seed(tmp_path):
    """One grid per training set (as in the paper): a seed's MMLU and BBH come from two folders but one row."""
    for grid, evals in (("superni", lambda s: {"eval/mmlu": mmlu(0.40 + s / 100)}),
                        ("flan", lambda s: {"eval/bbh_cot": {"average_exact_match": 0.20 + s / 100}})):
        make_run(tmp_path / grid, "base", {"method": "base", "label": "base model", "grid": grid}, None, evals(0),
                 completed=False)
        for seed in (1, 2):
            make_run(tmp_path / grid, f"lora_sd{seed}", {"method": "lora", "label": "LoRA", "r": 8, "seed": seed},
                     {"trainable_params": 80, "eval_loss": 1.0}, evals(seed))
    task = Task(("MMLU", "BBH CoT"), averaged=("MMLU", "BBH CoT"))
    runs = [read_run(p) for p in find_run_dirs([tmp_path / "superni", tmp_path / "flan"])]
    _, records = table_records(summarize_runs(runs, task), task)
    by = {rec["method"]: rec for rec in records}
    assert by["LoRA"]["seeds"] == 2 and by["LoRA"]["MMLU n"] == 2 and by["LoRA"]["BBH CoT n"] == 2
    assert by["LoRA"]["Avg."] == pytest.approx((41.5 + 21.5) / 2)  # per-seed (MMLU + BBH) / 2, then the mean
    assert by["base model"]["seeds"] == 1 and by["base model"]["Avg."] == pytest.approx(30.0)
    # the held-out loss exists in both grids: those runs overlap, so they stay separate seeds
    _, records = table_records(summarize_runs(runs, TASKS["training"]), TASKS["training"])
    assert {rec["method"]: rec["seeds"] for rec in records}["LoRA"] == 4


def test_authors_result_folders_and_keys(tmp_path):
    """A run folder as the authors' ft_*.sh leave it: every eval in its save_dir, read with their summaries' keys."""
    run = make_run(tmp_path, "code_20240101-000000_GPU_0_r_8_unshared_1_x_A2B2_lr_0.0002_sd_7", None,
                   {"train_loss": 1.0, "eval_loss": 1.25, "train_runtime": 5400},
                   {"mmlu_results": mmlu(0.5), "tydiqa_results": {"english": {"f1": 40.0, "exact_match": 30.0},
                                                                  "average": {"f1": 41.5, "exact_match": 31.5}},
                    "gsm_results": {"exact_match": 0.125},
                    "bbh_results/cot": {"average_exact_match": 0.3}, "bbh_results/no_cot": {"average_exact_match": 0.4},
                    "codex_eval_results/pass1": {"pass@1": 0.11, "pass@5": 0.2, "pass@10": 0.25, "pass@20": 0.3},
                    "codex_eval_results/pass10": {"pass@10": 0.33}},
                   adapter={"peft_type": "PROLORA", "r": 8, "lora_alpha": 16, "unshared_r": 1,
                            "reduce_lora_A_x": 2, "reduce_lora_B_x": 2})
    metrics = read_run(run).metrics
    assert metrics["MMLU"] == pytest.approx(50.0) and metrics["MMLU other"] == pytest.approx(55.0)
    assert metrics["MMLU STEM"] == pytest.approx(40.0) and metrics["MMLU soc."] == pytest.approx(50.0)
    assert metrics["TyDiQA F1"] == pytest.approx(41.5) and metrics["TyDiQA EM"] == pytest.approx(31.5)
    assert metrics["GSM8K"] == pytest.approx(12.5)
    assert metrics["BBH CoT"] == pytest.approx(30.0) and metrics["BBH direct"] == pytest.approx(40.0)
    assert metrics["HumanEval P@1"] == pytest.approx(11.0) and metrics["HumanEval P@10"] == pytest.approx(33.0)
    assert metrics["held-out loss"] == pytest.approx(1.25) and metrics["train time (h)"] == pytest.approx(1.5)
