"""Scaling a grid out: cells in parallel on a device list, one cell per run (`--cell`), and Slurm job files.

Stages are stand-ins (a fake runner, or a tiny module run as a real subprocess) so each test takes seconds; what is
checked is the scheduling: every cell once, one device per cell, no device shared by two running cells, and a
killed runner resuming without redoing finished stages.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from open_instruct.paper.grid import expand_cells, load_config, run_grid

REPO = Path(__file__).resolve().parents[1]
RUN_GRID = REPO / "scripts" / "run_grid.py"

GRID = {
    "name": "scale",
    "model": "m",
    "seeds": [1, 2],
    "evals": {"a": {"module": "eval.gsm.run_eval"}, "b": {"module": "eval.bbh.run_eval"}},
    "methods": [{"name": "base", "method": "base"}, {"name": "lora", "method": "lora", "r": [2, 4, 8]},
                {"name": "pro", "method": "prolora", "r": 4, "u": 1, "m": 2, "n": 2}],
    "summary": {"task": "mini"},
}


def write_grid(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**grid, "output_dir": str(tmp_path / "out")}))
    return path


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


class DeviceRecorder:
    """A runner that records which device each stage saw and when it ran, and writes the stage's output."""

    def __init__(self, seconds: float = 0.03, raise_after: int | None = None):
        self.seconds, self.raise_after = seconds, raise_after
        self.stages: list[tuple[str, str, str | None, float, float]] = []  # cell, stage, device, start, end
        self.lock = threading.Lock()
        self.calls = 0

    def __call__(self, command: list[str], log_file: Path) -> int:
        with self.lock:
            self.calls += 1
            if self.raise_after is not None and self.calls > self.raise_after:
                raise KeyboardInterrupt  # as a runner interrupted mid-grid
        device = None
        if command[0] == "env":
            assigned = dict(arg.split("=", 1) for arg in command[1:] if "=" in arg and not arg.startswith("-"))
            device = assigned.get("CUDA_VISIBLE_DEVICES")
        start = time.monotonic()
        time.sleep(self.seconds)
        if "--save_dir" in command:
            out = Path(flag(command, "--save_dir"))
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps({"exact_match": 0.5}))
        elif "--lora_model_name_or_path" in command:
            out = Path(flag(command, "--output_dir"))
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text("{}")
        else:
            out = Path(flag(command, "--output_dir"))
            (out / "all_results.json").write_text(json.dumps({"trainable_params": 3, "eval_loss": 1.0}))
            (out / "completed").write_text("")
        with self.lock:
            self.stages.append((log_file.parent.parent.name, log_file.stem, device, start, time.monotonic()))
        return 0


def stage_count(config: dict) -> int:
    return sum(2 if cell.method == "base" else 4 for cell in expand_cells(config))


def test_cells_run_in_parallel_one_per_device(tmp_path):
    config = load_config(write_grid(tmp_path, GRID))
    devices = ["0", "1", "2", "3"]
    runner = DeviceRecorder()
    result = run_grid(config, runner=runner, summarize=False, devices=devices)
    cells = [cell.folder for cell in expand_cells(config)]
    assert not result.failures and result.stages_run == stage_count(config) == len(runner.stages)
    ran = [(cell, stage) for cell, stage, *_ in runner.stages]
    assert len(set(ran)) == len(ran) and {cell for cell, _ in ran} == set(cells)  # every stage once, every cell
    spans = {}
    for cell in cells:
        seen = {device for c, _, device, _, _ in runner.stages if c == cell}
        assert len(seen) == 1 and seen <= set(devices), (cell, seen)  # all of a cell's stages on one listed device
        times = [(start, end) for c, _, _, start, end in runner.stages if c == cell]
        spans[cell] = (seen.pop(), min(s for s, _ in times), max(e for _, e in times))
    for (a, (dev_a, start_a, end_a)), (b, (dev_b, start_b, end_b)) in itertools.combinations(spans.items(), 2):
        if start_a < end_b and start_b < end_a:
            assert dev_a != dev_b, f"{a} and {b} ran at the same time on device {dev_a}"
    most = max(sum(1 for _, s, e in spans.values() if s <= t < e) for _, t, _ in spans.values())
    assert most > 1, "no two cells ever ran at the same time"
    assert len({device for device, _, _ in spans.values()}) == len(devices)


def test_serial_run_sets_no_device(tmp_path):
    config = load_config(write_grid(tmp_path, GRID))
    runner = DeviceRecorder(seconds=0)
    run_grid(config, runner=runner, summarize=False)
    assert {device for _, _, device, _, _ in runner.stages} == {None}


def test_interrupted_pool_resumes_and_runs_each_stage_once(tmp_path):
    config = load_config(write_grid(tmp_path, GRID))
    first = DeviceRecorder(raise_after=9)
    with pytest.raises(KeyboardInterrupt):
        run_grid(config, runner=first, summarize=False, devices=["0", "1", "2"])
    assert 0 < len(first.stages) < stage_count(config)
    second = DeviceRecorder(seconds=0)
    result = run_grid(config, runner=second, summarize=False, devices=["0", "1", "2"])
    done_before = {(cell, stage) for cell, stage, *_ in first.stages}
    done_after = [(cell, stage) for cell, stage, *_ in second.stages]
    assert not done_before & set(done_after) and len(done_after) == len(set(done_after))
    assert len(done_before) + len(done_after) == stage_count(config) and not result.failures
    assert result.stages_skipped == len(done_before)


# ------------------------------------------------------------------ real subprocesses: run_grid.py itself

STANDIN = Path(__file__).parent / "helpers" / "standin_stage.py"  # every stage of the stand-in grids


@pytest.fixture
def standin_grid(tmp_path, monkeypatch):
    """A grid whose every stage (prepare, finetune, merge, one eval) is the stand-in module above."""
    package = tmp_path / "standins"
    package.mkdir()
    shutil.copy(STANDIN, package / "standin_stage.py")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(package), str(REPO)]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    grid = {"name": "standin", "model": "m", "seeds": [1, 2],
            "prepare": [{"module": "standin_stage", "args": {"make": str(tmp_path / "data.txt")},
                         "creates": str(tmp_path / "data.txt")}],
            "modules": {"finetune": "standin_stage", "merge": "standin_stage"},
            "evals": {"a": {"module": "standin_stage"}}, "summary": {"task": "mini"},
            "methods": [{"name": "base", "method": "base"}, {"name": "lora", "method": "lora", "r": [2, 4]}]}
    return write_grid(tmp_path, grid)


def events(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run_script(*args: str, cwd: Path, events_file: Path, seconds: float = 0, **kwargs):
    env = {**os.environ, "STANDIN_EVENTS": str(events_file), "STANDIN_SECONDS": str(seconds)}
    return subprocess.run([sys.executable, str(RUN_GRID), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_killed_runner_resumes_without_redoing_finished_stages(standin_grid, tmp_path):
    """SIGKILL to a real `run_grid.py --devices 0,1` (and its stages) mid-grid; the rerun finishes every stage, runs
    none of those whose markers were written, and each unfinished one exactly once."""
    first = tmp_path / "first.jsonl"
    env = {**os.environ, "STANDIN_EVENTS": str(first), "STANDIN_SECONDS": "0.4"}
    proc = subprocess.Popen([sys.executable, str(RUN_GRID), str(standin_grid), "--devices", "0,1", "--no_summary"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while sum(e[0] == "end" for e in events(first)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    out = tmp_path / "out"
    config = load_config(standin_grid)
    stages = {(cell.folder, name) for cell in expand_cells(config)
              for name in (["eval"] if cell.method == "base" else ["finetune", "merge", "eval"])}
    marked = {(d.parent.name, re.sub(r"^eval_.*", "eval", f.name.removesuffix(".done")))
              for d in out.glob("*/.grid") for f in d.glob("*.done")}
    assert 0 < len(marked & stages) < len(stages), "the kill should land mid-grid"

    second = tmp_path / "second.jsonl"
    proc = run_script(str(standin_grid), "--devices", "0,1", "--no_summary", cwd=tmp_path, events_file=second)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rerun = [(cell, stage) for kind, cell, stage, _ in events(second) if kind == "end"]
    assert not set(rerun) & marked  # a stage with its marker is never run again
    assert sorted(rerun) == sorted(stages - marked)  # the others exactly once
    assert {device for _, _, _, device in events(first) + events(second) if device is not None} <= {"0", "1"}


def test_one_cell_by_index_or_folder(standin_grid, tmp_path):
    cells = [cell.folder for cell in expand_cells(load_config(standin_grid))]
    log = tmp_path / "events.jsonl"
    proc = run_script(str(standin_grid), "--cell", "2", cwd=tmp_path, events_file=log)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [(e[1], e[2]) for e in events(log) if e[0] == "end"] == [
        ("prepare", "prepare"), (cells[2], "finetune"), (cells[2], "merge"), (cells[2], "eval")]
    assert not (tmp_path / "out" / "summary").exists()
    log.unlink()
    proc = run_script(str(standin_grid), "--cell", cells[1], cwd=tmp_path, events_file=log)
    assert proc.returncode == 0 and {e[1] for e in events(log)} == {cells[1]}  # prepare is done: skipped
    for bad in ("9", "nope_sd1"):
        proc = run_script(str(standin_grid), "--cell", bad, cwd=tmp_path, events_file=log)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and bad in errors[0], proc.stderr


@pytest.mark.parametrize("devices, fragment", [("0,,1", "'0,,1'"), ("", "''"), ("0,1,0", "device '0' appears twice"),
                                               ("2,2", "device '2' appears twice")])
def test_bad_device_list_is_one_line_before_heavy_imports(devices, fragment, tmp_path):
    probe = ("import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    heavy = [m for m in ('torch', 'transformers', 'peft', 'yaml', "
             "'open_instruct.paper.grid') if m in sys.modules]\n    print(f'exit={e.code} heavy={heavy}', "
             "file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe, str(RUN_GRID), "no/such.yaml", "--devices", devices],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                                        "PYTHONPATH": str(REPO)})
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "exit=2 heavy=[]", proc.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "--devices" in errors[0] and fragment in errors[0], proc.stderr


# ------------------------------------------------------------------------------------------------ Slurm files

FAKE_SBATCH = """#!/bin/bash
# records its arguments; prints a job id the way `sbatch --parsable` does (id;cluster)
n=$(( $(wc -l < "$SBATCH_CALLS" 2>/dev/null || echo 0) + 101 ))
echo "$*" >> "$SBATCH_CALLS"
echo "$n;testcluster"
"""


def test_emitted_slurm_files(standin_grid, tmp_path):
    """The array covers the cells, task i runs cells.txt line i+1 (each task's script run here with bash plays the
    cell), and submit.sh chains prepare -> cells (afterok) -> summary (afterany) through `sbatch --parsable`."""
    emit = tmp_path / "slurm"
    log = tmp_path / "events.jsonl"
    proc = run_script(str(standin_grid), "--emit_slurm", str(emit), "--gpus_per_cell", "1", "--max_running", "2",
                      cwd=tmp_path, events_file=log)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not log.exists() and not (tmp_path / "out").exists()  # nothing ran
    cells = [cell.folder for cell in expand_cells(load_config(standin_grid))]
    assert (emit / "cells.txt").read_text().splitlines() == cells
    array = (emit / "cells.sbatch").read_text()
    assert f"#SBATCH --array=0-{len(cells) - 1}%2\n" in array and "#SBATCH --gres=gpu:1\n" in array
    assert f"#SBATCH --output={emit}/logs/cell_%A_%a.out" in array and f"#SBATCH --chdir={tmp_path}" in array

    env = {**os.environ, "STANDIN_EVENTS": str(log)}
    for script in ("prepare.sbatch",):
        assert subprocess.run(["bash", str(emit / script)], env=env, timeout=120).returncode == 0
    for index in reversed(range(len(cells))):  # any order: each index picks its own line
        log.unlink(missing_ok=True)
        task = subprocess.run(["bash", str(emit / "cells.sbatch")], env={**env, "SLURM_ARRAY_TASK_ID": str(index)},
                              capture_output=True, text=True, timeout=120)
        assert task.returncode == 0, task.stderr[-2000:]
        assert {e[1] for e in events(log)} == {cells[index]}
    task = subprocess.run(["bash", str(emit / "cells.sbatch")], env={**env, "SLURM_ARRAY_TASK_ID": str(len(cells))},
                          capture_output=True, text=True, timeout=60)
    assert task.returncode == 2 and "error: no line" in task.stderr
    assert subprocess.run(["bash", str(emit / "summary.sbatch")], env=env, capture_output=True,
                          timeout=120).returncode == 0
    assert (tmp_path / "out" / "summary" / "summary_mini.md").is_file()

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    calls = tmp_path / "calls.txt"
    submit = subprocess.run(["bash", str(emit / "submit.sh"), "--partition=debug"], capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_CALLS": str(calls)},
                            timeout=60)
    assert submit.returncode == 0, submit.stderr
    prepare, array_job, summary = calls.read_text().splitlines()
    assert prepare == f"--parsable --partition=debug {emit}/prepare.sbatch"
    assert array_job == f"--parsable --partition=debug --dependency=afterok:101 --kill-on-invalid-dep=yes " \
                        f"{emit}/cells.sbatch"
    assert summary == f"--parsable --partition=debug --dependency=afterany:102 {emit}/summary.sbatch"
    assert "cells array job 102" in submit.stdout and "summary job 103" in submit.stdout


def test_emit_flags_without_emit_are_refused(standin_grid, tmp_path):
    proc = run_script(str(standin_grid), "--max_running", "2", cwd=tmp_path, events_file=tmp_path / "e")
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "--emit_slurm" in proc.stderr


@pytest.mark.slurm
def test_real_slurm_runs_the_emitted_jobs(tmp_path):
    """scripts/slurm_check.sh: a one-node Slurm on localhost runs the emitted jobs of a stand-in grid; every cell
    finishes and the summary job starts after the last cell ended."""
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("no Slurm here (apt-get install slurm-wlm munge; needs root to start the daemons)")
    if os.geteuid() != 0:
        pytest.skip("scripts/slurm_check.sh starts munged, slurmctld and slurmd: needs root")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_check.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "slurm_check: OK" in proc.stdout


def test_cpu_shares_split_the_cores_and_run_without_gpus():
    """--cpu_workers K: K CPU "devices", each a command with no visible GPU and cores // K threads."""
    from open_instruct.paper.grid import cpu_shares, on_device

    assert cpu_shares(2, cores=2) == ["cpu0:1", "cpu1:1"]
    assert cpu_shares(3, cores=8) == ["cpu0:2", "cpu1:2", "cpu2:2"]
    assert cpu_shares(4, cores=2) == ["cpu0:1", "cpu1:1", "cpu2:1", "cpu3:1"]  # never zero threads
    assert on_device(["python", "x.py"], "cpu1:3") == ["env", "CUDA_VISIBLE_DEVICES=", "OMP_NUM_THREADS=3",
                                                        "MKL_NUM_THREADS=3", "python", "x.py"]
    assert on_device(["python"], "1") == ["env", "CUDA_VISIBLE_DEVICES=1", "python"]
    assert on_device(["python"], None) == ["python"]


def test_cpu_workers_run_the_grid_two_cells_at_a_time(standin_grid, tmp_path):
    """A real run_grid.py --cpu_workers 2 on the stand-in grid: every cell stage sees no GPU, each runs once, and
    two cells overlap in time."""
    log = tmp_path / "events.jsonl"
    proc = run_script(str(standin_grid), "--cpu_workers", "2", "--no_summary", cwd=tmp_path, events_file=log,
                      seconds=0.3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cell_events = [e for e in events(log) if e[2] != "prepare"]
    assert cell_events and all(e[3] == "" for e in cell_events), cell_events  # CUDA_VISIBLE_DEVICES emptied
    ends = [(e[1], e[2]) for e in cell_events if e[0] == "end"]
    assert len(ends) == len(set(ends)) == sum(1 if c.method == "base" else 3
                                              for c in expand_cells(load_config(standin_grid)))
    running, most = 0, 0
    for kind, *_ in cell_events:  # the events file is appended in time order
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2


@pytest.mark.parametrize("extra", [["--devices", "0"], ["--dry_run"]])
def test_cpu_workers_refuse_other_parallel_modes(extra, tmp_path):
    proc = subprocess.run([sys.executable, str(RUN_GRID), "no/such.yaml", "--cpu_workers", "2", *extra],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "--cpu_workers" in proc.stderr, proc.stderr
