"""The results-folder writer on fake run folders: paired PRoLoRA − LoRA differences, provenance, files, and the
frontier: matched-budget pairs with t-intervals and the frontier plots."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys

import pytest
from test_paper_summarize import make_run

from open_instruct.paper.report import (
    DEFAULT_PAIRS,
    Selector,
    budget_matches,
    curve_records,
    ladder_records,
    paired_differences,
    rank_step_records,
    wall_time,
    write_report,
)
from open_instruct.paper.summarize import TASKS, find_run_dirs, read_run, summarize_runs

LORA = {"method": "lora", "label": "LoRA", "r": 8, "lr": 1e-3}
PROLORA = {"method": "prolora", "label": "PRoLoRA", "r": 8, "u": 1, "m": 2, "n": 2, "lr": 1e-3}


@pytest.fixture
def grid(tmp_path):
    root = tmp_path / "grid"
    scores = {1: (0.20, 0.25, 1.50, 1.40), 2: (0.30, 0.31, 1.60, 1.55), 3: (0.10, 0.18, 1.70, 1.60)}
    for seed, (lora_em, prolora_em, lora_loss, prolora_loss) in scores.items():
        make_run(root, f"lora_sd{seed}", {**LORA, "seed": seed},
                 {"trainable_params": 100, "eval_loss": lora_loss, "train_runtime": 60},
                 {"eval/asdiv": {"exact_match": lora_em}})
        make_run(root, f"prolora_sd{seed}", {**PROLORA, "seed": seed},
                 {"trainable_params": 56, "eval_loss": prolora_loss, "train_runtime": 60},
                 {"eval/asdiv": {"exact_match": prolora_em}} if seed != 3 else {})
    make_run(root, "base", {"method": "base", "label": "base model"}, None, {"eval/asdiv": {"exact_match": 0.05}},
             completed=False)
    return root


def test_paired_differences_per_seed(grid):
    runs = [read_run(p) for p in find_run_dirs([grid])]
    a, b = DEFAULT_PAIRS[0]
    diffs = paired_differences(runs, a, b, ["ASDiv EM", "held-out loss", "BIG-bench acc"])
    assert "BIG-bench acc" not in diffs  # no numbers: no row, never zeros
    em = diffs["ASDiv EM"]
    assert em["by_seed"] == pytest.approx({1: 5.0, 2: 1.0})  # seed 3 has no PRoLoRA EM: left out of the pairing
    assert em["mean"] == pytest.approx(3.0) and em["std"] == pytest.approx(2.8284271, rel=1e-6) and em["n"] == 2
    loss = diffs["held-out loss"]
    assert loss["by_seed"] == pytest.approx({1: -0.10, 2: -0.05, 3: -0.10}) and loss["n"] == 3


def test_pairing_refuses_two_runs_with_one_seed(grid):
    make_run(grid, "lora_again_sd1", {**LORA, "seed": 1}, {"trainable_params": 100, "eval_loss": 9.0})
    runs = [read_run(p) for p in find_run_dirs([grid])]
    with pytest.raises(ValueError, match="seed 1"):
        paired_differences(runs, Selector("PRoLoRA"), Selector("LoRA", (("r", 8),)), ["held-out loss"])


def test_wall_time_from_log_stamps_survives_archiving(grid, tmp_path):
    runs = [read_run(p) for p in find_run_dirs([grid])]
    assert wall_time(runs)[0] is None  # the fake runs have no logs
    for i, run in enumerate(runs):
        (run.path / "logs").mkdir()
        (run.path / "logs" / "finetune.log").write_text(
            f"2026-12-07 23:{10 + i}:00,001 INFO start\nstep 1\reval 100%|  2026-12-07 23:{20 + i}:30,500 INFO done\n")
    runs[-1].path.joinpath("logs", "merge.log").write_text("[2026-12-08 00:05:00,000] [WARNING] late\n")
    span = wall_time(runs)[0]
    assert span == pytest.approx((55 * 60) / 3600)  # 23:10 → 00:05 the next day
    out = tmp_path / "docs"
    write_report([grid], "mini", out)
    os.utime(out / "runs" / runs[0].path.name / "run_config.json", (0, 0))  # a clone's file times mean nothing
    again = write_report([out / "runs"], "mini", tmp_path / "again")
    assert f"- wall time: {span:.2f} h from the first run's first log line" in again


def test_write_report_files_and_provenance(grid, tmp_path):
    out = tmp_path / "docs"
    markdown = write_report([grid], "mini", out)
    assert (out / "summary.md").read_text() == markdown
    for name in ("summary.csv", "runs.csv", "efficiency_ASDiv_EM.png", "loss_curves.png"):
        assert (out / name).exists() or name == "loss_curves.png"  # fake runs have no tensorboard logs
    assert "- commit: " in markdown and "- hardware: " in markdown and "- wall time: " in markdown
    assert "Paired by seed: PRoLoRA r=8 u=1 m=2 n=2 − LoRA r=8" in markdown
    assert "| ASDiv EM | 5.00 | 1.00 | – | 3.00 ± 2.83 (n=2) |" in markdown
    assert "runs: 7 (7 complete, 0 partial)" in markdown
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runs"):
        write_report([tmp_path / "empty"], "mini", tmp_path / "x")


def test_report_is_rederived_from_its_archived_runs(grid, tmp_path):
    """`runs/` holds each run's record without weights, and a report from it alone has the same table."""
    out = tmp_path / "docs"
    first = write_report([grid], "mini", out)
    archived = sorted(p.name for p in (out / "runs").iterdir())
    assert archived == sorted(p.name for p in grid.iterdir() if p.is_dir())
    assert not list((out / "runs").rglob("*.safetensors"))
    again = write_report([out / "runs"], "mini", out)  # the archive is inside the output folder: left as is
    assert again.split("- runs:")[1] == first.split("- runs:")[1]
    assert sorted(p.name for p in (out / "runs").iterdir()) == archived


def test_archive_mirrors_the_reported_runs_and_refuses_clashing_names(grid, tmp_path):
    out = tmp_path / "docs"
    write_report([grid], "mini", out)
    (out / "runs" / "old_run").mkdir()  # from an earlier report
    write_report([grid], "mini", out)
    assert not (out / "runs" / "old_run").exists()
    before = (out / "summary.md").read_text()
    other = tmp_path / "other"
    make_run(other, "lora_sd1", {**LORA, "seed": 9}, {"trainable_params": 100, "eval_loss": 1.0}, {})
    with pytest.raises(ValueError, match="share a folder name"):
        write_report([grid, other], "mini", out)
    assert (out / "summary.md").read_text() == before  # refused before anything was written


# The frontier: LoRA at four ranks (100 parameters per rank), two PRoLoRA settings and MoS between them, an
# ablation rung (own label) and a PRoLoRA far above every LoRA (no match within the tolerance).
FRONTIER = [("lora", "LoRA", {"r": r}, 100 * r) for r in (1, 2, 4, 8)] + [
    ("prolora", "PRoLoRA", {"r": 4, "u": 1, "m": 2, "n": 2}, 250),
    ("prolora", "PRoLoRA", {"r": 8, "u": 1, "m": 2, "n": 2}, 450),
    ("prolora", "PRoLoRA", {"r": 128, "u": 1, "m": 2, "n": 2}, 5000),
    ("mos", "MoS", {"r": 8}, 180),
    ("prolora", "CLoRA (broadcast, u=0)", {"r": 8, "u": 0, "m": 2, "n": 2}, 400),
    ("prolora", "RoLoRA (+ rotation, u=0)", {"r": 8, "u": 0, "m": 2, "n": 2}, 400),
]


def frontier_loss(params: int, seed: int) -> float:
    return 1.0 - 0.05 * math.log(params) + 0.1 * seed + 0.003 * ((params // 10 + seed * seed) % 7)


@pytest.fixture
def frontier_grid(tmp_path):
    root = tmp_path / "frontier"
    for method, label, hparams, params in FRONTIER:
        for seed in (1, 2, 3):
            name = f"{label.split()[0].lower()}_{params}_sd{seed}"
            make_run(root, name, {"method": method, "label": label, **hparams, "lr": 1e-3, "seed": seed},
                     {"trainable_params": params, "eval_loss": frontier_loss(params, seed),
                      "eval_token_accuracy": 0.5 + params / 1e5 + 0.01 * seed})
    return root


def test_budget_matches_nearest_log_ratio(frontier_grid):
    rows = summarize_runs([read_run(p) for p in find_run_dirs([frontier_grid])], TASKS["frontier"])
    found = {(m.row.label, m.row.trainable_params, m.budget): m.lora.trainable_params for m in budget_matches(rows)}
    # 250: same -> 200 (0.8 beats 1.6), twice (500) -> 400; 450: same -> 400, twice (900) -> 800;
    # MoS 180: same -> 200, twice (360) -> 400; 5000: nothing within a factor sqrt(2); the ablation row: not matched
    assert found == {("PRoLoRA", 250, "same"): 200, ("PRoLoRA", 250, "twice"): 400,
                     ("PRoLoRA", 450, "same"): 400, ("PRoLoRA", 450, "twice"): 800,
                     ("MoS", 180, "same"): 200, ("MoS", 180, "twice"): 400}
    for m in budget_matches(rows):
        assert m.ratio == pytest.approx(m.lora.trainable_params / m.row.trainable_params)


def test_curve_records_interpolate_lora_in_log_params(frontier_grid):
    rows = summarize_runs([read_run(p) for p in find_run_dirs([frontier_grid])], TASKS["frontier"])
    records = curve_records(rows, ["held-out loss"])
    # 250 lies between LoRA 200 and 400, 450 between 400 and 800, MoS 180 between 100 and 200; 5000 is above
    # every LoRA and the ablation row is no matched method
    assert {(r["setting"], r["LoRA"]) for r in records} == {
        ("PRoLoRA r=4 u=1 m=2 n=2", "LoRA r=2..4 (log-interpolated)"),
        ("PRoLoRA r=8 u=1 m=2 n=2", "LoRA r=4..8 (log-interpolated)"),
        ("MoS r=8", "LoRA r=1..2 (log-interpolated)")}
    record = next(r for r in records if r["setting"] == "PRoLoRA r=4 u=1 m=2 n=2")
    weight = math.log(250 / 200) / math.log(400 / 200)
    diffs = [frontier_loss(250, s) - (frontier_loss(200, s) + weight * (frontier_loss(400, s) - frontier_loss(200, s)))
             for s in (1, 2, 3)]
    assert record["n"] == 3 and record["seeds"] == "1 2 3" and record["budget"] == "curve"
    assert record["mean"] == pytest.approx(statistics.mean(diffs)) and record["std"] == pytest.approx(
        statistics.stdev(diffs))
    assert record["ratio"] == 1.0 and record["LoRA params"] == 250


def test_rank_steps_pair_neighbouring_lora_ranks(frontier_grid, tmp_path):
    rows = summarize_runs([read_run(p) for p in find_run_dirs([frontier_grid])], TASKS["frontier"])
    records = rank_step_records(rows, ["held-out loss"])
    assert [(r["higher"], r["lower"]) for r in records] == [
        ("LoRA r=2", "LoRA r=1"), ("LoRA r=4", "LoRA r=2"), ("LoRA r=8", "LoRA r=4"), ("LoRA r=8", "LoRA r=1")]
    record = records[-1]
    diffs = [frontier_loss(800, s) - frontier_loss(100, s) for s in (1, 2, 3)]
    assert record["ratio"] == pytest.approx(8.0) and record["seeds"] == "1 2 3"
    assert record["mean"] == pytest.approx(statistics.mean(diffs)) and record["std"] == pytest.approx(
        statistics.stdev(diffs))
    out = tmp_path / "docs"
    markdown = write_report([frontier_grid], "frontier", out)
    assert "## LoRA's rank steps" in markdown
    written = list(csv.DictReader(io.StringIO((out / "lora_rank_steps.csv").read_text())))
    assert len(written) == 4 * 2  # four steps, two columns with numbers


def test_ladder_steps_one_ingredient_each(frontier_grid, tmp_path):
    rows = summarize_runs([read_run(p) for p in find_run_dirs([frontier_grid])], TASKS["frontier"])
    records = ladder_records(rows, ["held-out loss"])
    # CLoRA against the LoRA of exactly its 400 parameters, RoLoRA against CLoRA, PRoLoRA r=8 (not r=4 or r=128)
    # against RoLoRA; no row without the rectified init, so no fourth step
    assert [(r["higher"].split(" r=")[0], r["lower"]) for r in records] == [
        ("CLoRA (broadcast, u=0)", "LoRA r=4"), ("RoLoRA (+ rotation, u=0)", "CLoRA (broadcast, u=0) r=8 u=0 m=2 n=2"),
        ("PRoLoRA", "RoLoRA (+ rotation, u=0) r=8 u=0 m=2 n=2")]
    top = records[-1]
    assert top["higher"] == "PRoLoRA r=8 u=1 m=2 n=2" and top["ratio"] == pytest.approx(450 / 400)
    diffs = [frontier_loss(450, s) - frontier_loss(400, s) for s in (1, 2, 3)]
    assert top["mean"] == pytest.approx(statistics.mean(diffs)) and top["std"] == pytest.approx(
        statistics.stdev(diffs))
    out = tmp_path / "docs"
    assert "## The ablation ladder" in write_report([frontier_grid], "frontier", out)
    assert len(list(csv.DictReader(io.StringIO((out / "ablation_ladder.csv").read_text())))) == 3 * 2


def test_frontier_report_paired_intervals(frontier_grid, tmp_path):
    out = tmp_path / "docs"
    markdown = write_report([frontier_grid], "frontier", out)
    assert "## PRoLoRA and MoS against LoRA at matched budgets" in markdown
    for column in ("held_out_loss", "held_out_token_acc"):
        assert (out / f"frontier_{column}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "frontier_ASDiv_EM.png").exists()  # no run has the number
    rows = list(csv.DictReader(io.StringIO((out / "matched_budgets.csv").read_text())))
    assert sum(r["budget"] != "curve" for r in rows) == 6 * 2  # six matches, two columns with numbers
    row = next(r for r in rows if r["setting"] == "PRoLoRA r=8 u=1 m=2 n=2" and r["budget"] == "twice"
               and r["column"] == "held-out loss")
    assert row["LoRA"] == "LoRA r=8" and int(row["LoRA params"]) == 800
    assert float(row["ratio"]) == pytest.approx(800 / 450)
    diffs = [frontier_loss(450, s) - frontier_loss(800, s) for s in (1, 2, 3)]
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    half = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025) * std / math.sqrt(3)  # t quantile for 2 d.o.f.
    assert float(row["mean"]) == pytest.approx(mean) and float(row["std"]) == pytest.approx(std)
    assert float(row["ci low"]) == pytest.approx(mean - half) and float(row["ci high"]) == pytest.approx(mean + half)
    assert row["excludes 0"] == str(mean - half > 0 or mean + half < 0)
    line = f"| PRoLoRA r=8 u=1 m=2 n=2 | 450 | twice | LoRA r=8 | 800 | {800 / 450:.2f} | held-out loss | 3 |"
    assert line in markdown
    # the mini task keeps its report unless asked for the frontier
    write_report([frontier_grid], "mini", tmp_path / "mini")
    assert not (tmp_path / "mini" / "matched_budgets.csv").exists()
    assert "matched budgets" in write_report([frontier_grid], "mini", tmp_path / "mini2", frontier=True)


def test_runs_provenance_from_grid_markers(grid, tmp_path):
    marker = {"command": ["x"], "exit_status": 0, "seconds": 1.0,
              "provenance": {"commit": "abcdef1234567890", "uncommitted_changes": False, "cpu": "Test CPU",
                             "cpu_count": 4, "cuda_visible_devices": None, "python": "3.11.0", "torch": "9.9"}}
    for seed in (1, 2):
        (grid / f"lora_sd{seed}" / ".grid").mkdir()
        (grid / f"lora_sd{seed}" / ".grid" / "finetune.done").write_text(json.dumps(marker))
    markdown = write_report([grid], "mini", tmp_path / "docs")
    made = "- runs made by: commit abcdef123456 on Test CPU, 4 CPU cores; python 3.11.0, torch 9.9 (2 stages)"
    assert made in markdown
    assert (tmp_path / "docs" / "runs" / "lora_sd1" / ".grid" / "finetune.done").is_file()


def test_cli_frontier_switch(frontier_grid, tmp_path):
    def report(*flags):
        out = tmp_path / "_".join(flags or ("default",))
        proc = subprocess.run([sys.executable, "scripts/report_results.py", str(frontier_grid), "--task", "frontier",
                               *flags, "--output_dir", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return out

    assert (report() / "matched_budgets.csv").is_file()  # on by default for the frontier task
    assert not (report("--no-frontier") / "matched_budgets.csv").exists()
