"""Collect finished runs into paper-style tables: one tool, with a task switch, for every benchmark.

A *run* is a folder holding ``run_config.json`` (written by the grid runner), ``all_results.json`` (finetune) or
``adapter_config.json``; its evaluations sit below it. Where each number lives is the single table
`METRIC_SOURCES` (column, candidate paths relative to the run, candidate JSON key paths, scale); the first candidate
path that exists wins, so both our layout (``eval/mmlu/metrics.json``) and the PRoLoRA authors' layout (their
ft_*.sh save dirs: ``mmlu_results/``, ``tydiqa_results/``, ``gsm_results/``, ``bbh_results/{cot,no_cot}/``,
``codex_eval_results/{pass1,pass10}/``, with the keys their *_summarize.py read) are read.

Runs that differ only in their seed form one row: each cell is ``mean ± std`` (sample std) over the seeds that
have the number, with ``(n=k)`` when fewer than the row's seeds do. A missing number is shown as "–", never
as 0. A fine-tuning run without its ``completed`` marker is *partial*: flagged with "*" (or left out with
``skip_partial``). Scores are in percent. "Avg." is each run's mean over the task's averaged columns (only for
runs that have all of them), then mean ± std over seeds. Runs of the same setting and seed from different grids
(one per training set, as in the paper) are joined first, so a seed's MMLU and BBH land in one row.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from open_instruct.peft_methods import METHODS

MISSING = "–"
COMPLETED_MARKER = "completed"
RUN_FILES = ("run_config.json", "all_results.json", "adapter_config.json")


KeyPath = str | tuple[str, ...]


@dataclass(frozen=True)
class MetricSource:
    column: str
    paths: tuple[str, ...]  # relative to the run folder; the first one that exists is read
    keys: tuple[KeyPath, ...]  # key paths inside the JSON file (dotted, or a tuple of keys); the first present wins
    scale: float = 100.0  # multiply to get display units: percent for fractions, 1 for 0-100 or losses


def _sources(ours: str, authors: str) -> tuple[str, str]:
    """Our eval folder and the PRoLoRA authors' (their ft_*.sh save_dir under the run folder)."""
    return f"eval/{ours}/metrics.json", f"{authors}/metrics.json"


MMLU_FILES = _sources("mmlu", "mmlu_results")
METRIC_SOURCES = (
    MetricSource("MMLU", MMLU_FILES, ("average_acc",)),
    MetricSource("MMLU STEM", MMLU_FILES, ("cat_acc.STEM",)),
    MetricSource("MMLU hum.", MMLU_FILES, ("cat_acc.humanities",)),
    MetricSource("MMLU soc.", MMLU_FILES, ("cat_acc.social sciences",)),
    # upstream's key (a name with dots, hence the tuple); "other" is what this project wrote before
    MetricSource("MMLU other", MMLU_FILES, (("cat_acc", "other (business, health, misc.)"), "cat_acc.other")),
    MetricSource("TyDiQA F1", _sources("tydiqa", "tydiqa_results"), ("average.f1",), scale=1.0),
    MetricSource("TyDiQA EM", _sources("tydiqa", "tydiqa_results"), ("average.exact_match",), scale=1.0),
    MetricSource("GSM8K", _sources("gsm", "gsm_results"), ("exact_match",)),
    MetricSource("BBH CoT", _sources("bbh_cot", "bbh_results/cot"), ("average_exact_match",)),
    MetricSource("BBH direct", _sources("bbh_direct", "bbh_results/no_cot"), ("average_exact_match",)),
    MetricSource("HumanEval P@1", _sources("codex_pass1", "codex_eval_results/pass1"), ("pass@1",)),
    MetricSource("HumanEval P@10", _sources("codex_pass10", "codex_eval_results/pass10"), ("pass@10",)),
    MetricSource("held-out loss", ("all_results.json",), ("eval_loss",), scale=1.0),
    MetricSource("held-out token acc", ("all_results.json",), ("eval_token_accuracy",)),  # finetune's greedy hits
    MetricSource("ASDiv EM", ("eval/asdiv/metrics.json",), ("exact_match", "accuracy")),  # eval.gsm / eval.heldout
    MetricSource("BIG-bench acc", ("eval/bigbench/metrics.json",), ("accuracy", "average_exact_match")),
    MetricSource("train loss", ("all_results.json",), ("train_loss",), scale=1.0),
    MetricSource("train time (h)", ("all_results.json",), ("train_runtime",), scale=1 / 3600),
)


@dataclass(frozen=True)
class Task:
    columns: tuple[str, ...]
    averaged: tuple[str, ...] = ()  # columns whose per-run mean is the "Avg." column (none: no Avg.)


TASKS = {
    "mmlu": Task(("MMLU", "MMLU STEM", "MMLU hum.", "MMLU soc.", "MMLU other")),
    "tydiqa": Task(("TyDiQA F1", "TyDiQA EM")),
    "gsm": Task(("GSM8K",)),
    "bbh": Task(("BBH CoT", "BBH direct")),
    "codex": Task(("HumanEval P@1", "HumanEval P@10")),
    "superni": Task(("MMLU", "TyDiQA F1", "TyDiQA EM"), averaged=("MMLU", "TyDiQA F1")),
    "paper": Task(("MMLU", "TyDiQA F1", "GSM8K", "BBH CoT", "HumanEval P@1"),
                  averaged=("MMLU", "TyDiQA F1", "GSM8K", "BBH CoT", "HumanEval P@1")),
    "mini": Task(("held-out loss", "ASDiv EM", "BIG-bench acc", "MMLU"),  # MMLU: "no forgetting" only, not averaged
                 averaged=("ASDiv EM", "BIG-bench acc")),
    "frontier": Task(("held-out loss", "held-out token acc", "ASDiv EM")),  # the CPU pilot and frontier grids
    "training": Task(("train loss", "held-out loss", "train time (h)")),
}
HPARAM_COLUMNS = ("r", "u", "m", "n", "R", "p", "l", "alpha", "lr")  # u, m, n: PRoLoRA's; R, p, l: MoS's
PEFT_LABELS = {method.peft_type: method.label for method in METHODS.values()}


@dataclass
class Run:
    """One run folder: its identity (method label + hyper-parameters + seed) and the numbers found in it."""

    path: Path
    label: str
    hparams: dict
    seed: Optional[int]
    partial: bool
    trainable_params: Optional[int]
    metrics: dict[str, float] = field(default_factory=dict)


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _lookup(obj, key: KeyPath):
    for part in key.split(".") if isinstance(key, str) else key:
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj if isinstance(obj, (int, float)) and not isinstance(obj, bool) else None


def read_metric(run_dir: Path, source: MetricSource) -> Optional[float]:
    """The value of `source` for a run, in display units, or None when the file or key is absent."""
    for relative in source.paths:
        data = _read_json(run_dir / relative)
        if data is not None:
            value = next((v for key in source.keys if (v := _lookup(data, key)) is not None), None)
            return None if value is None or not math.isfinite(value) else value * source.scale
    return None


def _method_from_adapter(adapter: dict) -> tuple[str, dict]:
    """Label and hyper-parameters from a saved PEFT adapter_config.json."""
    peft_type = str(adapter.get("peft_type", "")).upper()
    label = PEFT_LABELS.get(peft_type, peft_type.title() or "unknown")
    hparams = {"r": adapter.get("r"), "alpha": adapter.get("lora_alpha")}
    if peft_type == "PROLORA":
        hparams.update(u=adapter.get("unshared_r", 0), m=adapter.get("reduce_lora_A_x", 1),
                       n=adapter.get("reduce_lora_B_x", 1))
        if adapter.get("enable_lora_rotation") is False:
            label = "CLoRA (no rotation)"
        if adapter.get("rectified_init") is False:
            label += " w/o rectified init"
    if peft_type == "MOS":  # MosConfig's fields; mos_r None means R = r
        hparams.update(R=adapter.get("mos_r") or adapter.get("r"), p=adapter.get("private_r", 0),
                       l=adapter.get("shards_per_vector", 1))
        ablated = [name.replace("_", " ") for name in ("subset_selection", "pair_dissociation", "global_pool")
                   if adapter.get(name) is False]
        if ablated:
            label += " w/o " + ", ".join(ablated)
    return label, hparams


def _from_folder_name(name: str, pattern: str, cast):
    match = re.search(pattern, name)
    return cast(match.group(1)) if match else None


def read_run(run_dir: Path) -> Run:
    """Identity and numbers of one run folder (see the module docstring for where they come from)."""
    run_config = _read_json(run_dir / "run_config.json") or {}
    results = _read_json(run_dir / "all_results.json") or {}
    adapter = _read_json(run_dir / "adapter_config.json") or results.get("peft_config") or {}
    label, hparams = _method_from_adapter(adapter) if adapter else ("full fine-tuning" if results else "base model", {})
    label = run_config.get("label", label)
    hparams.update({k: run_config[k] for k in HPARAM_COLUMNS if run_config.get(k) is not None})
    if "lr" not in hparams:
        hparams["lr"] = _from_folder_name(run_dir.name, r"_lr_([0-9.eE+-]+?)(?:_|$)", float)
    seed = run_config.get("seed", _from_folder_name(run_dir.name, r"(?:_sd_|seed)(\d+)", int))
    trained = bool(results or adapter) or run_config.get("method", "base") != "base"
    partial = trained and not (run_dir / COMPLETED_MARKER).exists()
    trainable = results.get("trainable_params")
    metrics = {s.column: v for s in METRIC_SOURCES if (v := read_metric(run_dir, s)) is not None}
    return Run(run_dir, label, {k: v for k, v in hparams.items() if v is not None}, seed, partial, trainable, metrics)


def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Run folders under `roots` (a run's own subfolders are not searched; checkpoint folders are skipped)."""
    found = []

    def walk(folder: Path) -> None:
        if any((folder / name).is_file() for name in RUN_FILES):
            found.append(folder)
            return
        for child in sorted(folder.iterdir()):
            if child.is_dir() and not child.name.startswith((".", "checkpoint", "step_")):
                walk(child)

    for root in roots:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"results folder {root} does not exist")
        walk(Path(root))
    return found


def mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Row:
    """Runs grouped over seeds: the statistics behind one table row."""

    label: str
    hparams: dict
    runs: list[Run]
    cells: dict[str, tuple[float, Optional[float], int]]  # column -> (mean, std, n)
    trainable_params: Optional[int]

    @property
    def partial(self) -> bool:
        return any(run.partial for run in self.runs)


def combine_across_grids(runs: list[Run], columns: tuple[str, ...]) -> list[Run]:
    """Join runs of the same method, hyper-parameters and seed whose `columns` do not overlap into one.

    The paper trains each setting once per training set (Super-NI for MMLU/TyDiQA, FLAN v2 for BBH, ...), so
    one grid per training set holds a part of a seed's scores; joined, each seed has every benchmark and an
    average. Runs whose columns overlap (e.g. two copies of the same grid) stay separate.
    """
    buckets: dict[tuple, list[Run]] = {}
    for run in runs:
        buckets.setdefault((run.label, tuple(sorted(run.hparams.items())), run.seed), []).append(run)
    combined = []
    for members in buckets.values():
        owned = [set(columns) & set(run.metrics) for run in members]
        if len(members) == 1 or sum(map(len, owned)) != len(set().union(*owned)):
            combined += members
            continue
        metrics = {column: run.metrics[column] for run, cols in zip(members, owned) for column in cols}
        params = next((run.trainable_params for run in members if run.trainable_params is not None), None)
        combined.append(Run(members[0].path, members[0].label, members[0].hparams, members[0].seed,
                            any(run.partial for run in members), params, metrics))
    return combined


def summarize_runs(runs: list[Run], task: Task) -> list[Row]:
    """Group runs by (label, hyper-parameters) and aggregate each column (and the per-run average) over seeds."""
    groups: dict[tuple, list[Run]] = {}
    for run in combine_across_grids(runs, task.columns):
        groups.setdefault((run.label, tuple(sorted(run.hparams.items()))), []).append(run)
    rows = []
    for (label, hparams), members in groups.items():
        cells = {}
        for column in task.columns:
            values = [run.metrics[column] for run in members if column in run.metrics]
            if values:
                cells[column] = (*mean_std(values), len(values))
        if len(task.averaged) > 1:
            averages = [sum(run.metrics[c] for c in task.averaged) / len(task.averaged)
                        for run in members if all(c in run.metrics for c in task.averaged)]
            if averages:
                cells["Avg."] = (*mean_std(averages), len(averages))
        params = {run.trainable_params for run in members if run.trainable_params is not None}
        if len(params) > 1:
            raise ValueError(f"runs of {label} {dict(hparams)} report different trainable_params {sorted(params)}: "
                             + ", ".join(str(run.path) for run in members))
        rows.append(Row(label, dict(hparams), members, cells, params.pop() if params else None))
    order = {"base model": 0, "LoRA": 1}
    rows.sort(key=lambda row: (order.get(row.label, 2), row.trainable_params or 0, row.label,
                               sorted((k, str(v)) for k, v in row.hparams.items())))
    return rows


def _lora_reference(rows: list[Row], r) -> Optional[int]:
    for row in rows:
        if row.label == "LoRA" and row.hparams.get("r") == r and row.trainable_params:
            return row.trainable_params
    return None


def table_records(rows: list[Row], task: Task, reference_r: Optional[int] = None) -> tuple[list[str], list[dict]]:
    """(columns, records) of the summary table; numbers stay numbers (None when missing) for the CSV writer.

    Each score column yields "<col>" (mean), "<col> std" and "<col> n". "% LoRA" divides by the LoRA row of the
    same rank; "% LoRA r=R" by the LoRA row of rank R = `reference_r` (default: the smallest LoRA rank present).
    """
    lora_ranks = sorted(row.hparams["r"] for row in rows if row.label == "LoRA" and "r" in row.hparams)
    reference_r = reference_r if reference_r is not None else (lora_ranks[0] if lora_ranks else None)
    reference = _lora_reference(rows, reference_r)
    score_columns = list(task.columns) + (["Avg."] if len(task.averaged) > 1 else [])
    columns = ["method", *HPARAM_COLUMNS, "seeds", "partial", "params", "% LoRA"]
    columns += [f"% LoRA r={reference_r}"] if reference else []
    columns += [f"{c}{suffix}" for c in score_columns for suffix in ("", " std", " n")]
    records = []
    for row in rows:
        same_r = _lora_reference(rows, row.hparams.get("r"))
        record = {"method": row.label, **{k: row.hparams.get(k) for k in HPARAM_COLUMNS},
                  "seeds": len(row.runs), "partial": row.partial, "params": row.trainable_params,
                  "% LoRA": 100 * row.trainable_params / same_r if row.trainable_params and same_r else None}
        if reference:
            record[f"% LoRA r={reference_r}"] = 100 * row.trainable_params / reference if row.trainable_params else None
        for column in score_columns:
            mean, std, n = row.cells.get(column, (None, None, 0))
            record.update({column: mean, f"{column} std": std, f"{column} n": n})
        records.append(record)
    return columns, records


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return str(value)


def score_digits(column: str) -> int:
    """Decimals shown for a score column: losses differ in the third decimal between methods, percents do not."""
    return 3 if "loss" in column else 2


def to_markdown(columns: list[str], records: list[dict], task: Task) -> str:
    """Paper-style Markdown: mean ± std cells, "–" for missing numbers, "*" for rows with partial runs."""
    # a score column no row has (e.g. a benchmark the grid does not run) is left out, like unused hyper-parameters
    score_columns = [c for c in columns if (c in task.columns or c == "Avg.") and any(rec[c] is not None
                                                                                       for rec in records)]
    used_hparams = [c for c in HPARAM_COLUMNS if any(rec[c] is not None for rec in records)]
    # the "% LoRA r=R" column only when it says something "% LoRA" (same rank) does not
    ratio_columns = [c for c in columns if c.startswith("% LoRA") and
                     (c == "% LoRA" or any(rec[c] != rec["% LoRA"] for rec in records))]
    header = ["Method", *used_hparams, "seeds", "#Params", *ratio_columns, *score_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for rec in records:
        cells = [rec["method"] + (" *" if rec["partial"] else "")]
        cells += [f"{rec[c]:g}" if c == "lr" and rec[c] is not None else _fmt(rec[c]) for c in used_hparams]
        cells += [str(rec["seeds"]), _fmt(rec["params"]), *[_fmt(rec[c]) for c in ratio_columns]]
        for column in score_columns:
            mean, std, n = rec[column], rec[f"{column} std"], rec[f"{column} n"]
            digits = score_digits(column)
            text = _fmt(mean, digits) if std is None else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"
            if mean is not None and n < rec["seeds"]:
                text += f" (n={n})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", f"Scores in percent; mean ± sample std over seeds; {MISSING} = no result."]
    ratio_notes = {"% LoRA": "trainable parameters as a percent of LoRA's at the same r"}
    ratio_notes.update({c: f"the same against LoRA at {c.removeprefix('% LoRA ')}"
                        for c in ratio_columns if c != "% LoRA"})
    notes.append("; ".join(f'"{c}": {ratio_notes[c]}' for c in ratio_columns) + ".")
    if any(rec["partial"] for rec in records):
        notes.append(f"* includes runs without a `{COMPLETED_MARKER}` marker (interrupted or still training).")
    return "\n".join(lines + notes) + "\n"


def to_csv(columns: list[str], records: list[dict]) -> str:
    """CSV with empty cells (not 0) for missing numbers."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: "" if rec.get(k) is None else rec[k] for k in columns})
    return buffer.getvalue()


def runs_csv(runs: list[Run]) -> str:
    """One line per run folder (the authors' summary.csv shape): path, identity and every number found."""
    columns = ["path", "method", *HPARAM_COLUMNS, "seed", "partial", "params", *(s.column for s in METRIC_SOURCES)]
    records = [{"path": str(run.path), "method": run.label, **run.hparams, "seed": run.seed, "partial": run.partial,
                "params": run.trainable_params, **run.metrics} for run in runs]
    return to_csv(columns, records)


def summarize(roots: list[Path], task_name: str, output_dir: Path, skip_partial: bool = False,
              reference_r: Optional[int] = None) -> str:
    """Scan `roots`, write ``summary_<task>.md``, ``summary_<task>.csv`` and ``runs.csv`` to `output_dir`;
    return the Markdown table."""
    from open_instruct.io_utils import write_text

    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose from {sorted(TASKS)}")
    task = TASKS[task_name]
    runs = [read_run(path) for path in find_run_dirs(roots)]
    if skip_partial:
        runs = [run for run in runs if not run.partial]
    if not runs:
        raise ValueError(f"no runs found under {', '.join(map(str, roots))}")
    columns, records = table_records(summarize_runs(runs, task), task, reference_r)
    markdown = to_markdown(columns, records, task)
    write_text(output_dir / f"summary_{task_name}.md", markdown)
    write_text(output_dir / f"summary_{task_name}.csv", to_csv(columns, records))
    write_text(output_dir / "runs.csv", runs_csv(runs))
    return markdown
