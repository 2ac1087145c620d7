#!/usr/bin/env python
"""Figures from run folders: score vs trainable parameters (log x) and training-loss curves (tensorboard).

    python scripts/plot_results.py output/mini_smollm2 --task mini --output_dir output/mini_smollm2/summary
    python scripts/plot_results.py output/superni --task mmlu --columns MMLU --no_loss_curves

Writes efficiency_<column>.png per score column of the task and loss_curves.png (train loss solid, held-out
loss dashed) for the completed fine-tuning runs whose tensorboard logs hold "train_loss" or "train/loss".
"""

from pathlib import Path

from open_instruct.cli import ArgumentParser, UsageError, run
from open_instruct.paper import plots, summarize


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders to scan for runs (recursively)")
    parser.add_argument("--task", choices=sorted(summarize.TASKS), default="paper")
    parser.add_argument("--columns", nargs="+", default=None, help="score columns to plot (default: the task's)")
    parser.add_argument("--output_dir", type=Path, default=None, help="default: <first root>/summary")
    parser.add_argument("--no_loss_curves", action="store_true")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or args.roots[0] / "summary"
    try:
        runs = [summarize.read_run(path) for path in summarize.find_run_dirs(args.roots)]
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    task = summarize.TASKS[args.task]
    rows = summarize.summarize_runs(runs, task)
    columns = args.columns or [*task.columns, *(["Avg."] if len(task.averaged) > 1 else [])]
    for column in columns:
        safe = "".join(ch if ch.isalnum() else "_" for ch in column)
        path = output_dir / f"efficiency_{safe}.png"
        count = plots.plot_efficiency(rows, column, path)
        print(f"{path}: {count} point(s)" if count else f"{column}: no results, nothing plotted")
    if not args.no_loss_curves:
        curves = [(f"{run.label} sd{run.seed}", run.path) for run in runs
                  if not run.partial and run.label != "base model"]
        count = plots.plot_loss_curves(curves, output_dir / "loss_curves.png")
        print(f"{output_dir / 'loss_curves.png'}: {count} curve(s)" if count else "no tensorboard loss logs found")
    return 0


if __name__ == "__main__":
    run(main)
