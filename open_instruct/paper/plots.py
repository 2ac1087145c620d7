"""Figures for the paper tables (matplotlib, Agg backend, PNG written atomically).

* `plot_efficiency`: a score against trainable parameters (log x), one line per method through its settings,
  error bars = std over seeds; the base model, which trains nothing, is a dashed horizontal line.
* `plot_loss_curves`: training (and held-out) loss against step from the tensorboard event files that
  ``finetune --with_tracking`` writes, read with tensorboard's EventAccumulator.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from open_instruct.io_utils import atomic_open  # noqa: E402
from open_instruct.paper.summarize import Row  # noqa: E402

logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its event reader logs every file it scans at INFO

TRAIN_LOSS_TAGS = ("train_loss", "train/loss")
EVAL_LOSS_TAGS = ("eval_loss", "eval/loss")


def _save(fig, path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def plot_efficiency(rows: list[Row], column: str, path, title: str = "") -> int:
    """Score `column` vs trainable parameters; returns the number of points drawn (0: nothing to plot)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_method: dict[str, list[tuple[int, float, float]]] = {}
    drawn = 0
    for row in rows:
        if column not in row.cells:
            continue
        mean, std, _ = row.cells[column]
        if row.trainable_params:
            by_method.setdefault(row.label, []).append((row.trainable_params, mean, std or 0.0))
        else:
            ax.axhline(mean, linestyle="--", color="gray", label=row.label)
        drawn += 1
    for label, points in sorted(by_method.items()):
        points.sort()
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                    capsize=3, label=label)
    if drawn:
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(column)
        ax.set_title(title or f"{column} vs trainable parameters")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        _save(fig, path)
    else:
        plt.close(fig)
    return drawn


def read_scalars(run_dir: Path, tags: tuple[str, ...]) -> list[tuple[int, float]]:
    """(step, value) of the first of `tags` found in the run's tensorboard event files (all files merged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    event_dirs = sorted({f.parent for f in Path(run_dir).rglob("events.out.tfevents.*")})
    for event_dir in event_dirs:
        accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
        accumulator.Reload()
        available = accumulator.Tags().get("scalars", [])
        tag = next((t for t in tags if t in available), None)
        if tag is not None:
            points.update({event.step: event.value for event in accumulator.Scalars(tag)})
    return sorted(points.items())


def plot_loss_curves(runs: list[tuple[str, Path]], path, include_eval: bool = True) -> int:
    """Training loss (solid) and held-out loss (dashed, same colour) per (label, run folder); returns curves drawn."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for label, run_dir in runs:
        train = read_scalars(run_dir, TRAIN_LOSS_TAGS)
        if not train:
            continue
        (line,) = ax.plot([s for s, _ in train], [v for _, v in train], label=f"{label} train")
        drawn += 1
        held_out = read_scalars(run_dir, EVAL_LOSS_TAGS) if include_eval else []
        if held_out:
            ax.plot([s for s, _ in held_out], [v for _, v in held_out], linestyle="--", marker=".",
                    color=line.get_color(), label=f"{label} held-out")
    if drawn:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        _save(fig, path)
    else:
        plt.close(fig)
    return drawn
