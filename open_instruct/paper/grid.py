"""Run an experiment grid from a YAML file: fine-tune -> merge -> evaluate every cell, then tabulate and plot.

YAML layout (see ``configs/experiments/*.yaml``)::

    name: mini_smollm2
    model: offline:smollm2            # hub name, local folder, or offline:smollm2 (the packaged SmolLM2)
    output_dir: output/mini_smollm2
    seeds: [1, 2, 3]
    prepare:                          # optional: commands run once before any cell (e.g. build the data)
      - {module: open_instruct.offline_data, args: {...}, creates: data/processed/asdiv/asdiv_data.jsonl}
    train: {train_file: ..., learning_rate: 2.0e-4, max_train_steps: 200, ...}   # finetune flags for every cell
    merge: {enabled: true, keep_merged: true, args: {...}}
    eval_args: {use_chat_format: true}                                           # flags for every eval
    evals:                            # save-dir name -> module + flags
      asdiv: {module: eval.gsm.run_eval, args: {data_dir: data/eval/asdiv}}
    methods:                          # list values expand into a cartesian product, then x seeds
      - {name: base, method: base}
      - {name: lora, method: lora, r: [8, 16], lr: [1.0e-4, 2.0e-4]}
      - {name: clora, method: prolora, r: 8, u: 1, m: 2, n: 2, rotation: false, label: "CLoRA (no rotation)"}
      - {name: lora_lin, method: lora, r: 8, schedule: linear, seeds: [1, 2]}
    # schedule: the entry's lr_scheduler_type (over train's); seeds: the entry's own seeds (over the grid's)
    # PRoLoRA keys: u, m, n, rotation, rectified_init -- or ProLoraConfig's names for them (unshared_r,
    # reduce_lora_A_x, reduce_lora_B_x, enable_lora_rotation), see open_instruct.peft_methods.PROLORA_SETTINGS
    # MoS keys: R (pool rank; default r), p (private ranks), l (shards per vector), and the switches
    # subset_selection, pair_dissociation, global_pool (default true) -- e.g. {name: mos, method: mos, r: 8, R: 2,
    # p: 1, l: 4}; see open_instruct.peft_methods.MOS_SETTINGS
    summary: {task: mini, plot_columns: [ASDiv EM]}
    extends: common/base.yaml         # optional: a file (relative to this one) that this one is merged over
                                      # (an eval given another module there starts afresh: no inherited args)
    smoke: {...}                      # deep-merged over the file with --smoke (fewer steps/examples, 1 seed);
                                      # a null value there removes a setting or an eval

Each cell gets a deterministic folder ``<output_dir>/<name>_r8_u1_m2n2_lr0.0002_sd1`` holding
``run_config.json`` (its identity, read by the summarizer), the adapter, ``merged/`` and ``eval/<name>/``; each
stage's marker ``.grid/<stage>.done`` records its command, time and provenance (commit, hardware, versions).
Stages are subprocesses (``python -m <module> ...``) with their output in ``logs/<stage>.log``. A stage counts as
done when its marker ``.grid/<stage>.done`` exists *and* its output is there, so an interrupted grid resumes
where it stopped (fine-tuning itself resumes from its last checkpoint). A failing stage is recorded in
``.grid/<stage>.failed``; a failed fine-tune or merge skips the rest of that cell (a failed eval only itself),
the grid goes on and the failures are listed at the end. A ``base`` cell has no training: its evals run on the base
model.

Scaling out (docs/scale_out.md): with ``devices`` :func:`run_grid` runs one cell per device at a time in a thread
pool, each cell's stages seeing only its device (``CUDA_VISIBLE_DEVICES``); ``only`` runs one cell (what each task
of a Slurm array job does, see :mod:`open_instruct.paper.slurm`). Either way a cell is the unit of work and its
stage markers make it resumable.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml
from tqdm import tqdm

from open_instruct.cli import UsageError, check_model_source, looks_local
from open_instruct.io_utils import write_json
from open_instruct.peft_methods import METHODS as REGISTRY
from open_instruct.peft_methods import MOS_SETTINGS, PROLORA_SETTINGS
from open_instruct.training.args import DEFAULT_LR_SCHEDULER, LR_SCHEDULERS

logger = logging.getLogger(__name__)

METHODS = ("base", *REGISTRY)
LABELS = {"base": "base model", **{name: method.label for name, method in REGISTRY.items()}}
# a PRoLoRA or MoS setting's config-field name -> the Cell field that holds it (u, m, n, R, p, l, the switches)
SETTING_KEYS = {s.field: s.aliases[0] if s.aliases else s.field for s in (*PROLORA_SETTINGS, *MOS_SETTINGS)}
PROLORA_KEYS = ("u", "m", "n", "rotation", "rectified_init")
MOS_KEYS = ("R", "p", "l", "subset_selection", "pair_dissociation", "global_pool")  # MOS_SETTINGS' grid names
EXPANDABLE = ("r", "u", "m", "n", "R", "p", "l", "lr", "alpha", "schedule")
SWITCHES = ("rotation", "rectified_init", "subset_selection", "pair_dissociation", "global_pool")  # default: on
CELL_KEYS = {"name", "method", "label", "seeds", *SWITCHES, *EXPANDABLE}
TOP_KEYS = {"name", "model", "output_dir", "seeds", "prepare", "train", "merge", "eval_args", "evals", "methods",
            "summary", "smoke", "modules", "extends"}
DEFAULT_MODULES = {"finetune": "open_instruct.finetune", "merge": "open_instruct.merge_lora"}
OFFLINE_SMOLLM2 = "offline:smollm2"
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding open_instruct/ and eval/

# runner(command, log_file) -> exit status; the default runs a subprocess, tests inject a fake.
Runner = Callable[[list[str], Path], int]


class GridConfigError(UsageError, ValueError):
    """A problem in the grid YAML, reported as one line naming the file and the offending value."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid (a base-model row has method "base" and no hyper-parameters)."""

    name: str
    method: str
    label: str
    r: Optional[int] = None
    u: Optional[int] = None
    m: Optional[int] = None
    n: Optional[int] = None
    R: Optional[int] = None  # MoS: the pools' equivalent LoRA rank (None: r), private ranks, shards per vector
    p: Optional[int] = None
    l: Optional[int] = None  # noqa: E741 - the MoS paper's letter
    lr: Optional[float] = None
    alpha: Optional[float] = None
    schedule: Optional[str] = None  # lr_scheduler_type; None: the train section's
    rotation: bool = True
    rectified_init: bool = True
    subset_selection: bool = True
    pair_dissociation: bool = True
    global_pool: bool = True
    seed: Optional[int] = None

    @property
    def folder(self) -> str:
        parts = [self.name]
        if self.r is not None:
            parts.append(f"r{self.r}")
        if self.method == "prolora":
            parts += [f"u{self.u}", f"m{self.m}n{self.n}"]
        if self.method == "mos":
            parts.append(f"R{self.R if self.R is not None else self.r}p{self.p}l{self.l}")
        if self.alpha is not None:
            parts.append(f"a{self.alpha:g}")
        if self.lr is not None:
            parts.append(f"lr{self.lr:g}")
        if self.schedule is not None:
            parts.append(self.schedule)
        if self.seed is not None:
            parts.append(f"sd{self.seed}")
        return "_".join(parts)


@dataclass
class Stage:
    name: str
    command: list[str]
    output: Path  # must exist after success; its absence makes the stage run again


@dataclass
class GridResult:
    """Counts and failures of one run; cells running in parallel threads update it through `add` (under a lock)."""

    cells: int = 0
    stages_run: int = 0
    stages_skipped: int = 0
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, run: int = 0, skipped: int = 0, failure: Optional[str] = None) -> None:
        with self._lock:
            self.stages_run += run
            self.stages_skipped += skipped
            if failure is not None:
                self.failures.append(failure)


# ---------------------------------------------------------------------------------------------- config

def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, recursing into dicts (lists and scalars are replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: Path) -> dict:
    """One YAML mapping; with ``extends: other.yaml`` (relative to this file) it is merged over that file."""
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise GridConfigError(f"grid config {path} does not exist") from None
    except yaml.YAMLError as err:
        raise GridConfigError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise GridConfigError(f"{path}: expected a mapping at the top level")
    if "extends" in config:
        base = read_yaml(path.parent / config.pop("extends"))
        config = deep_merge(without_replaced_evals(base, config), config)
    return config


def without_replaced_evals(base: dict, override: dict) -> dict:
    """`base` less the evals that `override` gives another module: their args were flags of another program, so
    such an eval is taken from `override` alone instead of merged over the one it replaces."""
    evals, new = base.get("evals"), override.get("evals")
    if not isinstance(evals, dict) or not isinstance(new, dict):
        return base
    replaced = {name for name, spec in new.items() if isinstance(spec, dict) and "module" in spec
                and isinstance(evals.get(name), dict) and evals[name].get("module") != spec["module"]}
    return {**base, "evals": {name: spec for name, spec in evals.items() if name not in replaced}}


def load_config(path, smoke: bool = False) -> dict:
    """Read and check a grid YAML; with `smoke`, apply its ``smoke:`` overrides and use ``<output_dir>_smoke``."""
    path = Path(path)
    config = read_yaml(path)
    unknown = set(config) - TOP_KEYS
    if unknown:
        raise GridConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; "
                              f"expected some of {sorted(TOP_KEYS)}")
    for key in ("model", "output_dir", "methods"):
        if key not in config:
            raise GridConfigError(f"{path}: missing required key {key!r}")
    if smoke:
        if "smoke" not in config:
            raise GridConfigError(f"{path}: --smoke given but the file has no 'smoke:' section")
        config = deep_merge(config, config["smoke"])
        config["output_dir"] = str(config["output_dir"]).rstrip("/") + "_smoke"
    config.pop("smoke", None)
    config["_source"] = str(path)
    if not isinstance(config["methods"], list):
        raise GridConfigError(f"{path}: 'methods' must be a list of method entries")
    for name, spec in (config.get("evals") or {}).items():
        if spec is not None and (not isinstance(spec, dict) or "module" not in spec):
            raise GridConfigError(f"{path}: evals.{name} needs a 'module'")
    prepare_stages(config)  # validate everything now, before anything runs
    expand_cells(config)
    return config


def expand_cells(config: dict) -> list[Cell]:
    """All cells: each methods entry x the product of its list-valued hyper-parameters x seeds (base: once).

    Ordered seed by seed (the base cells first, then every row with the first seed, then the second, ...), so a
    grid that is stopped part-way has complete rows for the seeds it finished rather than some rows only."""
    source = config.get("_source", "grid config")
    seeds = config.get("seeds") or [None]
    cells: list[Cell] = []
    for index, entry in enumerate(config["methods"]):
        where = f"{source}: methods[{index}]"
        if not isinstance(entry, dict) or "name" not in entry or "method" not in entry:
            raise GridConfigError(f"{where}: each method entry needs 'name' and 'method'")
        spelled_twice = [k for k in entry if k in SETTING_KEYS and SETTING_KEYS[k] != k and SETTING_KEYS[k] in entry]
        if spelled_twice:
            raise GridConfigError(f"{where}: {spelled_twice[0]} and {SETTING_KEYS[spelled_twice[0]]} are one setting")
        entry = {SETTING_KEYS.get(key, key): value for key, value in entry.items()}
        unknown = set(entry) - CELL_KEYS
        if unknown:
            raise GridConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(CELL_KEYS)}")
        method = entry["method"]
        if method not in METHODS:
            raise GridConfigError(f"{where}: method {method!r} is not one of {METHODS}")
        if method == "base" and any(k in entry for k in EXPANDABLE):
            raise GridConfigError(f"{where}: a base-model cell takes no hyper-parameters")
        if method != "prolora" and any(k in entry for k in PROLORA_KEYS):
            raise GridConfigError(f"{where}: {'/'.join(PROLORA_KEYS)} only apply to method prolora")
        if method != "mos" and any(k in entry for k in MOS_KEYS):
            raise GridConfigError(f"{where}: {'/'.join(MOS_KEYS)} only apply to method mos")
        if method != "base" and "r" not in entry:
            raise GridConfigError(f"{where}: method {method} needs a rank 'r'")
        entry_seeds = entry.get("seeds", seeds)
        if method == "base" and "seeds" in entry:
            raise GridConfigError(f"{where}: a base-model cell has no seed")
        if "seeds" in entry and (not isinstance(entry_seeds, list) or not entry_seeds
                                 or any(not isinstance(x, int) or isinstance(x, bool) for x in entry_seeds)
                                 or not set(entry_seeds) <= set(seeds)):
            raise GridConfigError(f"{where}: seeds must be a non-empty list of the grid's seeds {seeds}, got "
                                  f"{entry_seeds!r}")
        axes = {k: entry[k] if isinstance(entry[k], list) else [entry[k]] for k in EXPANDABLE if k in entry}
        if method == "prolora":
            axes.setdefault("u", [0])
            axes.setdefault("m", [1])
            axes.setdefault("n", [1])
        if method == "mos":
            axes.setdefault("p", [0])
            axes.setdefault("l", [1])
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values))
            check_point(point, where)
            for cell_seed in ([None] if method == "base" else entry_seeds):
                cells.append(Cell(name=entry["name"], method=method, label=entry.get("label", LABELS[method]),
                                  **{switch: entry.get(switch, True) for switch in SWITCHES}, seed=cell_seed,
                                  **point))
    schedules: dict[str, set] = {}
    for cell in cells:
        schedules.setdefault(cell.label, set()).add(cell.schedule)
    mixed = sorted(label for label, found in schedules.items() if len(found) > 1)
    if mixed:  # the tables group runs by label and hyper-parameters, and the schedule is not one of the columns
        raise GridConfigError(f"{source}: label {mixed[0]!r} has cells with different schedules; give each "
                              "schedule's entry its own label")
    cells.sort(key=lambda cell: -1 if cell.seed is None else seeds.index(cell.seed))  # stable: rows keep order
    folders = [cell.folder for cell in cells]
    duplicates = sorted({f for f in folders if folders.count(f) > 1})
    if duplicates:
        raise GridConfigError(f"{source}: cells share folder names {duplicates}; give the entries different 'name's")
    return cells


def check_point(point: dict, where: str) -> None:
    """Types and ranges of one cell's hyper-parameters (r, m, n >= 1; 0 <= u <= r; lr, alpha > 0)."""
    for key, value in point.items():
        if key == "schedule":
            if value not in LR_SCHEDULERS:
                raise GridConfigError(f"{where}: schedule must be one of {LR_SCHEDULERS}, got {value!r}")
        elif key in ("r", "u", "m", "n", "R", "p", "l"):
            low = 0 if key in ("u", "p") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise GridConfigError(f"{where}: {key} must be an integer >= {low}, got {value!r}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise GridConfigError(f"{where}: {key} must be a number > 0, got {value!r}")
    if point.get("u", 0) > point.get("r", point.get("u", 0)):
        raise GridConfigError(f"{where}: u={point['u']} exceeds r={point['r']}")


def check_commands(config: dict) -> None:
    """What ``--dry_run`` adds: every module exists, and every stage's command line passes the module's own parser
    (for the fine-tune also its flag checks, the PEFT config and, for a local model, the adapter geometry)."""
    import contextlib
    import importlib
    import importlib.util
    import io

    # The stages run with the checkout's root first on PYTHONPATH (subprocess_runner); look modules up the same way.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    source = config.get("_source", "grid config")
    for key, allowed in (("merge", {"enabled", "keep_merged", "args"}), ("summary", {"task", "plot_columns"})):
        unknown = set(config.get(key) or {}) - allowed
        if unknown:
            raise GridConfigError(f"{source}: unknown key(s) {sorted(unknown)} in '{key}'; expected some of "
                                  f"{sorted(allowed)}")
    for stage in prepare_stages(config):
        if importlib.util.find_spec(stage.command[2]) is None:
            raise GridConfigError(f"{source}: {stage.name}: no module {stage.command[2]!r}")
    model = config["model"]
    if model != OFFLINE_SMOLLM2 and looks_local(model):
        check_model_source(model, f"{source}: model")
    created = {str(Path(stage.output)) for stage in prepare_stages(config)}
    for key in ("train_file", "eval_file"):
        path = (config.get("train") or {}).get(key)
        if path is not None and str(Path(path)) not in created and not Path(path).is_file():
            raise GridConfigError(f"{source}: train.{key} {path}: no such file (and no prepare step creates it)")
    model_config = Path(model) / "config.json"
    parsed: dict[str, object] = {}
    for cell in expand_cells(config):
        for stage in cell_stages(config, cell, Path(config["output_dir"]) / cell.folder, model):
            where = f"{source}: {cell.folder}/{stage.name}"
            name, argv = stage.command[2], stage.command[3:]
            try:
                found = importlib.util.find_spec(name) is not None
            except ImportError:
                found = False
            if not found:
                raise GridConfigError(f"{where}: no module {name!r}")
            if name not in parsed:
                parsed[name] = importlib.import_module(name)
            module = parsed[name]
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr):
                    args = module.build_parser().parse_args(argv) if hasattr(module, "build_parser") else \
                        module.parse_args(argv) if hasattr(module, "parse_args") else None
                if args is not None and hasattr(module, "validate_args"):
                    module.validate_args(args)
                if args is not None and hasattr(module, "check_adapter_geometry") and model_config.is_file():
                    if getattr(args, "use_lora", False):
                        module.check_adapter_geometry(args, model_config.parent)
            except SystemExit:
                lines = stderr.getvalue().strip().splitlines()
                message = lines[-1] if lines else "rejected by its parser"
                message = re.sub(r" \(see \S+ --help\)$", "", re.sub(r"^(\S+: )?error: ", "", message))
                raise GridConfigError(f"{where}: {message}") from None
            except UsageError as err:
                raise GridConfigError(f"{where}: {err}") from None


def resolve_model(model: str) -> str:
    """`offline:smollm2` -> the packaged SmolLM2 checkpoint folder; anything else unchanged."""
    if model == OFFLINE_SMOLLM2:
        from open_instruct.offline_assets import smollm2_path

        return str(smollm2_path())
    return model


# ---------------------------------------------------------------------------------------------- commands

def cli_flags(options: Optional[dict]) -> list[str]:
    """{key: value} -> ["--key", "value"]; True -> "--key", False/None -> omitted, lists -> several values."""
    flags: list[str] = []
    for key, value in (options or {}).items():
        if value is None or value is False:
            continue
        flags.append(f"--{key}")
        if value is True:
            continue
        flags += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return flags


def cell_stages(config: dict, cell: Cell, cell_dir: Path, model: str) -> list[Stage]:
    """The subprocess commands of one cell, in order."""
    python = [sys.executable, "-m"]
    modules = {**DEFAULT_MODULES, **config.get("modules", {})}
    merge = {"enabled": True, **config.get("merge", {})}
    stages = []
    eval_model_flags = ["--model_name_or_path", model]
    if cell.method != "base":
        train = dict(config.get("train", {}))
        if cell.lr is not None:
            train["learning_rate"] = cell.lr
        if cell.alpha is not None:
            train["lora_alpha"] = cell.alpha
        if cell.schedule is not None:
            train["lr_scheduler_type"] = cell.schedule
        if not REGISTRY[cell.method].has_alpha:
            train.pop("lora_alpha", None)  # VeRA has no alpha
        method_flags = {"use_lora": True, "peft_method": cell.method, "lora_rank": cell.r, "seed": cell.seed}
        if cell.method == "prolora":
            method_flags.update({s.flag: s.flag_value(getattr(cell, SETTING_KEYS[s.field])) for s in PROLORA_SETTINGS})
        if cell.method == "mos":
            method_flags.update({s.flag: s.flag_value(getattr(cell, SETTING_KEYS[s.field])) for s in MOS_SETTINGS
                                 if getattr(cell, SETTING_KEYS[s.field]) is not None})  # R=None: the rank r
        command = [*python, modules["finetune"], "--model_name_or_path", model, "--output_dir", str(cell_dir),
                   "--resume_from_checkpoint", "auto", *cli_flags({**train, **method_flags})]
        stages.append(Stage("finetune", command, cell_dir / "completed"))
        if merge["enabled"]:
            merged = cell_dir / "merged"
            command = [*python, modules["merge"], "--base_model_name_or_path", model,
                       "--lora_model_name_or_path", str(cell_dir), "--output_dir", str(merged), "--overwrite",
                       *cli_flags(merge.get("args"))]
            stages.append(Stage("merge", command, merged / "config.json"))
            eval_model_flags = ["--model_name_or_path", str(merged)]
        else:
            eval_model_flags = ["--model_name_or_path", model, "--adapter_name_or_path", str(cell_dir)]
    for eval_name, spec in (config.get("evals") or {}).items():
        if spec is None:
            continue  # an override (e.g. smoke:) may drop an eval by setting it to null
        save_dir = cell_dir / "eval" / eval_name
        command = [*python, spec["module"], *eval_model_flags, "--save_dir", str(save_dir),
                   *cli_flags({**config.get("eval_args", {}), **spec.get("args", {})})]
        stages.append(Stage(f"eval_{eval_name}", command, save_dir / "metrics.json"))
    return stages


# ---------------------------------------------------------------------------------------------- running

def subprocess_runner(command: list[str], log_file: Path) -> int:
    """Run `command`, appending its stdout+stderr to `log_file`; returns the exit status.

    The checkout's root goes first on PYTHONPATH: `eval` (the evaluation package) is not installed, so
    ``python -m eval.<task>.run_eval`` must find it there whatever the current directory is.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


@functools.cache
def provenance() -> dict:
    """Which code on which machine ran a stage: the checkout's commit (and whether it had uncommitted changes),
    the host's CPU and core count, any CUDA devices, and the versions of Python, torch, transformers and peft.
    Recorded in every stage's ``.grid/<stage>.done`` marker, so a run folder says what produced it even when its
    cells were run in several sessions, on several machines."""
    import platform
    from importlib import metadata

    def git(*arguments: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(REPO_ROOT), *arguments], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text(errors="replace").splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(status) if status is not None else None,
            "host": platform.node(), "cpu": cpu, "cpu_count": len(os.sched_getaffinity(0)),
            "cuda_visible_devices": gpus, "python": platform.python_version(),
            **{package: version(package) for package in ("torch", "transformers", "peft", "accelerate")}}


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def stage_done(stage: Stage, cell_dir: Path) -> bool:
    """A stage is done when its marker says it succeeded and its output is still there."""
    return (cell_dir / ".grid" / f"{stage.name}.done").is_file() and stage.output.exists()


CPU_SHARE = "cpu"  # a device named ``cpu<i>:<threads>`` is a share of the CPU cores, not a GPU (`cpu_shares`)


def cpu_shares(workers: int, cores: Optional[int] = None) -> list[str]:
    """`workers` CPU "devices" for `run_grid`: ``cpu0:T``, ``cpu1:T``, ... with T = cores // workers (at least 1).

    On a machine without GPUs, small models use two cores poorly from one process (a 135M model's matmuls are too
    small to split well), so two cells side by side with one thread each train faster than one after another."""
    cores = cores or os.cpu_count() or 1
    threads = max(1, cores // workers)
    return [f"{CPU_SHARE}{index}:{threads}" for index in range(workers)]


def on_device(command: list[str], device: Optional[str]) -> list[str]:
    """`command` run on `device`: a GPU id -> only that GPU visible (``env CUDA_VISIBLE_DEVICES=<id> ...``); a CPU
    share ``cpu<i>:<T>`` -> no GPU and T threads (OMP/MKL_NUM_THREADS); unchanged for None."""
    if device is None:
        return command
    if device.startswith(CPU_SHARE):
        threads = device.split(":", 1)[1]
        return ["env", "CUDA_VISIBLE_DEVICES=", f"OMP_NUM_THREADS={threads}", f"MKL_NUM_THREADS={threads}", *command]
    return ["env", f"CUDA_VISIBLE_DEVICES={device}", *command]


def run_stage(stage: Stage, cell_dir: Path, runner: Runner, result: GridResult, device: Optional[str] = None) -> bool:
    """Run one stage unless already done (on `device` when given); True when its output is in place afterwards."""
    marker_dir = cell_dir / ".grid"
    done, failed = marker_dir / f"{stage.name}.done", marker_dir / f"{stage.name}.failed"
    if stage_done(stage, cell_dir):
        result.add(skipped=1)
        return True
    done.unlink(missing_ok=True)
    log_file = cell_dir / "logs" / f"{stage.name}.log"
    logger.info("%s: %s%s", cell_dir.name, stage.name, "" if device is None else f" (device {device})")
    started = time.time()
    command = on_device(stage.command, device)
    status = runner(command, log_file)
    result.add(run=1)
    record = {"command": command, "exit_status": status, "seconds": round(time.time() - started, 1),
              "provenance": provenance()}
    if status == 0 and stage.output.exists():
        failed.unlink(missing_ok=True)
        write_json(done, record)
        return True
    reason = f"exit status {status}" if status != 0 else f"finished without writing {stage.output}"
    write_json(failed, {**record, "reason": reason, "log_tail": _tail(log_file)})
    message = f"{cell_dir.name}/{stage.name}: {reason} (log: {log_file})"
    logger.error(message)
    result.add(failure=message)
    return False


def prepare_stages(config: dict) -> list[Stage]:
    """The one-off ``prepare`` commands (e.g. building the data), done once for the whole grid."""
    stages = []
    for index, spec in enumerate(config.get("prepare") or []):
        if not isinstance(spec, dict) or "module" not in spec or "creates" not in spec:
            raise GridConfigError(f"{config.get('_source')}: prepare[{index}] needs 'module' and 'creates'")
        command = [sys.executable, "-m", spec["module"], *[str(a) for a in spec.get("positional", [])],
                   *cli_flags(spec.get("args"))]
        stages.append(Stage(f"prepare_{index}", command, Path(spec["creates"])))
    return stages


def run_cell(config: dict, cell: Cell, output_dir: Path, model: str, runner: Runner, result: GridResult,
             device: Optional[str] = None) -> bool:
    """Run one cell's stages in order (finished ones skipped), on `device` when given; True when all are done.

    A failed fine-tune or merge skips the cell's later stages; a failed eval only itself."""
    cell_dir = output_dir / cell.folder
    write_json(cell_dir / "run_config.json", run_config(config, cell))
    stages = cell_stages(config, cell, cell_dir, model)
    evals = [stage for stage in stages if stage.name.startswith("eval_")]
    all_done = True
    for stage in stages:
        if stage.name == "merge" and evals and all(stage_done(s, cell_dir) for s in evals):
            result.add(skipped=1)
            continue  # every eval is done: the merged model is not needed (again)
        if not run_stage(stage, cell_dir, runner, result, device):
            all_done = False
            if stage not in evals:
                break  # later stages need this one; evals are independent of each other
    if all_done and not config.get("merge", {}).get("keep_merged", True) and (cell_dir / "merged").is_dir():
        shutil.rmtree(cell_dir / "merged")
    return all_done


def run_prepare(config: dict, output_dir: Path, runner: Runner, result: GridResult) -> bool:
    """The grid's ``prepare`` stages (each skipped when done); True when all are done."""
    output_dir.mkdir(parents=True, exist_ok=True)
    return all(run_stage(stage, output_dir, runner, result) for stage in prepare_stages(config))


def find_cell(cells: list[Cell], selector: str, source: str = "grid config") -> Cell:
    """The cell named by `selector`: its index in the grid's order (0-based, as ``cells.txt``) or its folder name."""
    if selector.isdigit():
        if int(selector) >= len(cells):
            raise GridConfigError(f"--cell {selector}: {source} has {len(cells)} cells (indices 0-{len(cells) - 1})")
        return cells[int(selector)]
    for cell in cells:
        if cell.folder == selector:
            return cell
    raise GridConfigError(f"--cell {selector}: no such cell in {source} (an index, or a folder such as "
                          f"{cells[0].folder})")


def run_cells_on_devices(config: dict, cells: list[Cell], output_dir: Path, model: str, runner: Runner,
                         result: GridResult, devices: list[str]) -> None:
    """Run `cells` in a pool of ``len(devices)`` threads: each cell takes a free device for all its stages and hands
    it back when it ends, so no two running cells share one. The first exception a cell raises (a bug, or a runner
    interrupted) cancels the cells not yet started and is raised here once the running ones have ended."""
    free: queue.Queue[str] = queue.Queue()
    for device in devices:
        free.put(device)

    def on_free_device(cell: Cell) -> bool:
        device = free.get()
        try:
            return run_cell(config, cell, output_dir, model, runner, result, device)
        finally:
            free.put(device)

    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="grid-device") as pool:
        futures = [pool.submit(on_free_device, cell) for cell in cells]
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="grid cells", unit="cell"):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def run_grid(config: dict, runner: Runner = subprocess_runner, summarize: bool = True, dry_run: bool = False,
             devices: Optional[list[str]] = None, only: Optional[str] = None) -> GridResult:
    """Run every cell of a loaded grid config (see the module docstring); returns counts and failures.

    `devices` (e.g. ``["0", "1"]``): run the cells in parallel, one per device at a time. `only` (an index or a
    folder, see `find_cell`): run just that cell (after the prepare stages, skipped when done) and no summary."""
    output_dir = Path(config["output_dir"])
    cells = expand_cells(config)
    if only is not None:
        cells = [find_cell(cells, only, config.get("_source", "grid config"))]
        summarize = False
    result = GridResult(cells=len(cells))
    if dry_run:
        check_commands(config)
        for stage in prepare_stages(config):
            print(f"[prepare] {stage.name}: {' '.join(stage.command)}")
        for cell in cells:
            for stage in cell_stages(config, cell, output_dir / cell.folder, config["model"]):
                print(f"[{cell.folder}] {stage.name}: {' '.join(stage.command)}")
        return result
    if not run_prepare(config, output_dir, runner, result):
        return result  # every cell needs what prepare builds
    model = resolve_model(config["model"])
    if devices:
        run_cells_on_devices(config, cells, output_dir, model, runner, result, devices)
    else:
        for cell in tqdm(cells, desc="grid cells", unit="cell"):
            run_cell(config, cell, output_dir, model, runner, result)
    if summarize:
        write_summary(config, output_dir)
    if result.failures:
        logger.error("%d stage(s) failed:\n  %s", len(result.failures), "\n  ".join(result.failures))
    return result


def run_config(config: dict, cell: Cell) -> dict:
    """What `run_config.json` records of a cell: its identity with the effective learning rate and alpha."""
    record = {**asdict(cell), "model": config["model"], "grid": config.get("name")}
    if cell.method != "base":
        train = config.get("train", {})
        record["lr"] = cell.lr if cell.lr is not None else train.get("learning_rate")
        if REGISTRY[cell.method].has_alpha:
            record["alpha"] = cell.alpha if cell.alpha is not None else train.get("lora_alpha")
        record["schedule"] = cell.schedule or train.get("lr_scheduler_type", DEFAULT_LR_SCHEDULER)
    return record


def write_summary(config: dict, output_dir: Path) -> None:
    """Summary tables and plots of everything under `output_dir` into `<output_dir>/summary/`."""
    from open_instruct.paper import plots, summarize

    settings = config.get("summary", {})
    task_name = settings.get("task", "paper")
    summary_dir = output_dir / "summary"
    try:
        print(summarize.summarize([output_dir], task_name, summary_dir))
    except ValueError as err:  # e.g. nothing finished yet
        logger.warning("no summary: %s", err)
        return
    runs = [summarize.read_run(p) for p in summarize.find_run_dirs([output_dir])]
    task = summarize.TASKS[task_name]
    rows = summarize.summarize_runs(runs, task)
    for column in settings.get("plot_columns", list(task.columns)):
        safe = "".join(ch if ch.isalnum() else "_" for ch in column)
        plots.plot_efficiency(rows, column, summary_dir / f"efficiency_{safe}.png")
    curves = [(f"{run.label} sd{run.seed}", run.path) for run in runs if not run.partial and run.label != "base model"]
    plots.plot_loss_curves(curves, summary_dir / "loss_curves.png")
