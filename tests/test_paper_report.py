"""The results-folder writer on fake run folders: paired PRoLoRA − LoRA differences, provenance, files."""

from __future__ import annotations

import pytest
from test_paper_summarize import make_run

from open_instruct.paper.report import DEFAULT_PAIRS, Selector, paired_differences, write_report
from open_instruct.paper.summarize import find_run_dirs, read_run

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
