"""The power pilot's report: at which training length, and on which metric, does a setting change (LoRA's rank)
move the result by more than the seed-to-seed spread?

    python scripts/pilot_report.py output/pilot_smollm2_cpu --output_dir docs/results/pilot --heldout_tokens 1619

The pilot grid (``configs/experiments/pilot_smollm2_cpu.yaml``) trains each (rank, seed) once at a constant
learning rate and logs the held-out metrics every ``--eval_steps``, so the value at step N of a run is the
result of an N-step run. A run whose ``run_config.json`` records another schedule (e.g. ``linear`` decay) counts at
its final step only: its earlier values are mid-decay, not finished shorter runs. From the run folders this module
reads

* per step, from the tensorboard events finetune writes: held-out loss (``eval_loss``) and held-out next-token
  accuracy (``eval_token_accuracy``, in percent);
* at the final step only, from ``eval/asdiv/metrics.json``: ASDiv exact match (percent);

and writes into ``--output_dir``:

* ``pilot.md``: provenance; per setting and step, mean ± sample std over seeds; for each pair of settings of one
  method (neighbours in parameter count, and the smallest against the largest), the paired difference
  larger − smaller (same seed: same data order, dropout draws and held-out examples) with its mean, sample std and
  95% t-interval, and two effect sizes:

  - ``Δ/sd_paired`` = Δ / sample std of the paired differences, with Δ = |mean paired difference| (the paired t
    statistic divided by √n: how far the rank effect stands out of what the seed changes in the *difference*);
  - ``Δ/sd_seed`` = Δ / pooled seed std, √((s_a² + s_b²)/2), where s_a and s_b are the
    two settings' sample stds over the same seeds (how far it stands out of the spread of one setting's runs);

  for the accuracies, the binomial standard error √(p(1−p)/N) of the metric on the held-out set (N problems for
  ASDiv, N answer tokens for token accuracy, from ``--heldout_tokens``; tokens of one answer are not independent,
  so this is a lower bound) beside the seed std. All runs share one held-out set, so this error is not part of
  the seed spread: it is how far the number could move on another draw of held-out problems (for ASDiv pairs also
  the paired per-problem error from ``predictions.jsonl``, beside the seed error of the mean difference); and a
  ranking of the (method label, metric, step) protocols by the median ``Δ/sd_paired`` over neighbouring pairs
  within one label (a label is one training recipe, e.g. one LoRA scaling rule), whose winner is
  named in one generated line;
* ``pilot.csv``: every number of those tables (column ``kind``: ``setting``, ``pair`` or ``protocol``);
* ``pilot_steps.png``: each metric against step, one line per setting with a ± one seed std band;
* ``runs/<run>/``: each run's record without weights, as `open_instruct.paper.report` archives it, so the report
  can be re-derived from ``<output_dir>/runs`` alone.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from open_instruct.io_utils import iter_jsonl, write_text
from open_instruct.paper import plots
from open_instruct.paper.report import archive_runs, check_archivable, provenance_lines, setting_name
from open_instruct.paper.stats import Interval, binomial_se, t_interval
from open_instruct.paper.summarize import (
    METRIC_SOURCES,
    MISSING,
    TASKS,
    Row,
    Run,
    _fmt,
    find_run_dirs,
    read_run,
    score_digits,
    summarize_runs,
    to_csv,
)

TOKEN_ACCURACY, ASDIV = "held-out token acc", "ASDiv EM"
STEP_COLUMNS = ("held-out loss", TOKEN_ACCURACY)  # finetune logs them every --eval_steps
FINAL_COLUMNS = (ASDIV,)  # evaluated once, on the final adapter
ACCURACY_COLUMNS = (TOKEN_ACCURACY, ASDIV)
LEVEL = 0.95


def _source(column: str):
    """The summarizer's record of where a column lives. For a step column, its all_results.json key is also its
    tensorboard tag (finetune logs and saves one dict); values are multiplied by its display scale."""
    return next(source for source in METRIC_SOURCES if source.column == column)


ASDIV_METRICS = _source(ASDIV).paths[0]  # eval/asdiv/metrics.json: its num_examples is the N of the binomial error
ASDIV_PREDICTIONS = str(Path(ASDIV_METRICS).with_name("predictions.jsonl"))  # eval.heldout's per-problem records


@dataclass
class Setting:
    """A table row of the summarizer (one method and hyper-parameters) with its values per column, step and seed."""

    name: str
    row: Row
    values: dict[str, dict[int, dict[int, float]]] = field(default_factory=dict)  # column -> step -> seed -> value
    trials: dict[str, int] = field(default_factory=dict)  # accuracy column -> held-out items it is measured on
    items: dict[int, dict[str, bool]] = field(default_factory=dict)  # seed -> ASDiv problem id -> correct

    def at(self, column: str, step: int) -> dict[int, float]:
        return self.values.get(column, {}).get(step, {})


def _final_step(run: Run, logged_steps: list[int]) -> Optional[int]:
    results = json.loads((run.path / "all_results.json").read_text()) if (run.path / "all_results.json").is_file() \
        else {}
    step = results.get("global_step")
    return step if isinstance(step, int) else max(logged_steps, default=None)


def _schedule(run: Run) -> Optional[str]:
    """The run's learning-rate schedule as the grid recorded it (None for folders written before it did)."""
    config = run.path / "run_config.json"
    return json.loads(config.read_text()).get("schedule") if config.is_file() else None


def collect(runs: list[Run], heldout_tokens: Optional[int] = None) -> list[Setting]:
    """Group runs into settings (as the summary table does) and read every run's values; runs without a seed
    cannot be paired and are left out. Two runs of one setting with one seed: ValueError."""
    settings = []
    rows = [row for row in summarize_runs([run for run in runs if run.seed is not None], TASKS["frontier"])
            if row.label != "base model"]
    for row in rows:
        setting = Setting(setting_name(row, rows), row)
        seen: dict[int, Path] = {}
        for run in row.runs:
            if run.seed in seen:
                raise ValueError(f"two runs of {setting.name} with seed {run.seed}: {seen[run.seed]}, {run.path}")
            seen[run.seed] = run.path
            scalars = {column: plots.read_scalars(run.path, (_source(column).keys[0],)) for column in STEP_COLUMNS}
            final = _final_step(run, [step for pairs_ in scalars.values() for step, _ in pairs_])
            # Under a constant learning rate the value at step N is an N-step run's result; under a decaying one
            # (recorded in run_config.json) only the last step is a finished run, so the others are left out.
            constant = _schedule(run) in (None, "constant")
            for column, pairs_ in scalars.items():
                for step, value in pairs_:
                    if constant or step == final:
                        setting.values.setdefault(column, {}).setdefault(step, {})[run.seed] = \
                            value * _source(column).scale
            for column in FINAL_COLUMNS:
                if column in run.metrics and final is not None:
                    setting.values.setdefault(column, {}).setdefault(final, {})[run.seed] = run.metrics[column]
            predictions = run.path / ASDIV_PREDICTIONS
            if predictions.is_file():
                setting.items[run.seed] = {str(rec["id"]): bool(rec["correct"]) for _, rec in iter_jsonl(predictions)}
            asdiv = run.path / ASDIV_METRICS
            if asdiv.is_file() and isinstance(examples := json.loads(asdiv.read_text()).get("num_examples"), int):
                if setting.trials.setdefault(ASDIV, examples) != examples:
                    raise ValueError(f"{setting.name}: ASDiv runs on different numbers of problems ({asdiv})")
        if heldout_tokens:
            setting.trials[TOKEN_ACCURACY] = heldout_tokens
        if setting.values:
            settings.append(setting)
    labels = list(dict.fromkeys(s.row.label for s in settings))
    return [s for label in labels for s in _by_size([s for s in settings if s.row.label == label])]


def _by_size(members: list[Setting]) -> list[Setting]:
    """Smallest first: by trainable parameters, or by rank while a run still training has not reported them."""
    if all(s.row.trainable_params for s in members):
        return sorted(members, key=lambda s: s.row.trainable_params)
    return sorted(members, key=lambda s: (s.row.hparams.get("r", 0), s.row.trainable_params or 0))


def pairs(settings: list[Setting]) -> list[tuple[Setting, Setting, bool]]:
    """(smaller, larger, neighbours?) within each method (`_by_size`): neighbours, then smallest vs largest."""
    by_label: dict[str, list[Setting]] = {}
    for setting in settings:
        by_label.setdefault(setting.row.label, []).append(setting)
    result = []
    for members in by_label.values():
        members = _by_size(members)
        result += [(small, large, True) for small, large in zip(members, members[1:])]
        if len(members) > 2:
            result.append((members[0], members[-1], False))
    return result


def _ratio(numerator: float, denominator: Optional[float]) -> Optional[float]:
    return abs(numerator) / denominator if denominator else None


@dataclass(frozen=True)
class PairStats:
    interval: Interval  # of the paired differences larger − smaller
    seeds: tuple[int, ...]
    pooled_std: Optional[float]

    @property
    def per_paired_std(self) -> Optional[float]:
        return _ratio(self.interval.mean, self.interval.std)

    @property
    def per_seed_std(self) -> Optional[float]:
        return _ratio(self.interval.mean, self.pooled_std)


def pair_stats(small: Setting, large: Setting, column: str, step: int) -> Optional[PairStats]:
    a, b = small.at(column, step), large.at(column, step)
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    interval = t_interval([b[s] - a[s] for s in seeds], LEVEL)
    pooled = None
    if len(seeds) > 1:
        pooled = math.sqrt((statistics.variance([a[s] for s in seeds]) + statistics.variance([b[s] for s in seeds]))
                           / 2)
    return PairStats(interval, seeds, pooled)


def item_se(small: Setting, large: Setting, seeds: tuple[int, ...]) -> Optional[float]:
    """Held-out sampling error of the mean ASDiv EM difference (percentage points), from the per-problem records:
    each problem's difference larger − smaller averaged over `seeds`, then their std / √(problems). Both settings
    answer the same problems, so this is the paired (McNemar-style) error, not √2 binomial errors. None where a
    seed lacks predictions or the two disagree on which problems were asked."""
    if not seeds or any(seed not in small.items or seed not in large.items for seed in seeds):
        return None
    ids = set(small.items[seeds[0]])
    if any(set(side.items[seed]) != ids for side in (small, large) for seed in seeds) or len(ids) < 2:
        return None
    per_item = [sum(large.items[s][i] - small.items[s][i] for s in seeds) / len(seeds) for i in sorted(ids)]
    return 100 * statistics.stdev(per_item) / math.sqrt(len(per_item))


def _steps(settings: list[Setting], column: str) -> list[int]:
    return sorted({step for s in settings for step in s.values.get(column, {})})


def _columns(settings: list[Setting]) -> list[str]:
    return [c for c in (*STEP_COLUMNS, *FINAL_COLUMNS) if any(c in s.values for s in settings)]


def records(settings: list[Setting]) -> list[dict]:
    """Every number of the report, one dict per (setting | pair | protocol, column, step)."""
    out = []
    for column in _columns(settings):
        for step in _steps(settings, column):
            for setting in settings:
                values = setting.at(column, step)
                if not values:
                    continue
                interval = t_interval(list(values.values()), LEVEL)
                rec = {"kind": "setting", "column": column, "step": step, "name": setting.name,
                       "params": setting.row.trainable_params, "n": interval.n,
                       "seeds": " ".join(map(str, sorted(values))), "mean": interval.mean, "std": interval.std,
                       "ci low": interval.low, "ci high": interval.high}
                trials = setting.trials.get(column)
                if column in ACCURACY_COLUMNS and trials:
                    se = 100 * binomial_se(min(max(interval.mean / 100, 0.0), 1.0), trials)
                    rec.update({"trials": trials, "binomial se": se, "se / seed std": _ratio(se, interval.std)})
                out.append(rec)
            effects: dict[str, list[dict]] = {}  # per method label: each label is a protocol of its own
            for small, large, adjacent in pairs(settings):
                stats = pair_stats(small, large, column, step)
                if stats is None:
                    continue
                out.append({"kind": "pair", "column": column, "step": step, "name": f"{large.name} − {small.name}",
                            "adjacent": adjacent, "n": stats.interval.n, "seeds": " ".join(map(str, stats.seeds)),
                            "mean": stats.interval.mean, "std": stats.interval.std, "ci low": stats.interval.low,
                            "ci high": stats.interval.high, "excludes 0": stats.interval.excludes_zero,
                            "pooled seed std": stats.pooled_std, "effect / paired std": stats.per_paired_std,
                            "effect / seed std": stats.per_seed_std})
                if column == ASDIV and (se := item_se(small, large, stats.seeds)) is not None:
                    seed_se = stats.interval.std / math.sqrt(stats.interval.n) if stats.interval.std else None
                    out[-1].update({"item se": se, "seed se": seed_se, "item se / seed se": _ratio(se, seed_se)})
                if adjacent:
                    effects.setdefault(small.row.label, []).append(out[-1])
            several = len({s.row.label for s in settings}) > 1
            for label, members in effects.items():
                members = [e for e in members if e["effect / paired std"] is not None]  # a std to divide by
                if not members:
                    continue
                scored = [e["effect / paired std"] for e in members]
                seed_scored = [e["effect / seed std"] for e in members if e["effect / seed std"] is not None]
                name = f"{label}: {column} at step {step}" if several else f"{column} at step {step}"
                out.append({"kind": "protocol", "column": column, "step": step, "name": name,
                            "n": len(members), "effect / paired std": statistics.median(scored),
                            "min effect / paired std": min(scored),
                            "effect / seed std": statistics.median(seed_scored) if seed_scored else None,
                            "excludes 0": sum(bool(e["excludes 0"]) for e in members)})
    return out


CSV_COLUMNS = ["kind", "column", "step", "name", "params", "adjacent", "n", "seeds", "mean", "std", "ci low",
               "ci high", "excludes 0", "pooled seed std", "effect / paired std", "min effect / paired std",
               "effect / seed std", "trials", "binomial se", "se / seed std", "item se", "seed se",
               "item se / seed se"]


def verdict(recs: list[dict]) -> str:
    """The generated line: which (metric, step) protocol gives the largest median Δ/sd_paired."""
    protocols = sorted((r for r in recs if r["kind"] == "protocol"), key=lambda r: -r["effect / paired std"])
    if not protocols:
        return ("No protocol can be ranked yet: no pair of settings has two or more seeds in common at any step "
                "(the paired std needs two).")
    best = protocols[0]
    line = (f"Largest rank effect per unit of seed noise: **{best['name']}**: median over the {best['n']} "
            f"neighbouring pairs of Δ/sd_paired (|mean paired difference| / std of the differences) = "
            f"{best['effect / paired std']:.2f} (smallest {best['min effect / paired std']:.2f}); "
            f"{best['excludes 0']} of {best['n']} neighbouring pairs have a {LEVEL:.0%} t-interval that excludes 0.")
    if len(protocols) > 1:
        runner = protocols[1]
        line += f" Next: {runner['name']} ({runner['effect / paired std']:.2f})."
    return line


def _cell(rec: dict, digits: int) -> str:
    text = _fmt(rec["mean"], digits) + ("" if rec["std"] is None else f" ± {_fmt(rec['std'], digits)}")
    return text + f" (n={rec['n']})"


def to_markdown(recs: list[dict], settings: list[Setting], header: list[str]) -> str:
    lines = [*header, ""]
    columns = list(dict.fromkeys(r["column"] for r in recs))
    lines += ["## Per setting: mean ± sample std over seeds", ""]
    for column in columns:
        digits = score_digits(column)
        steps = sorted({r["step"] for r in recs if r["column"] == column and r["kind"] == "setting"})
        lines += [f"### {column}", "", "| setting | #Params | " + " | ".join(f"step {s}" for s in steps) + " |",
                  "|---|---:|" + "---:|" * len(steps)]
        for setting in settings:
            cells = {r["step"]: _cell(r, digits) for r in recs
                     if r["kind"] == "setting" and r["column"] == column and r["name"] == setting.name}
            if cells:
                lines.append(f"| {setting.name} | {_fmt(setting.row.trainable_params)} | "
                             + " | ".join(cells.get(s, MISSING) for s in steps) + " |")
        lines.append("")
    sampling = [r for r in recs if r["kind"] == "setting" and r.get("binomial se") is not None]
    lines += ["## Held-out sampling error against seed spread (accuracies, percentage points)", "",
              "Binomial SE = 100·√(p(1−p)/N) with p the setting's mean; N = held-out problems (ASDiv EM) or answer "
              "tokens (token accuracy, from `--heldout_tokens`; tokens of one answer are correlated, so the true "
              "error is larger). Every run is scored on the same held-out set, so this error moves all settings "
              "together and is not in the seed std; SE/std > 1 means a new draw of held-out problems would move the "
              "number more than a new seed does.", ""]
    if sampling:
        lines += ["| metric | step | setting | N | binomial SE | seed std | SE / seed std |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {r['column']} | {r['step']} | {r['name']} | {r['trials']:,} | {_fmt(r['binomial se'])} | "
                  f"{_fmt(r['std'])} | {_fmt(r['se / seed std'])} |" for r in sampling]
    else:
        lines.append(f"{MISSING} (no N: give `--heldout_tokens` for token accuracy; ASDiv's comes from its metrics)")
    paired_items = [r for r in recs if r["kind"] == "pair" and r.get("item se") is not None]
    if paired_items:
        lines += ["", "For a difference between two settings the relevant held-out error is the paired one: both "
                  "answer the same ASDiv problems, so from `predictions.jsonl`, item SE = std over problems of "
                  "(larger − smaller correct, averaged over the seeds) / √problems, against the seed SE of the mean "
                  "paired difference, std / √seeds.", "",
                  "| pair | step | mean difference | item SE | seed SE | item SE / seed SE |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['step']} | {_fmt(r['mean'])} | {_fmt(r['item se'])} | {_fmt(r['seed se'])} | "
                  f"{_fmt(r['item se / seed se'])} |" for r in paired_items]
    lines += ["", "## Paired differences (larger − smaller setting, same seed)", "",
              f"Mean ± sample std of the per-seed differences, {LEVEL:.0%} t-interval (t with n − 1 degrees of "
              "freedom); Δ = |mean|; Δ/sd_paired = Δ / std of the differences; Δ/sd_seed = Δ / √((s_a² + s_b²)/2), "
              "the two settings' seed stds over the same seeds. * = the interval excludes 0.", ""]
    for column in columns:
        digits = score_digits(column)
        lines += [f"### {column}", "", "| pair | step | mean ± std | 95% CI | Δ/sd_paired | Δ/sd_seed |",
                  "|---|---:|---:|---|---:|---:|"]
        for r in (r for r in recs if r["kind"] == "pair" and r["column"] == column):
            ci = MISSING if r["ci low"] is None else \
                f"[{_fmt(r['ci low'], digits)}, {_fmt(r['ci high'], digits)}]" + (" *" if r["excludes 0"] else "")
            lines.append(f"| {r['name']} | {r['step']} | {_cell(r, digits)} | {ci} | "
                         f"{_fmt(r['effect / paired std'])} | {_fmt(r['effect / seed std'])} |")
        lines.append("")
    lines += ["## Which protocol separates the settings best", "",
              "For each metric and training length, over the pairs of neighbouring settings: the median and the "
              "smallest Δ/sd_paired, the median Δ/sd_seed, and how many pairs' intervals exclude 0.", "",
              "| protocol | pairs | median Δ/sd_paired | min Δ/sd_paired | median Δ/sd_seed | CI excludes 0 |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['n']} | {_fmt(r['effect / paired std'])} | {_fmt(r['min effect / paired std'])} | "
              f"{_fmt(r['effect / seed std'])} | {r['excludes 0']} of {r['n']} |"
              for r in sorted((r for r in recs if r["kind"] == "protocol"), key=lambda r: -r["effect / paired std"])]
    lines += ["", verdict(recs), "", "![metrics against step](pilot_steps.png)", ""]
    return "\n".join(lines)


def write_pilot_report(roots: list[Path], output_dir: Path, heldout_tokens: Optional[int] = None) -> str:
    """Write the folder described in the module docstring; returns pilot.md's text."""
    runs = [read_run(path) for path in find_run_dirs(roots)]
    if not runs:
        raise ValueError(f"no runs found under {', '.join(map(str, roots))}")
    check_archivable(runs)
    settings = collect(runs, heldout_tokens)
    if not settings:
        raise ValueError(f"no run under {', '.join(map(str, roots))} has held-out metrics and a seed")
    recs = records(settings)
    used = [run for s in settings for run in s.row.runs]
    finished = sum(not run.partial for run in used)
    header = [f"# Power pilot: {', '.join(str(r) for r in roots)}", "", *provenance_lines(used),
              f"- runs: {len(used)} ({finished} complete, {len(used) - finished} still training or interrupted: "
              "their logged steps count)",
              f"- settings: {', '.join(s.name for s in settings)}"]
    markdown = to_markdown(recs, settings, header)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text(output_dir / "pilot.md", markdown)
    write_text(output_dir / "pilot.csv", to_csv(CSV_COLUMNS, recs))
    panels = {column: {s.name: [(r["step"], r["mean"], r["std"]) for r in recs
                                if r["kind"] == "setting" and r["column"] == column and r["name"] == s.name]
                       for s in settings} for column in _columns(settings)}
    plots.plot_steps(panels, output_dir / "pilot_steps.png", title="mean ± one seed std per setting")
    archive_runs(used, output_dir / "runs")
    return markdown
