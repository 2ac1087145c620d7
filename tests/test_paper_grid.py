"""The grid runner: cell expansion, command lines, resuming after an interruption, failures, base-model cells."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from open_instruct.paper.grid import (
    Cell,
    GridConfigError,
    cell_stages,
    cli_flags,
    expand_cells,
    load_config,
    read_yaml,
    run_grid,
)

GRID = {
    "name": "test",
    "model": "base-model-path",
    "seeds": [1, 2],
    "train": {"train_file": "train.jsonl", "learning_rate": 1e-4, "lora_alpha": 16, "with_tracking": True,
              "eval_steps": None},
    "merge": {"args": {"save_tokenizer": True}},
    "eval_args": {"use_chat_format": True},
    "evals": {"asdiv": {"module": "eval.gsm.run_eval", "args": {"n_shot": 0}},
              "bigbench": {"module": "eval.bbh.run_eval", "args": {"no_cot": True}}},
    "methods": [
        {"name": "base", "method": "base"},
        {"name": "lora", "method": "lora", "r": [4, 8]},
        {"name": "prolora", "method": "prolora", "r": 8, "u": 1, "m": 2, "n": 2, "lr": [1e-4, 3e-4]},
        {"name": "clora", "method": "prolora", "r": 8, "u": 1, "m": 2, "n": 2, "rotation": False, "label": "CLoRA"},
        {"name": "vera", "method": "vera", "r": 64},
    ],
    "summary": {"task": "mini"},
    "smoke": {"seeds": [1], "train": {"max_train_steps": 2}, "evals": {"bigbench": None}},
}


def write_grid(tmp_path, grid=None) -> Path:
    grid = dict(grid or GRID)
    grid["output_dir"] = str(tmp_path / "out")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


class FakeStages:
    """Stands in for finetune / merge / evals: writes what each real stage would leave behind."""

    def __init__(self, fail_on=None, interrupt_after=None):
        self.calls: list[tuple[str, str]] = []  # (cell folder, module)
        self.fail_on, self.interrupt_after = fail_on, interrupt_after

    def __call__(self, command: list[str], log_file: Path) -> int:
        module = command[command.index("-m") + 1]
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt
        cell = log_file.parent.parent.name
        self.calls.append((cell, module))
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text("fake stage log\n")
        if self.fail_on and self.fail_on(cell, module):
            return 3
        if module == "open_instruct.finetune":
            out = Path(flag(command, "--output_dir"))
            seed = int(flag(command, "--seed"))
            (out / "all_results.json").write_text(json.dumps(
                {"trainable_params": 1000 * int(flag(command, "--lora_rank")), "eval_loss": 1.0 + seed / 10}))
            (out / "completed").write_text("")
        elif module == "open_instruct.merge_lora":
            out = Path(flag(command, "--output_dir"))
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text("{}")
        else:
            save_dir = Path(flag(command, "--save_dir"))
            save_dir.mkdir(parents=True, exist_ok=True)
            key = "exact_match" if module == "eval.gsm.run_eval" else "average_exact_match"
            (save_dir / "metrics.json").write_text(json.dumps({key: 0.25}))
        return 0


def test_expansion_and_folder_names(tmp_path):
    cells = expand_cells(load_config(write_grid(tmp_path)))
    folders = [cell.folder for cell in cells]
    # base once; lora 2 ranks x 2 seeds; prolora 2 lrs x 2 seeds; clora 2 seeds; vera 2 seeds
    assert len(cells) == 1 + 4 + 4 + 2 + 2
    # seed by seed: base, then every row with seed 1, then with seed 2 (a stopped grid has whole rows)
    assert folders[:3] == ["base", "lora_r4_sd1", "lora_r8_sd1"]
    assert [cell.seed for cell in cells[1:]] == [1] * 6 + [2] * 6
    assert "prolora_r8_u1_m2n2_lr0.0003_sd2" in folders and "clora_r8_u1_m2n2_sd1" in folders
    assert len(set(folders)) == len(folders)
    smoke = expand_cells(load_config(write_grid(tmp_path), smoke=True))
    assert all(cell.seed in (None, 1) for cell in smoke)


def test_commands_match_the_real_parsers(tmp_path):
    """The generated finetune / merge / eval command lines are accepted by the modules' own argparse."""
    from eval.bbh.run_eval import build_parser as bbh_parser
    from eval.gsm.run_eval import build_parser as gsm_parser
    from open_instruct.finetune import parse_args as finetune_args
    from open_instruct.merge_lora import parse_args as merge_args

    config = load_config(write_grid(tmp_path))
    cell = Cell("clora", "prolora", "CLoRA", r=8, u=1, m=2, n=2, lr=3e-4, rotation=False, seed=2)
    stages = {s.name: s.command for s in cell_stages(config, cell, tmp_path / "cell", "base-model-path")}
    assert list(stages) == ["finetune", "merge", "eval_asdiv", "eval_bigbench"]
    args = finetune_args(stages["finetune"][3:])
    assert (args.peft_method, args.lora_rank, args.unshared_r, args.reduce_lora_A_x, args.reduce_lora_B_x) == \
        ("prolora", 8, 1, 2, 2)
    assert args.use_lora and args.no_lora_rotation and not args.no_rectified_init and args.with_tracking
    assert args.learning_rate == 3e-4 and args.seed == 2 and args.resume_from_checkpoint == "auto"
    merge = merge_args(stages["merge"][3:])
    assert merge.output_dir == str(tmp_path / "cell" / "merged") and merge.save_tokenizer
    gsm = gsm_parser().parse_args(stages["eval_asdiv"][3:])
    assert gsm.model_name_or_path == str(tmp_path / "cell" / "merged") and gsm.n_shot == 0 and gsm.use_chat_format
    assert bbh_parser().parse_args(stages["eval_bigbench"][3:]).no_cot

    vera = {s.name: s.command for s in cell_stages(config, Cell("vera", "vera", "VeRA", r=64, seed=1), tmp_path, "m")}
    assert "--lora_alpha" not in vera["finetune"] and "--unshared_r" not in vera["finetune"]
    base = cell_stages(config, Cell("base", "base", "base model"), tmp_path / "base", "base-model-path")
    assert [s.name for s in base] == ["eval_asdiv", "eval_bigbench"]
    assert flag(base[0].command, "--model_name_or_path") == "base-model-path"

    unmerged = {**config, "merge": {"enabled": False}}
    stages = cell_stages(unmerged, cell, tmp_path / "cell", "base-model-path")
    assert [s.name for s in stages] == ["finetune", "eval_asdiv", "eval_bigbench"]
    assert flag(stages[1].command, "--adapter_name_or_path") == str(tmp_path / "cell")


def test_resumes_after_interruption_without_redoing_finished_stages(tmp_path):
    config = load_config(write_grid(tmp_path))
    first = FakeStages(interrupt_after=9)
    with pytest.raises(KeyboardInterrupt):
        run_grid(config, runner=first, summarize=False)
    done_before = set(first.calls)
    second = FakeStages()
    result = run_grid(config, runner=second, summarize=False)
    assert not done_before & set(second.calls)  # nothing finished is run again
    total = 2 + 12 * 4  # base: 2 evals; 12 trained cells: finetune, merge, 2 evals
    assert len(first.calls) + len(second.calls) == total and result.stages_run == len(second.calls)
    third = FakeStages()
    result = run_grid(config, runner=third, summarize=True)
    assert third.calls == [] and not result.failures
    table = (Path(config["output_dir"]) / "summary" / "summary_mini.md").read_text()
    assert "| CLoRA |" in table and "| base model |" in table and "25.00" in table


def test_failure_is_logged_and_the_grid_goes_on(tmp_path):
    config = load_config(write_grid(tmp_path))
    broken = FakeStages(fail_on=lambda cell, module: cell == "lora_r8_sd1" and module == "open_instruct.finetune")
    result = run_grid(config, runner=broken, summarize=False)
    assert len(result.failures) == 1 and "lora_r8_sd1/finetune: exit status 3" in result.failures[0]
    failed = json.loads((Path(config["output_dir"]) / "lora_r8_sd1" / ".grid" / "finetune.failed").read_text())
    assert failed["exit_status"] == 3 and "fake stage log" in failed["log_tail"]
    assert ("lora_r8_sd1", "open_instruct.merge_lora") not in broken.calls  # rest of that cell skipped
    assert ("lora_r8_sd2", "open_instruct.merge_lora") in broken.calls  # other cells ran
    retry = FakeStages()
    assert not run_grid(config, runner=retry, summarize=False).failures
    assert {cell for cell, _ in retry.calls} == {"lora_r8_sd1"} and len(retry.calls) == 4


def test_deleted_output_makes_a_stage_run_again(tmp_path):
    config = load_config(write_grid(tmp_path))
    run_grid(config, runner=FakeStages(), summarize=False)
    (Path(config["output_dir"]) / "vera_r64_sd1" / "eval" / "asdiv" / "metrics.json").unlink()
    rerun = FakeStages()
    run_grid(config, runner=rerun, summarize=False)
    assert rerun.calls == [("vera_r64_sd1", "eval.gsm.run_eval")]  # merged/ still there: no re-merge needed


def test_stage_exiting_zero_without_output_counts_as_failed(tmp_path):
    config = load_config(write_grid(tmp_path, {**GRID, "methods": [{"name": "base", "method": "base"}]}))
    result = run_grid(config, runner=lambda command, log: 0, summarize=False)
    assert len(result.failures) == 2 and "finished without writing" in result.failures[0]


def test_real_subprocesses_with_stand_in_modules(tmp_path, monkeypatch):
    """The default runner, end to end: stand-in modules on PYTHONPATH play finetune, merge and an eval."""
    package = tmp_path / "standins"
    package.mkdir()
    (package / "fake_stage.py").write_text(
        "import json, sys, pathlib\n"
        "argv = sys.argv[1:]\n"
        "def get(name):\n    return argv[argv.index(name) + 1]\n"
        "if '--save_dir' in argv:\n"
        "    out = pathlib.Path(get('--save_dir')); out.mkdir(parents=True)\n"
        "    (out / 'metrics.json').write_text(json.dumps({'exact_match': 0.5}))\n"
        "elif '--lora_model_name_or_path' in argv:\n"
        "    out = pathlib.Path(get('--output_dir')); out.mkdir(parents=True); (out / 'config.json').write_text('{}')\n"
        "else:\n"
        "    out = pathlib.Path(get('--output_dir'))\n"
        "    (out / 'all_results.json').write_text(json.dumps({'trainable_params': 7, 'eval_loss': 2.5}))\n"
        "    (out / 'completed').write_text('')\n"
        "print('stand-in ran', argv[:2])\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(package), *sys.path]))
    grid = {"name": "real", "model": "m", "seeds": [5], "modules": {"finetune": "fake_stage", "merge": "fake_stage"},
            "evals": {"asdiv": {"module": "fake_stage"}}, "summary": {"task": "mini"},
            "methods": [{"name": "base", "method": "base"}, {"name": "tied", "method": "tied_lora", "r": 2}]}
    config = load_config(write_grid(tmp_path, grid))
    result = run_grid(config)
    assert not result.failures and result.stages_run == 4
    out = Path(config["output_dir"])
    assert "stand-in ran" in (out / "tied_r2_sd5" / "logs" / "finetune.log").read_text()
    assert json.loads((out / "tied_r2_sd5" / "run_config.json").read_text())["label"] == "Tied-LoRA"
    assert "| Tied-LoRA |" in (out / "summary" / "summary_mini.md").read_text()


@pytest.mark.parametrize("change, message", [
    ({"methods": [{"name": "x", "method": "dora", "r": 8}]}, "method 'dora' is not one of"),
    ({"methods": [{"name": "x", "method": "lora"}]}, "needs a rank 'r'"),
    ({"methods": [{"name": "x", "method": "lora", "r": 8, "u": 1}]}, "only apply to method prolora"),
    ({"methods": [{"name": "x", "method": "base", "r": 8}]}, "takes no hyper-parameters"),
    ({"methods": [{"name": "x", "method": "lora", "r": 8}, {"name": "x", "method": "lora", "r": 8}]}, "share folder"),
    ({"method": []}, "unknown top-level key"),
    ({"evals": {"gsm": {"args": {}}}}, "evals.gsm needs a 'module'"),
    ({"prepare": [{"module": "x"}]}, "prepare\\[0\\] needs 'module' and 'creates'"),
])
def test_bad_configs_are_rejected_with_one_line(tmp_path, change, message):
    with pytest.raises(GridConfigError, match=message):
        load_config(write_grid(tmp_path, {**GRID, **change}))


def test_smoke_requires_a_smoke_section(tmp_path):
    grid = {k: v for k, v in GRID.items() if k != "smoke"}
    with pytest.raises(GridConfigError, match="no 'smoke:' section"):
        load_config(write_grid(tmp_path, grid), smoke=True)


def test_cli_flags():
    assert cli_flags({"a": 1, "b": True, "c": False, "d": None, "e": [1, 2]}) == ["--a", "1", "--b", "--e", "1", "2"]


@pytest.mark.parametrize("name", sorted(p.name for p in Path("configs/experiments").glob("*.yaml")))
def test_shipped_grids_load(name):
    for smoke in (False, True):
        path = Path("configs/experiments") / name
        if smoke and "smoke" not in read_yaml(path):  # (a smoke section may come from the file it extends)
            continue
        config = load_config(path, smoke=smoke)
        assert expand_cells(config)


def test_an_extending_file_that_changes_an_evals_module_does_not_inherit_its_args(tmp_path):
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump({
        "evals": {"a": {"module": "eval.gsm.run_eval", "args": {"data_dir": "d", "n_shot": 8}},
                  "b": {"module": "eval.bbh.run_eval", "args": {"data_dir": "d", "no_cot": True}}}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({
        "extends": "parent.yaml",
        "evals": {"a": {"module": "eval.heldout.run_eval", "args": {"data_file": "f"}},  # another program
                  "b": {"args": {"max_num_examples_per_task": 3}}}}))                       # same program
    evals = read_yaml(tmp_path / "child.yaml")["evals"]
    assert evals["a"] == {"module": "eval.heldout.run_eval", "args": {"data_file": "f"}}
    assert evals["b"] == {"module": "eval.bbh.run_eval",
                          "args": {"data_dir": "d", "no_cot": True, "max_num_examples_per_task": 3}}


def test_cpu_grid_heldout_evals_get_only_their_own_flags():
    from open_instruct.paper.grid import cell_stages

    parent = read_yaml(Path("configs/experiments/mini_smollm2.yaml"))
    own = yaml.safe_load(Path("configs/experiments/mini_smollm2_cpu.yaml").read_text())["evals"]
    for smoke in (False, True):
        config = load_config("configs/experiments/mini_smollm2_cpu.yaml", smoke=smoke)
        cell = next(c for c in expand_cells(config) if c.method == "lora")
        stages = {s.name: s.command for s in cell_stages(config, cell, Path("out") / cell.folder, "m")}
        for name in ("asdiv", "bigbench"):
            command = next(c for stage, c in stages.items() if stage.endswith(name))
            assert command[2] == "eval.heldout.run_eval"
            given = {token for token in command if token.startswith("--")}
            inherited = {f"--{flag}" for flag in parent["evals"][name]["args"]} - {
                f"--{flag}" for flag in own[name]["args"]}
            assert inherited and not given & inherited, (name, given & inherited)
            assert {"--data_file", "--answer", "--use_chat_format"} <= given  # eval_args are still inherited


def test_entry_schedule_and_seeds(tmp_path):
    """An entry's `schedule` becomes its cells' --lr_scheduler_type (over train's) and part of the folder; its
    `seeds` restrict it to some of the grid's seeds; bad values are one error naming the entry."""
    from open_instruct.paper.grid import GridConfigError, cell_stages, expand_cells, run_config

    config = {"name": "g", "model": "m", "output_dir": str(tmp_path), "seeds": [1, 2, 3],
              "train": {"lr_scheduler_type": "constant"},
              "methods": [{"name": "lora", "method": "lora", "r": 8},
                          {"name": "lin", "method": "lora", "r": [1, 8], "schedule": "linear", "seeds": [1, 3],
                           "label": "LoRA, linear decay"}]}
    cells = expand_cells(config)
    assert [c.folder for c in cells] == ["lora_r8_sd1", "lin_r1_linear_sd1", "lin_r8_linear_sd1", "lora_r8_sd2",
                                         "lora_r8_sd3", "lin_r1_linear_sd3", "lin_r8_linear_sd3"]

    def flag_of(cell):
        command = cell_stages(config, cell, tmp_path / cell.folder, "m")[0].command
        return command[command.index("--lr_scheduler_type") + 1]

    assert flag_of(cells[0]) == "constant" and flag_of(cells[1]) == "linear"
    assert run_config(config, cells[0])["schedule"] == "constant"
    assert run_config(config, cells[1])["schedule"] == "linear"
    bad = [({"schedule": "exponential"}, "schedule must be one of"), ({"seeds": [4]}, "seeds must be"),
           ({"seeds": []}, "seeds must be"), ({"label": "LoRA"}, "different schedules")]
    for override, message in bad:
        entry = {**config["methods"][1], **override}
        with pytest.raises(GridConfigError, match=message):
            expand_cells({**config, "methods": [config["methods"][0], entry]})


def test_a_grid_without_seeds_still_expands():
    from open_instruct.paper.grid import expand_cells

    cells = expand_cells({"name": "g", "model": "m", "output_dir": "o",
                          "methods": [{"name": "lora", "method": "lora", "r": [4, 8]}]})
    assert [c.folder for c in cells] == ["lora_r4", "lora_r8"]
