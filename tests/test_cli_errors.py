"""Bad input and faults across the command-line tools: one `error:` line, exit status 2, nothing touched.

Each case of the table gives a tool a bad flag, file or folder and asserts the convention of `open_instruct.cli`:
exit status 2 (1 for validate_data's verdict on data), exactly one line starting with ``error:`` that names the
offending value or file, no traceback, and the finished runs, the model and every other pre-existing file
byte-identical afterwards. The table runs the tools' ``main`` in this process (imports once: fast); a few cases run
the real ``python -m`` entry points in subprocesses. The SIGKILL tests kill a continued run in its final save.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import stat
import textwrap
from pathlib import Path
from typing import Callable

import pytest
import yaml
from finetune_helpers import REPO, make_tiny_checkpoint, python, run, tiny_args, write_toy_data

from open_instruct.cli import run as run_cli

ADAPTER_FLAGS = {"--use_lora": 0, "--lora_rank": 1, "--lora_alpha": 1, "--lora_dropout": 1}  # flag -> values


def full_ft_args(*args) -> list[str]:
    """`tiny_args(...)` without the adapter flags: a full fine-tune."""
    args, kept, skip = [str(a) for a in tiny_args(*args)], [], 0
    for arg in args:
        if skip:
            skip -= 1
        elif arg in ADAPTER_FLAGS:
            skip = ADAPTER_FLAGS[arg]
        else:
            kept.append(arg)
    return kept


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root`: relative path -> mode and content hash (folders: mode only)."""
    digest = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        key = path.relative_to(root).as_posix()
        if stat.S_ISREG(info.st_mode):
            digest[key] = f"{oct(info.st_mode)} {hashlib.sha256(path.read_bytes()).hexdigest()}"
        else:
            digest[key] = oct(info.st_mode)
    return digest


def train_in_process(argv: list[str]) -> None:
    from open_instruct import finetune

    finetune.main(argv)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, toy data, a finished LoRA run (checkpoint step_1) and a finished PRoLoRA run."""
    root = tmp_path_factory.mktemp("cli")
    model = make_tiny_checkpoint(root / "model")
    data = write_toy_data(root / "data.jsonl", n=12)
    lora_run, prolora_run = root / "lora_run", root / "prolora_run"
    common = ["--max_train_steps", "2", "--checkpointing_steps", "1", "--logging_steps", "1"]
    train_in_process(tiny_args(model, data, lora_run, *common))
    train_in_process(tiny_args(model, data, prolora_run, "--peft_method", "prolora", "--unshared_r", "1",
                               "--reduce_lora_A_x", "2", "--reduce_lora_B_x", "2", *common))
    return {"root": root, "model": model, "data": data, "run": lora_run, "prun": prolora_run}


@dataclasses.dataclass
class Ctx:
    model: Path
    data: Path
    run: Path
    prun: Path
    tmp: Path

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def ft(self, *extra: str, data: Path | None = None, out: Path | None = None) -> list[str]:
        """finetune arguments aimed at the *finished* LoRA run, so a failure that touched it would show."""
        return tiny_args(self.model, data or self.data, out or self.run, *extra)

    def grid(self, **changes) -> list[str]:
        config = {"name": "t", "model": str(self.model), "output_dir": str(self.tmp / "grid"),
                  "train": {"train_file": str(self.data), "max_train_steps": 2},
                  "evals": {"gsm": {"module": "eval.gsm.run_eval", "args": {"data_dir": str(self.tmp)}}},
                  "methods": [{"name": "p", "method": "prolora", "r": 4, "u": 1, "m": 2, "n": 2}]}
        for key, value in changes.items():
            config[key] = {**config[key], **value} if isinstance(value, dict) and key != "methods" else value
        return [str(self.file("grid.yaml", yaml.safe_dump(config))), "--dry_run"]


def finetune_main(argv):
    from open_instruct import finetune

    return run_cli(finetune.main, argv)


def merge_main(argv):
    from open_instruct import merge_lora

    return run_cli(merge_lora.main, argv)


def export_main(argv):
    from prolora import export

    return export.main(argv)  # its own minimal handling (prolora does not import the harness)


def validate_main(argv):
    from open_instruct.data import validate

    return run_cli(validate.main, argv)


def grid_main(argv):
    return run_cli(load_script("run_grid").main, argv)


def params_main(argv):
    return run_cli(load_script("calculate_params").main, argv)


def summarize_main(argv):
    return run_cli(load_script("summarize_results").main, argv)


def gsm_main(argv):
    from eval.common import cli_main
    from eval.gsm import run_eval as gsm

    return cli_main(gsm.main, gsm.build_parser(), argv)


def corrupt_copy(ctx: Ctx) -> Path:
    """A copy of the finished run's checkpoint with its weights truncated."""
    copy = ctx.tmp / "ckpt" / "step_1"
    shutil.copytree(ctx.run / "step_1", copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return copy


def truncated_adapter(ctx: Ctx) -> Path:
    folder = ctx.tmp / "truncated"
    shutil.copytree(ctx.run, folder, ignore=shutil.ignore_patterns("step_*"))
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    return folder


def adapter_with_config(ctx: Ctx, text: str) -> Path:
    folder = ctx.tmp / "adapter"
    shutil.copytree(ctx.prun, folder, ignore=shutil.ignore_patterns("step_*"))
    (folder / "adapter_config.json").write_text(text)
    return folder


def model_with_config(ctx: Ctx, text: str | None) -> Path:
    folder = ctx.tmp / "model"
    shutil.copytree(ctx.model, folder)
    if text is None:
        (folder / "config.json").unlink()
    else:
        (folder / "config.json").write_text(text)
    return folder


def nonempty(ctx: Ctx) -> Path:
    ctx.file("occupied/notes.txt", "keep me")
    return ctx.tmp / "occupied"


@dataclasses.dataclass
class Case:
    id: str
    main: Callable
    argv: Callable[[Ctx], list[str]]
    expect: Callable[[Ctx], list[str]]  # fragments of the one error line
    code: int = 2
    cpu_only: bool = False  # the input is bad only on a machine without a GPU


BAD = "\n".join(['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
                 '{"messages": [{"role": "user", "content": "hi"}'])
CASES = [
    # --- finetune: flag ranges and combinations, aimed at a finished run
    Case("ft_lr_negative", finetune_main, lambda c: c.ft("--learning_rate", "-1"), lambda c: ["--learning_rate", "-1"]),
    Case("ft_steps_zero", finetune_main, lambda c: c.ft("--max_train_steps", "0"), lambda c: ["--max_train_steps"]),
    Case("ft_steps_negative", finetune_main, lambda c: c.ft("--max_train_steps", "-1"),
         lambda c: ["--max_train_steps", "-1"]),
    Case("ft_epochs_zero", finetune_main, lambda c: c.ft("--num_train_epochs", "0"), lambda c: ["--num_train_epochs"]),
    Case("ft_ckpt_zero", finetune_main, lambda c: c.ft("--checkpointing_steps", "0"),
         lambda c: ["--checkpointing_steps", "'0'"]),
    Case("ft_ckpt_word", finetune_main, lambda c: c.ft("--checkpointing_steps", "often"),
         lambda c: ["--checkpointing_steps", "often"]),
    Case("ft_warmup_5", finetune_main, lambda c: c.ft("--warmup_ratio", "5"), lambda c: ["--warmup_ratio", "5"]),
    Case("ft_logging_zero", finetune_main, lambda c: c.ft("--logging_steps", "0"), lambda c: ["--logging_steps"]),
    Case("ft_accum_zero", finetune_main, lambda c: c.ft("--gradient_accumulation_steps", "0"),
         lambda c: ["--gradient_accumulation_steps"]),
    Case("ft_batch_zero", finetune_main, lambda c: c.ft("--per_device_train_batch_size", "0"),
         lambda c: ["--per_device_train_batch_size"]),
    Case("ft_dropout", finetune_main, lambda c: c.ft("--lora_dropout", "1.5"), lambda c: ["--lora_dropout", "1.5"]),
    Case("ft_eval_steps_no_data", finetune_main, lambda c: c.ft("--eval_steps", "2"), lambda c: ["--eval_steps"]),
    Case("ft_prolora_flag_full_ft", finetune_main, lambda c: full_ft_args(c.model, c.data, c.run, "--unshared_r", "1"),
         lambda c: ["--unshared_r", "--use_lora"]),
    Case("ft_prolora_flag_lora", finetune_main, lambda c: c.ft("--peft_method", "lora", "--unshared_r", "1"),
         lambda c: ["--unshared_r", "prolora"]),
    Case("ft_u_gt_r", finetune_main, lambda c: c.ft("--peft_method", "prolora", "--unshared_r", "9"),
         lambda c: ["unshared_r", "9"]),
    Case("ft_m_gt_d_in", finetune_main, lambda c: c.ft("--peft_method", "prolora", "--reduce_lora_A_x", "65"),
         lambda c: ["--reduce_lora_A_x 65", "64"]),
    Case("ft_n_gt_d_out", finetune_main,
         lambda c: c.ft("--peft_method", "prolora", "--reduce_lora_B_x", "33", "--lora_target_modules", "k_proj"),
         lambda c: ["--reduce_lora_B_x 33", "k_proj", "32"]),
    Case("ft_unknown_module", finetune_main, lambda c: c.ft("--lora_target_modules", "q_prj"), lambda c: ["q_prj"]),
    Case("ft_rank_word", finetune_main, lambda c: c.ft("--lora_rank", "eight"), lambda c: ["--lora_rank", "eight"]),
    Case("ft_unknown_flag", finetune_main, lambda c: c.ft("--learnin_rate", "1"), lambda c: ["--learnin_rate"]),
    Case("ft_qlora_without_lora", finetune_main, lambda c: full_ft_args(c.model, c.data, c.run, "--use_qlora"),
         lambda c: ["--use_qlora"]),
    Case("ft_model_missing", finetune_main,
         lambda c: tiny_args(c.tmp / "nope", c.data, c.run), lambda c: [str(c.tmp / "nope")]),
    Case("ft_model_no_config", finetune_main,
         lambda c: tiny_args(model_with_config(c, None), c.data, c.run),
         lambda c: ["config.json", str(c.tmp / "model")]),
    Case("ft_model_bad_config", finetune_main,
         lambda c: tiny_args(model_with_config(c, "{oops"), c.data, c.run), lambda c: ["config.json", "invalid JSON"]),
    Case("ft_model_hub_offline", finetune_main, lambda c: tiny_args("nobody/nothing", c.data, c.run),
         lambda c: ["nobody/nothing"]),
    Case("ft_dataset_offline", finetune_main,
         lambda c: [*c.ft()[:2], "--dataset_name", "nobody/nodata", *c.ft()[4:]], lambda c: ["nobody/nodata"]),
    Case("ft_data_missing", finetune_main, lambda c: c.ft(data=c.tmp / "none.jsonl"), lambda c: ["none.jsonl"]),
    Case("ft_data_empty", finetune_main, lambda c: c.ft(data=c.file("empty.jsonl", "")),
         lambda c: [str(c.tmp / "empty.jsonl"), "no records"]),
    Case("ft_data_latin1", finetune_main, lambda c: c.ft(data=c.file("latin1.jsonl", b'{"prompt": "caf\xe9"}\n')),
         lambda c: [f"{c.tmp / 'latin1.jsonl'}:1", "UTF-8"]),
    Case("ft_data_bad_json", finetune_main, lambda c: c.ft(data=c.file("bad.jsonl", BAD)),
         lambda c: [f"{c.tmp / 'bad.jsonl'}:2", "invalid JSON"]),
    Case("ft_data_bad_role", finetune_main,
         lambda c: c.ft(data=c.file("role.jsonl", '{"messages": [{"role": "bot", "content": "x"}]}\n')),
         lambda c: [f"{c.tmp / 'role.jsonl'}:1", "bot"]),
    Case("ft_data_folder", finetune_main, lambda c: c.ft(data=c.tmp), lambda c: [str(c.tmp), "folder"]),
    Case("ft_split_too_big", finetune_main, lambda c: c.ft("--eval_split_size", "500"),
         lambda c: ["--eval_split_size 500"]),
    Case("ft_resume_missing", finetune_main, lambda c: c.ft("--resume_from_checkpoint", str(c.tmp / "step_9")),
         lambda c: [str(c.tmp / "step_9")]),
    Case("ft_resume_corrupt", finetune_main, lambda c: c.ft("--resume_from_checkpoint", str(corrupt_copy(c))),
         lambda c: ["step_1", "model.safetensors"]),
    Case("ft_resume_other_rank", finetune_main,
         lambda c: c.ft("--lora_rank", "8", "--resume_from_checkpoint", "auto"), lambda c: ["--lora_rank", "8"]),
    Case("ft_resume_past_max_steps", finetune_main,
         lambda c: c.ft("--max_train_steps", "1", "--resume_from_checkpoint", "auto"),
         lambda c: ["step_1", "--max_train_steps 1"]),
    Case("ft_seed_negative", finetune_main, lambda c: c.ft("--seed", "-1"), lambda c: ["--seed", "-1"]),
    Case("ft_fp16_on_cpu", finetune_main, lambda c: c.ft("--mixed_precision", "fp16"), lambda c: ["fp16"],
         cpu_only=True),
    Case("ft_report_to_unknown", finetune_main, lambda c: c.ft("--with_tracking", "--report_to", "tensorbord"),
         lambda c: ["--report_to", "tensorbord"]),
    Case("ft_config_name_missing", finetune_main, lambda c: c.ft("--config_name", str(c.tmp / "cfg")),
         lambda c: ["--config_name", str(c.tmp / "cfg")]),
    Case("ft_out_is_file", finetune_main, lambda c: c.ft(out=c.data), lambda c: [str(c.data), "not a folder"]),
    Case("ft_out_is_model", finetune_main, lambda c: c.ft(out=c.model), lambda c: [str(c.model)]),
    Case("ft_out_foreign_folder", finetune_main, lambda c: c.ft(out=nonempty(c)),
         lambda c: [str(c.tmp / "occupied"), "not a fine-tuning run"]),
    Case("ft_out_unwritable", finetune_main, lambda c: c.ft(out=Path("/proc/no/run")), lambda c: ["/proc/no/run"]),
    # --- merge_lora
    Case("merge_out_is_adapter", merge_main,
         lambda c: ["--lora_model_name_or_path", str(c.run), "--output_dir", str(c.run)], lambda c: [str(c.run)]),
    Case("merge_out_contains_adapter", merge_main,
         lambda c: ["--lora_model_name_or_path", str(c.run), "--output_dir", str(c.run.parent)],
         lambda c: [str(c.run.parent)]),
    Case("merge_out_in_checkpoint", merge_main,
         lambda c: ["--lora_model_name_or_path", str(c.run), "--output_dir", str(c.run / "step_1" / "m")],
         lambda c: ["step_1"]),
    Case("merge_out_is_file", merge_main,
         lambda c: ["--lora_model_name_or_path", str(c.run), "--output_dir", str(c.data)], lambda c: [str(c.data)]),
    Case("merge_out_nonempty", merge_main,
         lambda c: ["--lora_model_name_or_path", str(c.run), "--output_dir", str(nonempty(c))],
         lambda c: ["occupied", "--overwrite"]),
    Case("merge_adapter_missing", merge_main, lambda c: ["--lora_model_name_or_path", str(c.tmp / "none")],
         lambda c: [str(c.tmp / "none")]),
    Case("merge_no_adapter_config", merge_main, lambda c: ["--lora_model_name_or_path", str(c.model)],
         lambda c: ["adapter_config.json", str(c.model)]),
    Case("merge_bad_adapter_config", merge_main,
         lambda c: ["--lora_model_name_or_path", str(adapter_with_config(c, '{"peft_type": '))],
         lambda c: ["adapter_config.json", "invalid JSON"]),
    Case("merge_truncated_weights", merge_main, lambda c: ["--lora_model_name_or_path", str(truncated_adapter(c))],
         lambda c: ["adapter_model.safetensors", "corrupt"]),
    Case("merge_base_missing", merge_main,
         lambda c: ["--lora_model_name_or_path", str(c.run), "--base_model_name_or_path", str(c.tmp / "base")],
         lambda c: [str(c.tmp / "base")]),
    Case("merge_wrong_base", merge_main,
         lambda c: ["--lora_model_name_or_path", str(c.run), "--output_dir", str(c.tmp / "merged"),
                    "--base_model_name_or_path", str(make_tiny_checkpoint(c.tmp / "big", hidden_size=128))],
         lambda c: ["does not fit", str(c.tmp / "big")]),
    # --- prolora.export
    Case("export_out_is_adapter", export_main, lambda c: ["--base_model_name_or_path", str(c.model), "--adapter_dir",
                                                          str(c.prun), "--output_dir", str(c.prun)],
         lambda c: [str(c.prun)]),
    Case("export_out_inside_adapter", export_main, lambda c: ["--base_model_name_or_path", str(c.model),
                                                              "--adapter_dir", str(c.prun), "--output_dir",
                                                              str(c.prun / "lora")], lambda c: [str(c.prun / "lora")]),
    Case("export_out_is_file", export_main, lambda c: ["--base_model_name_or_path", str(c.model), "--adapter_dir",
                                                       str(c.prun), "--output_dir", str(c.data)],
         lambda c: [str(c.data)]),
    Case("export_out_nonempty", export_main, lambda c: ["--base_model_name_or_path", str(c.model), "--adapter_dir",
                                                        str(c.prun), "--output_dir", str(nonempty(c))],
         lambda c: ["occupied", "--overwrite"]),
    Case("export_lora_adapter", export_main, lambda c: ["--base_model_name_or_path", str(c.model), "--adapter_dir",
                                                        str(c.run), "--output_dir", str(c.tmp / "x")],
         lambda c: [str(c.run), "LORA"]),
    Case("export_bad_config", export_main, lambda c: ["--base_model_name_or_path", str(c.model), "--adapter_dir",
                                                      str(adapter_with_config(c, "[")), "--output_dir",
                                                      str(c.tmp / "x")], lambda c: ["adapter_config.json"]),
    Case("export_base_missing", export_main, lambda c: ["--base_model_name_or_path", str(c.tmp / "b"),
                                                        "--adapter_dir", str(c.prun), "--output_dir",
                                                        str(c.tmp / "x")], lambda c: [str(c.tmp / "b")]),
    # --- validate_data (exit status 1 is its verdict "some file is invalid"; 2 is for usage errors)
    Case("validate_empty", validate_main, lambda c: [str(c.file("empty.jsonl", ""))],
         lambda c: [str(c.tmp / "empty.jsonl"), "no records"], code=1),
    Case("validate_latin1", validate_main, lambda c: [str(c.file("latin1.jsonl", b'{"prompt": "\xff"}\n'))],
         lambda c: [f"{c.tmp / 'latin1.jsonl'}:1", "UTF-8"], code=1),
    Case("validate_tokenizer_missing", validate_main,
         lambda c: ["--stats", "--tokenizer", str(c.tmp / "tok"), str(c.data)], lambda c: [str(c.tmp / "tok")]),
    # --- run_grid --dry_run
    Case("grid_unknown_train_key", grid_main, lambda c: c.grid(train={"learnin_rate": 0.1}),
         lambda c: ["--learnin_rate", "finetune"]),
    Case("grid_rank_word", grid_main, lambda c: c.grid(methods=[{"name": "p", "method": "lora", "r": "eight"}]),
         lambda c: ["eight"]),
    Case("grid_u_gt_r", grid_main, lambda c: c.grid(methods=[{"name": "p", "method": "prolora", "r": 2, "u": 3}]),
         lambda c: ["u=3", "r=2"]),
    Case("grid_m_gt_d_in", grid_main, lambda c: c.grid(methods=[{"name": "p", "method": "prolora", "r": 2, "m": 99}]),
         lambda c: ["--reduce_lora_A_x 99"]),
    Case("grid_eval_module_typo", grid_main,
         lambda c: c.grid(evals={"gsm": {"module": "eval.gsm.run_evl"}}), lambda c: ["eval.gsm.run_evl"]),
    Case("grid_eval_arg_typo", grid_main,
         lambda c: c.grid(evals={"gsm": {"module": "eval.gsm.run_eval", "args": {"n_shots": 3}}}),
         lambda c: ["--n_shots", "eval_gsm"]),
    Case("grid_model_missing", grid_main, lambda c: c.grid(model=str(c.tmp / "nomodel")), lambda c: ["nomodel"]),
    Case("grid_train_file_missing", grid_main, lambda c: c.grid(train={"train_file": str(c.tmp / "nodata.jsonl")}),
         lambda c: ["nodata.jsonl"]),
    Case("grid_missing_file", grid_main, lambda c: [str(c.tmp / "none.yaml")], lambda c: ["none.yaml"]),
    Case("grid_bad_yaml", grid_main, lambda c: [str(c.file("bad.yaml", "a: [1, 2"))], lambda c: ["bad.yaml"]),
    # --- evals, calculate_params, summarize_results
    Case("eval_adapter_as_model", gsm_main,
         lambda c: ["--data_dir", str(c.tmp), "--model_name_or_path", str(c.prun), "--save_dir", str(c.tmp / "e")],
         lambda c: [str(c.prun), "--adapter_name_or_path"]),
    Case("eval_model_missing", gsm_main,
         lambda c: ["--data_dir", str(c.tmp), "--model_name_or_path", str(c.tmp / "m"), "--save_dir", str(c.tmp / "e")],
         lambda c: [str(c.tmp / "m")]),
    Case("eval_batch_zero", gsm_main,
         lambda c: ["--data_dir", str(c.tmp), "--model_name_or_path", str(c.model), "--eval_batch_size", "0"],
         lambda c: ["--eval_batch_size"]),
    Case("params_m_gt_d_in", params_main,
         lambda c: ["--model", str(c.model), "--ranks", "8", "--methods", "prolora:m=100"], lambda c: ["m=100", "64"]),
    Case("params_unknown_method", params_main, lambda c: ["--methods", "dora"], lambda c: ["dora"]),
    Case("summarize_missing_root", summarize_main, lambda c: [str(c.tmp / "nowhere")], lambda c: ["nowhere"]),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_touches_nothing(world, tmp_path, capsys, case):
    if case.cpu_only:
        import torch

        if torch.cuda.is_available():
            pytest.skip("fp16 is fine on a GPU")
    ctx = Ctx(world["model"], world["data"], world["run"], world["prun"], tmp_path)
    argv = [str(a) for a in case.argv(ctx)]  # builds the case's bad files first
    before, before_tmp = tree_digest(world["root"]), tree_digest(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        case.main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert info.value.code == case.code, err[-2000:]
    assert len(errors) == 1, err[-2000:]
    assert "Traceback" not in err
    for fragment in case.expect(ctx):
        assert fragment in errors[0], errors[0]
    assert tree_digest(world["root"]) == before
    assert tree_digest(tmp_path) == before_tmp


def test_table_is_big_enough():
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)


def test_validate_data_keeps_checking_after_a_bad_file(world, tmp_path, capsys):
    from open_instruct.data.validate import main

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "\xff"}\n')
    assert main([str(bad), str(tmp_path), str(world["data"])]) == 1
    out = capsys.readouterr()
    assert f"{world['data']}: 12 records OK" in out.out
    assert f"error: {bad}:1: not UTF-8" in out.err and f"error: {tmp_path}: cannot read" in out.err


# --- the real entry points, in subprocesses --------------------------------------------------------------

@pytest.mark.parametrize("command, fragment", [
    (lambda w, t: ["-m", "open_instruct.finetune", *tiny_args(w["model"], w["data"], w["run"], "--learning_rate",
                                                              "-1")], "--learning_rate"),
    (lambda w, t: ["-m", "open_instruct.merge_lora", "--lora_model_name_or_path", str(w["run"]), "--output_dir",
                   str(w["run"])], "--output_dir"),
    (lambda w, t: ["-m", "prolora.export", "--base_model_name_or_path", str(w["model"]), "--adapter_dir",
                   str(w["prun"]), "--output_dir", str(w["prun"])], "--output_dir"),
    (lambda w, t: ["-m", "open_instruct.validate_data", "--max_seq_length", "0", str(w["data"])], "--max_seq_length"),
], ids=["finetune", "merge_lora", "prolora.export", "validate_data"])
def test_entry_points_in_subprocesses(world, tmp_path, command, fragment):
    before = tree_digest(world["root"])
    proc = run([python(), *command(world, tmp_path)])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and fragment in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert tree_digest(world["root"]) == before


def test_outputs_have_normal_permissions(world):
    mask = os.umask(0)
    os.umask(mask)
    for path in [world["run"], world["run"] / "step_1", *world["run"].rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_bitsandbytes_cpu_kernel_warning_is_silenced(capsys):
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with pytest.raises(SystemExit):
        run_cli(lambda argv: 0)
    logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: offline")
    assert "gemm_4bit_forward" not in capsys.readouterr().err


# --- replace whole, never mix; resume skips a corrupted checkpoint -----------------------------------------

def test_lora_run_replaces_a_full_fine_tune_whole(world, tmp_path):
    out = tmp_path / "run"
    train_in_process(full_ft_args(world["model"], world["data"], out, "--max_train_steps", "1"))
    assert (out / "model.safetensors").is_file() and (out / "completed").is_file()
    (out / ".grid").mkdir()
    (out / ".grid" / "finetune.done").write_text("{}")
    train_in_process(tiny_args(world["model"], world["data"], out, "--max_train_steps", "1"))
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" not in names and "config.json" not in names  # nothing of the full fine-tune
    assert {"adapter_model.safetensors", "adapter_config.json", "completed", "all_results.json"} <= names
    assert (out / ".grid" / "finetune.done").read_text() == "{}"  # the grid's bookkeeping stays
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_auto_resume_skips_a_corrupted_newest_checkpoint(world, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(world["run"], out)
    train_args = tiny_args(world["model"], world["data"], out, "--max_train_steps", "4", "--checkpointing_steps", "1",
                           "--logging_steps", "1")
    train_in_process([*train_args, "--resume_from_checkpoint", "auto"])  # step_1 → 4: checkpoints step_2, step_3
    newest = out / "step_3" / "optimizer.bin"
    newest.write_bytes(newest.read_bytes()[:-10])
    proc = run([python(), "-m", "open_instruct.finetune", *train_args, "--max_train_steps", "5",
                "--resume_from_checkpoint", "auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipping corrupted checkpoint {out / 'step_3'}: optimizer.bin has" in proc.stderr
    assert f"resumed from {out / 'step_2'}" in proc.stderr
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 5


# A child that continues the finished run and SIGKILLs itself at a chosen point of the final save.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from open_instruct import finetune, io_utils
    from open_instruct.training import checkpoints
    point = os.environ["KILL_POINT"]
    original_replace, original_results = io_utils.replace_dir, checkpoints.write_json
    def replace_dir(new, path):
        if point == "before_swap":
            os.kill(os.getpid(), signal.SIGKILL)
        original_replace(new, path)
        if point == "after_swap":
            os.kill(os.getpid(), signal.SIGKILL)
    def write_json(path, obj, **kwargs):
        if point == "while_staging" and str(path).endswith("all_results.json"):
            os.kill(os.getpid(), signal.SIGKILL)
        return original_results(path, obj, **kwargs)
    io_utils.replace_dir, checkpoints.write_json = replace_dir, write_json
    finetune.main(sys.argv[1:])
""")


@pytest.mark.parametrize("kill_point", ["while_staging", "before_swap", "after_swap"])
def test_sigkill_in_the_final_save_of_a_continued_run(world, tmp_path, kill_point):
    out = tmp_path / "run"
    shutil.copytree(world["run"], out)
    old = tree_digest(out)
    args = tiny_args(world["model"], world["data"], out, "--max_train_steps", "3", "--checkpointing_steps", "1",
                     "--logging_steps", "1", "--resume_from_checkpoint", "auto")
    killed = run([python(), "-c", KILLER, *args], env={"KILL_POINT": kill_point})
    assert killed.returncode == -9, killed.stderr[-3000:]
    now = tree_digest(out)
    results = json.loads((out / "all_results.json").read_text())
    assert (out / "completed").is_file()
    if kill_point == "after_swap":  # the new run, whole: its results, weights, marker and checkpoints
        assert results["global_step"] == 3
        assert {"step_1", "step_2", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
        assert now[("adapter_model.safetensors")] != old["adapter_model.safetensors"]
    else:  # the old run, byte for byte, plus the checkpoint the continued run had written before its save
        assert results["global_step"] == 2
        assert {k: v for k, v in now.items() if not k.startswith("step_2")} == old
    if kill_point != "before_swap":
        return
    # The next attempt cleans the leftovers (here: the staged folder) and finishes the continued run.
    rerun = run([python(), "-m", "open_instruct.finetune", *args])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 3
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
