"""Figures: score vs trainable parameters (with seed intervals for the frontier), metrics against step, and loss
curves read back from tensorboard event files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from open_instruct.paper import plots
from open_instruct.paper.summarize import Row, Run

PNG = b"\x89PNG\r\n\x1a\n"


def write_events(folder: Path, tag: str, values: list[float], eval_values: list[float] = ()) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, value in enumerate(values, start=1):
        writer.add_scalar(tag, value, step)
    for step, value in enumerate(eval_values, start=1):
        writer.add_scalar("eval_loss", value, step * 2)
    writer.close()


def test_efficiency_plot(tmp_path):
    rows = [Row("base model", {}, [], {"MMLU": (30.0, None, 1)}, None),
            Row("LoRA", {"r": 8}, [], {"MMLU": (42.0, 2.0, 3)}, 19_988_480),
            Row("LoRA", {"r": 16}, [], {"MMLU": (43.0, 1.0, 3)}, 39_976_960),
            Row("PRoLoRA", {"r": 8}, [], {"MMLU": (43.5, 0.5, 3)}, 11_243_520),
            Row("VeRA", {"r": 256}, [], {}, 1_400_000)]
    assert plots.plot_efficiency(rows, "MMLU", tmp_path / "eff.png") == 4
    assert (tmp_path / "eff.png").read_bytes()[:8] == PNG
    assert plots.plot_efficiency(rows, "GSM8K", tmp_path / "none.png") == 0
    assert not (tmp_path / "none.png").exists()


def test_loss_curves_from_both_tag_names(tmp_path):
    write_events(tmp_path / "a" / "finetune", "train_loss", [2.0, 1.5, 1.2], eval_values=[1.9, 1.4])
    write_events(tmp_path / "b" / "finetune", "train/loss", [2.5, 2.0])
    assert plots.read_scalars(tmp_path / "a", plots.TRAIN_LOSS_TAGS) == [(1, 2.0), (2, 1.5), (3, pytest.approx(1.2))]
    assert [step for step, _ in plots.read_scalars(tmp_path / "a", plots.EVAL_LOSS_TAGS)] == [2, 4]
    assert plots.read_scalars(tmp_path / "b", plots.TRAIN_LOSS_TAGS) == [(1, 2.5), (2, 2.0)]
    drawn = plots.plot_loss_curves([("a", tmp_path / "a"), ("b", tmp_path / "b"), ("none", tmp_path / "c")],
                                   tmp_path / "loss.png")
    assert drawn == 2 and (tmp_path / "loss.png").read_bytes()[:8] == PNG


def test_cli(tmp_path):
    run = tmp_path / "runs" / "lora_sd1"
    run.mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"method": "lora", "label": "LoRA", "r": 8, "seed": 1}))
    (run / "all_results.json").write_text(json.dumps({"trainable_params": 100, "eval_loss": 1.0}))
    (run / "completed").write_text("")
    (run / "eval" / "mmlu").mkdir(parents=True)
    (run / "eval" / "mmlu" / "metrics.json").write_text(json.dumps({"average_acc": 0.5}))
    write_events(run / "finetune", "train_loss", [2.0, 1.0])
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, "scripts/plot_results.py", str(tmp_path / "runs"), "--task", "mmlu",
                           "--output_dir", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "efficiency_MMLU.png").read_bytes()[:8] == PNG
    assert (out / "loss_curves.png").read_bytes()[:8] == PNG
    assert "MMLU STEM: no results" in proc.stdout


def _row(label, params, values, column="loss"):
    runs = [Run(Path(f"/x/{label}{i}"), label, {}, i, False, params, {column: v}) for i, v in enumerate(values)]
    return Row(label, {}, runs, {}, params)


def test_frontier_plot_lines_markers_and_single_seed(tmp_path):
    rows = [_row("base model", None, [2.0]),
            _row("LoRA", 100, [1.0, 1.1, 0.9]), _row("LoRA", 200, [0.9, 1.0, 0.8]),
            _row("PRoLoRA", 110, [0.95, 1.0, 0.9]),
            _row("CLoRA (broadcast, u=0)", 100, [1.2]),  # one seed: a point without an interval, nudged right
            _row("VeRA", 30, [], column="other")]  # no number for this column: not drawn
    assert plots.plot_frontier(rows, "loss", tmp_path / "f.png") == 5
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG
    assert plots.plot_frontier(rows, "accuracy", tmp_path / "none.png") == 0
    assert not (tmp_path / "none.png").exists()


def test_steps_plot(tmp_path):
    panels = {"loss": {"r=1": [(25, 1.0, 0.1), (50, 0.9, 0.1)], "r=8": [(25, 0.9, None), (50, 0.8, 0.05)]},
              "EM": {"r=1": [(50, 5.0, 1.0)], "r=8": [(50, 7.0, 0.5)]},  # one step: settings along x
              "empty": {"r=1": []}}
    assert plots.plot_steps(panels, tmp_path / "s.png") == 4
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG
    assert plots.plot_steps({"empty": {"r=1": []}}, tmp_path / "none.png") == 0
    assert not (tmp_path / "none.png").exists()
