"""A results folder for the repository: summary table, paired comparison, plots and provenance in one place.

    python scripts/report_results.py output/mini_smollm2_cpu --task mini --output_dir docs/results/mini_smollm2_cpu

writes into ``--output_dir``:

* ``summary.md`` — how the numbers were made (the report's commit and hardware, and from the runs' grid markers
  the commits, hardware and library versions that made them; wall time, run count), the summarizer's table
  (`open_instruct.paper.summarize`), and the paired comparison: for every seed that both rows have, the
  difference PRoLoRA − LoRA of each score, then mean ± sample std over seeds. Runs with the same seed share the
  data order and the evaluation examples, so the paired difference removes what the seeds have in common.
* ``summary.csv`` — the table, numbers only; ``runs.csv`` — one line per run folder;
* ``efficiency_<column>.png`` — score vs trainable parameters for the first score column of the task, and
  ``loss_curves.png`` — training and held-out loss of the completed runs (`open_instruct.paper.plots`);
* with ``--frontier`` (default for ``--task frontier``): ``frontier_<column>.png`` — each score against trainable
  parameters, mean and 95% t-interval over seeds, one line per method family and the ablation rows as markers;
  and the matched-budget comparison: every PRoLoRA and MoS setting minus the LoRA of about its own parameter count
  ("same") and of about twice it ("twice"), and against LoRA's curve interpolated at its own count ("curve"),
  paired by seed, with 95% t-intervals, in summary.md and ``matched_budgets.csv`` (`budget_matches` says how a
  LoRA row is chosen, `curve_records` how the curve is read); and LoRA against itself, each rank minus the next
  lower one and the highest minus the lowest (``lora_rank_steps.csv``, `rank_step_records`), which says whether
  rank moves the scores at all under the grid's protocol; and the ablation ladder, each rung (CLoRA, RoLoRA,
  PRoLoRA, and PRoLoRA without the rectified init) against the one below it (``ablation_ladder.csv``,
  `ladder_records`);
* ``runs/<run>/`` — each run's record without its weights (`ARCHIVED`: configs, results, metrics, predictions,
  logs, the tensorboard events of the loss curves; a few hundred KiB a run), so the report can be re-derived
  from the results folder alone: ``report_results.py <output_dir>/runs --output_dir ...``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from open_instruct.io_utils import write_text
from open_instruct.paper import plots
from open_instruct.paper.stats import t_interval
from open_instruct.paper.summarize import (
    HPARAM_COLUMNS,
    MISSING,
    TASKS,
    Row,
    Run,
    Task,
    _fmt,
    find_run_dirs,
    mean_std,
    read_run,
    runs_csv,
    score_digits,
    summarize_runs,
    table_records,
    to_csv,
    to_markdown,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# What of a run folder `runs/` keeps (glob patterns relative to the run): everything the summarizer, the plots and
# a reader need, nothing heavy (adapter weights, checkpoints, tokenizer files, merged models stay behind).
ARCHIVED = ("run_config.json", "all_results.json", "adapter_config.json", "completed", "logs/*.log",
            "eval/*/*.json", "eval/*/*.jsonl", "eval/*/*.txt", "finetune/**/events.out.tfevents.*",
            "finetune/**/hparams.yml", ".grid/*.done")  # the markers: command, seconds, commit and hardware


@dataclass(frozen=True)
class Selector:
    """Which runs make up one side of a paired comparison: a table label and hyper-parameters it must have."""

    label: str
    hparams: tuple[tuple[str, object], ...] = ()

    def matches(self, run: Run) -> bool:
        return run.label == self.label and all(run.hparams.get(k) == v for k, v in self.hparams)

    def __str__(self) -> str:
        return self.label + "".join(f" {k}={v}" for k, v in self.hparams)


# The paper's headline comparisons: PRoLoRA r=8 (56% of LoRA r=8's parameters) against LoRA of the same rank,
# and against LoRA r=4 (about PRoLoRA's budget).
DEFAULT_PAIRS = (
    (Selector("PRoLoRA", (("r", 8), ("u", 1), ("m", 2), ("n", 2))), Selector("LoRA", (("r", 8),))),
    (Selector("PRoLoRA", (("r", 8), ("u", 1), ("m", 2), ("n", 2))), Selector("LoRA r=4 (PRoLoRA's budget)",
                                                                              (("r", 4),))),
)


def paired_differences(runs: list[Run], a: Selector, b: Selector, columns) -> dict[str, dict]:
    """Per column: {"by_seed": {seed: a − b}, "mean", "std", "n"} over the seeds where both sides have the number.

    Each side must have at most one run per seed (several would make the pairing ambiguous: ValueError).
    """
    sides = []
    for selector in (a, b):
        by_seed: dict[int, Run] = {}
        for run in runs:
            if selector.matches(run) and run.seed is not None:
                if run.seed in by_seed:
                    raise ValueError(f"two runs of {selector} with seed {run.seed}: {by_seed[run.seed].path}, "
                                     f"{run.path}")
                by_seed[run.seed] = run
        sides.append(by_seed)
    result = {}
    for column in columns:
        diffs = {seed: sides[0][seed].metrics[column] - sides[1][seed].metrics[column]
                 for seed in sorted(set(sides[0]) & set(sides[1]))
                 if column in sides[0][seed].metrics and column in sides[1][seed].metrics}
        if diffs:
            mean, std = mean_std(list(diffs.values()))
            result[column] = {"by_seed": diffs, "mean": mean, "std": std, "n": len(diffs)}
    return result


def paired_markdown(runs: list[Run], pairs, columns) -> str:
    lines = []
    for a, b in pairs:
        diffs = paired_differences(runs, a, b, columns)
        if not diffs:
            continue
        seeds = sorted({seed for d in diffs.values() for seed in d["by_seed"]})
        lines += ["", f"Paired by seed: {a} − {b} (positive = {a.label} higher)", "",
                  "| column | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
                  "|---|" + "---:|" * (len(seeds) + 1)]
        for column, d in diffs.items():
            digits = score_digits(column)
            cells = [_fmt(d["by_seed"].get(s), digits) for s in seeds]
            total = _fmt(d["mean"], digits) if d["std"] is None else \
                f"{_fmt(d['mean'], digits)} ± {_fmt(d['std'], digits)}"
            lines.append(f"| {column} | " + " | ".join(cells) + f" | {total} (n={d['n']}) |")
    return "\n".join(lines) + ("\n" if lines else "")


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} CPU cores visible{gpu}; torch {torch.__version__}"


def commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


PROVENANCE_FIELDS = ("commit", "uncommitted_changes", "cpu", "cpu_count", "cuda_visible_devices", "python", "torch",
                     "transformers", "peft", "accelerate")


def run_provenance(runs: list[Run]) -> list[str]:
    """What made the runs, from their stages' ``.grid/<stage>.done`` markers: one line per distinct (commit,
    hardware, versions), with how many stages it ran; [] when no run has a marker (runs made outside the grid)."""
    seen: Counter = Counter()
    for run in runs:
        for marker in sorted((run.path / ".grid").glob("*.done")):
            try:
                record = json.loads(marker.read_text()).get("provenance") or {}
            except (json.JSONDecodeError, AttributeError):
                continue
            seen[tuple(record.get(key) for key in PROVENANCE_FIELDS)] += 1
    lines = []
    for values, stages in seen.most_common():
        p = dict(zip(PROVENANCE_FIELDS, values))
        code = (p["commit"] or "unknown")[:12] + (" (with uncommitted changes)" if p["uncommitted_changes"] else "")
        gpus = f", CUDA_VISIBLE_DEVICES={p['cuda_visible_devices']}" if p["cuda_visible_devices"] else ""
        versions = ", ".join(f"{k} {p[k]}" for k in ("python", "torch", "transformers", "peft", "accelerate") if p[k])
        lines.append(f"{code} on {p['cpu']}, {p['cpu_count']} CPU cores{gpus}; {versions} ({stages} stages)")
    return lines


def provenance_lines(runs: list[Run]) -> list[str]:
    """The Markdown bullets that say where the report and its runs were made (shared by every report)."""
    made = run_provenance(runs)
    return [f"- commit: {commit()} (the code that wrote this report)",
            f"- hardware: {hardware()} (where this report was written)",
            *(f"- runs made by: commit {line}" for line in made),
            *([] if made else ["- runs made by: unknown (no grid stage markers .grid/*.done in the run folders)"])]


# A logging timestamp ("2026-12-08 03:45:43,757", also inside DeepSpeed's "[...]" prefix) in a run's logs.
LOG_STAMP = re.compile(rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d{3}")


def log_span(run: Run) -> Optional[tuple[float, float]]:
    """(first, last) logging timestamp in the run's ``logs/*.log``, as seconds (local time of the machine that
    wrote them); None when no log has one. Unlike file times, these survive archiving and a git clone."""
    stamps = [match for log in sorted(run.path.glob("logs/*.log")) for match in LOG_STAMP.findall(log.read_bytes())]
    if not stamps:
        return None
    seconds = [datetime.strptime(stamp.decode(), "%Y-%m-%d %H:%M:%S").timestamp() for stamp in stamps]
    return min(seconds), max(seconds)


def wall_time(runs: list[Run]) -> tuple[Optional[float], float]:
    """(first run's first log line → last run's last log line, in hours, or None when a run has no timestamped
    log; total training time of the runs, in hours)."""
    spans = [log_span(run) for run in runs]
    span = (max(end for _, end in spans) - min(start for start, _ in spans)) / 3600 \
        if spans and None not in spans else None
    training = sum(run.metrics.get("train time (h)", 0.0) for run in runs)
    return span, training


def check_archivable(runs: list[Run]) -> None:
    """`archive_runs` names each copy after its run folder, so two runs must not share one."""
    seen: dict[str, Path] = {}
    for run in runs:
        if run.path.name in seen:
            raise ValueError(f"two runs share a folder name, so runs/ cannot hold both: {seen[run.path.name]} "
                             f"and {run.path}")
        seen[run.path.name] = run.path


def archive_runs(runs: list[Run], folder: Path) -> None:
    """Make ``folder`` hold the `ARCHIVED` files of exactly these runs, one ``folder/<run folder name>/`` each
    (times kept; each written under a temporary name and renamed into place). Runs that already live under
    ``folder`` (a report re-derived from an archive) are left as they are."""
    folder = folder.resolve()
    for run in runs:
        source = run.path.resolve()
        if source.is_relative_to(folder):
            continue
        target, partial = folder / run.path.name, folder / f".{run.path.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for pattern in ARCHIVED:
            for path in sorted(source.glob(pattern)):
                if path.is_file():
                    destination = partial / path.relative_to(source)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, destination)
        partial.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    if any(run.path.resolve().is_relative_to(folder) for run in runs):
        return  # re-derived from this archive (perhaps from part of it): nothing in it is stale
    kept = {run.path.name for run in runs}
    for child in folder.iterdir():  # runs of an earlier report that this one no longer has
        if child.is_dir() and child.name not in kept:
            shutil.rmtree(child)


def setting_name(row: Row, rows: list[Row]) -> str:
    """A row's label with its rank and the other hyper-parameters that vary between `rows` (those all rows share
    say nothing)."""
    order = [k for k in HPARAM_COLUMNS if k in row.hparams] + sorted(set(row.hparams) - set(HPARAM_COLUMNS))
    varying = [k for k in order if k == "r" or len({str(other.hparams.get(k)) for other in rows}) > 1]
    return row.label + "".join(f" {k}={row.hparams[k]:g}" if isinstance(row.hparams[k], float) else
                               f" {k}={row.hparams[k]}" for k in varying)


# Matched budgets: each setting of these methods against the LoRA rows of about its own trainable-parameter count
# and of about twice it. The LoRA row chosen is the one whose count is nearest the target on a log scale, and it
# must lie within a factor MATCH_TOLERANCE of it (√2 keeps "same" and "twice" from choosing the same row).
MATCHED_METHODS = ("PRoLoRA", "MoS")
REFERENCE_METHOD = "LoRA"
BUDGETS = (("same", 1.0), ("twice", 2.0))
MATCH_TOLERANCE = math.sqrt(2)


@dataclass(frozen=True)
class BudgetMatch:
    budget: str  # "same" or "twice"
    target: float  # the LoRA / setting parameter ratio sought
    row: Row
    lora: Row

    @property
    def ratio(self) -> float:
        """The ratio matched: LoRA's trainable parameters over the setting's."""
        return self.lora.trainable_params / self.row.trainable_params


def budget_matches(rows: list[Row]) -> list[BudgetMatch]:
    """For every `MATCHED_METHODS` row with a parameter count, its LoRA match at each of `BUDGETS` (where one is
    within `MATCH_TOLERANCE` of the target)."""
    loras = [row for row in rows if row.label == REFERENCE_METHOD and row.trainable_params]
    matches = []
    for row in rows:
        if row.label not in MATCHED_METHODS or not row.trainable_params:
            continue
        for budget, target in BUDGETS:
            wanted = target * row.trainable_params
            scored = sorted((abs(math.log(lora.trainable_params / wanted)), lora.trainable_params, index)
                            for index, lora in enumerate(loras))
            if scored and scored[0][0] <= math.log(MATCH_TOLERANCE) + 1e-12:
                matches.append(BudgetMatch(budget, target, row, loras[scored[0][2]]))
    return matches


def _selector(row: Row) -> Selector:
    return Selector(row.label, tuple(sorted(row.hparams.items())))


def matched_records(rows: list[Row], columns) -> list[dict]:
    """One record per (match, column): setting − LoRA paired by seed, mean, std and 95% t-interval."""
    records = []
    for match in budget_matches(rows):
        diffs = paired_differences(match.row.runs + match.lora.runs, _selector(match.row), _selector(match.lora),
                                   columns)
        for column, d in diffs.items():
            interval = t_interval(list(d["by_seed"].values()))
            records.append({"setting": setting_name(match.row, rows), "params": match.row.trainable_params,
                            "budget": match.budget, "target ratio": match.target,
                            "LoRA": setting_name(match.lora, rows), "LoRA params": match.lora.trainable_params,
                            "ratio": match.ratio, "column": column, "n": d["n"],
                            "seeds": " ".join(str(seed) for seed in d["by_seed"]), "mean": interval.mean,
                            "std": interval.std, "ci low": interval.low, "ci high": interval.high,
                            "excludes 0": interval.excludes_zero})
    return records


def _bracket(loras: list[Row], params: int) -> Optional[tuple[Row, Row]]:
    """The two LoRA rows with the nearest parameter counts below and above `params` (None outside their range)."""
    below = [lora for lora in loras if lora.trainable_params <= params]
    above = [lora for lora in loras if lora.trainable_params >= params]
    if not below or not above:
        return None
    low = max(below, key=lambda lora: lora.trainable_params)
    high = min(above, key=lambda lora: lora.trainable_params)
    return low, high


def curve_records(rows: list[Row], columns) -> list[dict]:
    """Each `MATCHED_METHODS` setting against the LoRA curve read at its own parameter count ("curve" budget).

    Per seed, the LoRA score at the setting's count p is interpolated linearly in log(parameters) between the two
    LoRA ranks that bracket p (of that seed): v = v_lo + (v_hi − v_lo) · log(p / p_lo) / log(p_hi / p_lo). The
    difference setting − v is then treated like the other budgets (mean, std, 95% t-interval over seeds). Unlike
    "same", it does not credit a setting for sitting a little above or below its nearest LoRA rank; settings
    outside LoRA's parameter range get no record.
    """
    loras = sorted((row for row in rows if row.label == REFERENCE_METHOD and row.trainable_params),
                   key=lambda row: row.trainable_params)
    records = []
    for row in rows:
        if row.label not in MATCHED_METHODS or not row.trainable_params:
            continue
        bracket = _bracket(loras, row.trainable_params)
        if bracket is None:
            continue
        low, high = bracket
        low_runs, high_runs = ({run.seed: run for run in side.runs} for side in bracket)
        span = math.log(high.trainable_params / low.trainable_params)
        weight = math.log(row.trainable_params / low.trainable_params) / span if span else 0.0
        name = setting_name(low, rows) if low is high else \
            f"{setting_name(low, rows)}..{high.hparams.get('r')} (log-interpolated)"
        for column in columns:
            diffs = {}
            for run in row.runs:
                lo, hi = low_runs.get(run.seed), high_runs.get(run.seed)
                if None in (run.seed, lo, hi) or any(column not in r.metrics for r in (run, lo, hi)):
                    continue
                reference = lo.metrics[column] + weight * (hi.metrics[column] - lo.metrics[column])
                diffs[run.seed] = run.metrics[column] - reference
            if not diffs:
                continue
            seeds = sorted(diffs)
            interval = t_interval([diffs[seed] for seed in seeds])
            records.append({"setting": setting_name(row, rows), "params": row.trainable_params, "budget": "curve",
                            "target ratio": 1.0, "LoRA": name, "LoRA params": row.trainable_params, "ratio": 1.0,
                            "column": column, "n": len(seeds), "seeds": " ".join(map(str, seeds)),
                            "mean": interval.mean, "std": interval.std, "ci low": interval.low,
                            "ci high": interval.high, "excludes 0": interval.excludes_zero})
    return records


def step_records(steps: list[tuple[Row, Row]], rows: list[Row], columns) -> list[dict]:
    """Per (higher, lower) pair of rows and column: higher − lower paired by seed, mean, std and 95% t-interval;
    "ratio" = the higher row's trainable parameters / the lower's."""
    records = []
    for high, low in steps:
        diffs = paired_differences(high.runs + low.runs, _selector(high), _selector(low), columns)
        for column, d in diffs.items():
            interval = t_interval(list(d["by_seed"].values()))
            records.append({"higher": setting_name(high, rows), "lower": setting_name(low, rows),
                            "ratio": high.trainable_params / low.trainable_params, "column": column, "n": d["n"],
                            "seeds": " ".join(str(seed) for seed in d["by_seed"]), "mean": interval.mean,
                            "std": interval.std, "ci low": interval.low, "ci high": interval.high,
                            "excludes 0": interval.excludes_zero})
    return records


def rank_step_records(rows: list[Row], columns) -> list[dict]:
    """LoRA against itself: each rank minus the next lower one, and the highest minus the lowest, paired by seed.

    These answer whether rank moves the scores at all under the grid's protocol: a matched-budget difference of
    zero means little where doubling LoRA's parameters changes nothing either.
    """
    loras = sorted((row for row in rows if row.label == REFERENCE_METHOD and row.trainable_params),
                   key=lambda row: row.trainable_params)
    steps = list(zip(loras[1:], loras[:-1]))
    if len(loras) > 2:
        steps.append((loras[-1], loras[0]))
    return step_records(steps, rows, columns)


# The paper's ablation ladder, one ingredient per rung at one (r, m, n), with the row labels the grid configs give
# it: broadcast chunks without rotation or unshared ranks (CLoRA) against the LoRA of exactly its parameter count,
# + rotation (RoLoRA), + unshared ranks (PRoLoRA), and PRoLoRA against itself without the rectified init.
CLORA_LABEL = "CLoRA (broadcast, u=0)"
ROLORA_LABEL = "RoLoRA (+ rotation, u=0)"
NO_INIT_LABEL = "PRoLoRA w/o rectified init"
LADDER_CSV = "ablation_ladder.csv"


def ladder_records(rows: list[Row], columns) -> list[dict]:
    """The ablation ladder's rungs, each minus the one below it, paired by seed (a rung whose row is missing, or
    ambiguous, drops the steps that touch it)."""
    def only(candidates: list[Row]) -> Optional[Row]:
        return candidates[0] if len(candidates) == 1 else None

    clora, rolora, no_init = (only([row for row in rows if row.label == label])
                              for label in (CLORA_LABEL, ROLORA_LABEL, NO_INIT_LABEL))
    rung = clora or rolora or no_init
    if rung is None:
        return []
    prolora = only([row for row in rows if row.label == "PRoLoRA" and
                    all(row.hparams.get(k) == rung.hparams.get(k) for k in ("r", "m", "n"))])
    lora = None if clora is None else only([row for row in rows if row.label == REFERENCE_METHOD
                                            and row.trainable_params == clora.trainable_params])
    steps = [(clora, lora), (rolora, clora), (prolora, rolora), (prolora, no_init)]
    return step_records([(high, low) for high, low in steps if high is not None and low is not None], rows, columns)


RANK_STEPS_CSV = "lora_rank_steps.csv"
STEPS_CSV_COLUMNS = ("higher", "lower", "ratio", "column", "n", "seeds", "mean", "std", "ci low", "ci high",
                     "excludes 0")


def _total_and_ci(rec: dict) -> tuple[str, str]:
    """A record's "mean ± std" and "[low, high]" cells (" *" where the interval excludes 0)."""
    digits = score_digits(rec["column"])
    total = _fmt(rec["mean"], digits) + ("" if rec["std"] is None else f" ± {_fmt(rec['std'], digits)}")
    ci = MISSING if rec["ci low"] is None else \
        f"[{_fmt(rec['ci low'], digits)}, {_fmt(rec['ci high'], digits)}]" + (" *" if rec["excludes 0"] else "")
    return total, ci


def steps_markdown(records: list[dict], title: str, intro: str) -> str:
    """A "## title" section: `intro`, then one line per `step_records` record."""
    if not records:
        return ""
    lines = ["", f"## {title}", "", intro, "",
             "| higher | lower | ratio | column | n | mean ± std | 95% CI |", "|---|---|---:|---|---:|---:|---|"]
    for rec in records:
        total, ci = _total_and_ci(rec)
        lines.append(f"| {rec['higher']} | {rec['lower']} | {rec['ratio']:.2f} | {rec['column']} | {rec['n']} | "
                     f"{total} | {ci} |")
    lines += ["", "* the 95% interval excludes 0."]
    return "\n".join(lines) + "\n"


def rank_steps_markdown(records: list[dict]) -> str:
    return steps_markdown(
        records, f"{REFERENCE_METHOD}'s rank steps",
        f"Does rank move the scores under this protocol? Each {REFERENCE_METHOD} rank minus the next lower one, and "
        "the highest minus the lowest, paired by seed; mean ± sample std and 95% t-interval; \"ratio\" = the "
        "higher rank's parameters / the lower's.")


def ladder_markdown(records: list[dict]) -> str:
    return steps_markdown(
        records, "The ablation ladder",
        f"One ingredient per step: {CLORA_LABEL} − the {REFERENCE_METHOD} of its parameter count (broadcast "
        f"chunks), {ROLORA_LABEL} − CLoRA (rotation), PRoLoRA − RoLoRA (unshared ranks), PRoLoRA − "
        f"{NO_INIT_LABEL} (the rectified init); paired by seed, mean ± sample std and 95% t-interval; \"ratio\" "
        "= the higher row's parameters / the lower's.")


MATCHED_CSV = "matched_budgets.csv"
MATCHED_CSV_COLUMNS = ("setting", "params", "budget", "target ratio", "LoRA", "LoRA params", "ratio", "column", "n",
                       "seeds", "mean", "std", "ci low", "ci high", "excludes 0")


def matched_markdown(records: list[dict]) -> str:
    if not records:
        return ""
    lines = ["", f"## {' and '.join(MATCHED_METHODS)} against {REFERENCE_METHOD} at matched budgets", "",
             f"Each setting against the {REFERENCE_METHOD} row whose trainable-parameter count is nearest (log scale) "
             "to its own (\"same\") and to twice its own (\"twice\"), where one lies within a factor "
             f"{MATCH_TOLERANCE:.3g} of that target. Difference = setting − {REFERENCE_METHOD}, paired by seed; mean "
             "± sample std and 95% t-interval (t with n − 1 degrees of freedom) over the seeds both have; "
             "\"ratio\" = LoRA's parameters / the setting's. \"curve\": against LoRA's score read off its "
             "curve at the setting's own parameter count (per seed, linear in log parameters between the two "
             "LoRA ranks around it).", "",
             "| setting | #Params | budget | LoRA | LoRA #Params | ratio | column | n | mean ± std | 95% CI |",
             "|---|---:|---|---|---:|---:|---|---:|---:|---|"]
    for rec in records:
        total, ci = _total_and_ci(rec)
        lines.append(f"| {rec['setting']} | {_fmt(rec['params'])} | {rec['budget']} | {rec['LoRA']} | "
                     f"{_fmt(rec['LoRA params'])} | {rec['ratio']:.2f} | {rec['column']} | {rec['n']} | {total} | "
                     f"{ci} |")
    lines += ["", "* the 95% interval excludes 0."]
    return "\n".join(lines) + "\n"


def _safe(column: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in column)


def write_report(roots: list[Path], task_name: str, output_dir: Path, pairs=DEFAULT_PAIRS,
                 frontier: Optional[bool] = None) -> str:
    """Write the results folder described in the module docstring; returns summary.md's text. `frontier` adds the
    frontier plots and the matched-budget comparison (default: for the task "frontier" only)."""
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose from {sorted(TASKS)}")
    task: Task = TASKS[task_name]
    runs = [read_run(path) for path in find_run_dirs(roots)]
    if not runs:
        raise ValueError(f"no runs found under {', '.join(map(str, roots))}")
    check_archivable(runs)
    rows = summarize_runs(runs, task)
    columns, records = table_records(rows, task)
    span, training = wall_time(runs)
    finished = sum(not run.partial for run in runs)
    header = [f"# Results: {', '.join(str(r) for r in roots)} (task {task_name})", "",
              *provenance_lines(runs),
              ("- wall time: unknown" if span is None else f"- wall time: {span:.2f} h from the first run's first "
               "log line to the last run's last (includes any pause between sessions)")
              + f"; training alone {training:.2f} h summed over runs",
              f"- runs: {len(runs)} ({finished} complete, {len(runs) - finished} partial)", "", ""]
    frontier = task_name == "frontier" if frontier is None else frontier
    matched = matched_records(rows, task.columns) + curve_records(rows, task.columns) if frontier else []
    markdown = "\n".join(header) + to_markdown(columns, records, task) + paired_markdown(runs, pairs, task.columns)
    steps = rank_step_records(rows, task.columns) if frontier else []
    ladder = ladder_records(rows, task.columns) if frontier else []
    markdown += rank_steps_markdown(steps) + matched_markdown(matched) + ladder_markdown(ladder)
    output_dir.mkdir(parents=True, exist_ok=True)
    if frontier:
        write_text(output_dir / MATCHED_CSV, to_csv(list(MATCHED_CSV_COLUMNS), matched))
        write_text(output_dir / RANK_STEPS_CSV, to_csv(list(STEPS_CSV_COLUMNS), steps))
        write_text(output_dir / LADDER_CSV, to_csv(list(STEPS_CSV_COLUMNS), ladder))
        figures = [f"frontier_{_safe(column)}.png" for column in task.columns
                   if plots.plot_frontier(rows, column, output_dir / f"frontier_{_safe(column)}.png") > 0]
        markdown += ("\nFrontier plots (mean and 95% t-interval over seeds; a line per method, ablation rows as "
                     "markers): " + ", ".join(f"[{name}]({name})" for name in figures) + "\n") if figures else ""
    write_text(output_dir / "summary.md", markdown)
    write_text(output_dir / "summary.csv", to_csv(columns, records))
    write_text(output_dir / "runs.csv", runs_csv(runs))
    first = next((c for c in task.columns if c != "held-out loss"), task.columns[0])
    plots.plot_efficiency(rows, first, output_dir / f"efficiency_{_safe(first)}.png")
    curves = [(f"{run.label} sd{run.seed}", run.path) for run in runs
              if not run.partial and run.label != "base model"]
    plots.plot_loss_curves(curves, output_dir / "loss_curves.png")
    archive_runs(runs, output_dir / "runs")
    return markdown
