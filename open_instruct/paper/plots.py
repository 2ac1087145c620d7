"""Figures for the paper tables (matplotlib, Agg backend, PNG written atomically).

* `plot_efficiency`: a score against trainable parameters (log x), one line per method through its settings,
  error bars = std over seeds; the base model, which trains nothing, is a dashed horizontal line.
* `plot_frontier`: a score against trainable parameters (log x), mean and 95% t-interval over seeds per point, one
  line per method family (the registry's labels: LoRA, PRoLoRA, MoS, VeRA, Tied-LoRA); rows under any other label
  (the ablation ladder, named reference rows) are markers of their own, not joined by lines.
* `plot_steps`: metrics against training step, one line per setting with a band of ± one seed std.
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
from open_instruct.paper.stats import t_interval  # noqa: E402
from open_instruct.paper.summarize import Row  # noqa: E402
from open_instruct.peft_methods import METHODS  # noqa: E402

logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its event reader logs every file it scans at INFO

TRAIN_LOSS_TAGS = ("train_loss", "train/loss")
EVAL_LOSS_TAGS = ("eval_loss", "eval/loss")
METHOD_FAMILIES = tuple(method.label for method in METHODS.values())
_MARKERS = ("s", "^", "v", "D", "P", "X", "*", "h")


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


def plot_frontier(rows: list[Row], column: str, path, title: str = "") -> int:
    """`column` vs trainable parameters with 95% t-intervals (see the module docstring); returns points drawn.

    Each family keeps one colour (its place in the registry); a marker that shares its parameter count with a
    point drawn before it is nudged right by 4% per such point, so that none hides another."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    lines: dict[str, list[tuple[int, float, float, float]]] = {}
    markers: list[tuple[str, tuple[int, float, float, float]]] = []
    drawn = 0
    for row in rows:
        values = [run.metrics[column] for run in row.runs if column in run.metrics]
        if not values:
            continue
        interval = t_interval(values)
        low = interval.mean if interval.low is None else interval.low
        high = interval.mean if interval.high is None else interval.high
        point = (row.trainable_params, interval.mean, interval.mean - low, high - interval.mean)
        drawn += 1
        if not row.trainable_params:
            ax.axhline(interval.mean, linestyle="--", color="gray", label=row.label)
        elif row.label in METHOD_FAMILIES:
            lines.setdefault(row.label, []).append(point)
        else:
            markers.append((row.label, point))
    taken: dict[int, int] = {}
    for index, label in enumerate(METHOD_FAMILIES):
        points = sorted(lines.get(label, []))
        for p in points:
            taken[p[0]] = taken.get(p[0], 0) + 1
        if points:
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[[p[2] for p in points], [p[3] for p in points]], marker="o", capsize=3,
                        color=f"C{index}", label=label)
    for index, (label, p) in enumerate(markers):
        x = p[0] * 1.04 ** taken.get(p[0], 0)
        taken[p[0]] = taken.get(p[0], 0) + 1
        ax.errorbar([x], [p[1]], yerr=[[p[2]], [p[3]]], marker=_MARKERS[index % len(_MARKERS)], markersize=7,
                    linestyle="none", capsize=3, color=f"C{(len(METHOD_FAMILIES) + index) % 10}", label=label,
                    zorder=3)
    if not drawn:
        plt.close(fig)
        return 0
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(column)
    ax.set_title(title or f"{column} vs trainable parameters (mean, 95% t-interval over seeds)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return drawn


def plot_steps(panels: dict[str, dict[str, list[tuple[int, float, float | None]]]], path, title: str = "") -> int:
    """One panel per metric: for each setting, (step, mean, std over seeds) as a line with a ± std band; a metric
    measured at one step only is drawn against the settings, one error bar each. Returns the series drawn."""
    panels = {name: series for name, series in panels.items() if any(series.values())}
    if not panels:
        return 0
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    drawn = 0
    for ax, (name, series) in zip(axes[0], panels.items()):
        single = {p[0] for points in series.values() for p in points}
        single = single.pop() if len(single) == 1 else None  # measured at one step only: settings along x
        for index, (setting, points) in enumerate(series.items()):
            if not points:
                continue
            color = f"C{index % 10}"
            steps, means = [p[0] for p in points], [p[1] for p in points]
            stds = [p[2] or 0.0 for p in points]
            if single is not None:
                ax.errorbar([index], means, yerr=stds, marker="o", capsize=3, color=color, label=setting)
            elif len(points) == 1:
                ax.errorbar(steps, means, yerr=stds, marker="o", capsize=3, color=color, label=setting)
            else:
                ax.plot(steps, means, marker=".", color=color, label=setting)
                ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=color, alpha=0.2)
            drawn += 1
        if single is not None:
            ax.set_xticks(range(len(series)), list(series), rotation=30, fontsize=7)
            ax.set_xlabel(f"setting (step {single} only)")
        else:
            ax.set_xlabel("optimizer step")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
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
