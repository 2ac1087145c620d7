"""The method registry (open_instruct.peft_methods) is the one list every consumer reads, and the facts defined once
(projection names, PRoLoRA settings' spelling, QLoRA recipe, the paper defaults) agree wherever they are used."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from open_instruct.finetune import parse_args
from open_instruct.paper import grid, params, summarize
from open_instruct.peft_methods import (
    LLAMA_PROJECTIONS,
    METHODS,
    PROLORA_SETTINGS,
    build_peft_config,
    method_for_peft_type,
    qlora_quantization_config,
)

REPO = Path(__file__).resolve().parents[1]


def cli(*extra: str):
    return parse_args(["--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o", "--use_lora", *extra])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_builds_its_peft_type_and_is_known_everywhere(name):
    method = METHODS[name]
    method.register()
    config = build_peft_config(cli("--peft_method", name))
    assert method_for_peft_type(config.peft_type) is method
    assert name in grid.METHODS and grid.LABELS[name] == method.label
    assert summarize.PEFT_LABELS[method.peft_type] == method.label
    assert name in params.METHODS and params.MethodSpec(name, 8).label.startswith(method.label)


def test_parameter_formulas_match_the_instantiated_model(tiny_llama):
    from peft import get_peft_model

    model = tiny_llama(hidden_size=48, intermediate_size=70)
    dims = params.ModelDims.from_config(model.config.to_dict())
    for name in METHODS:
        extra = ["--unshared_r", "1", "--reduce_lora_A_x", "2", "--reduce_lora_B_x", "3"] if name == "prolora" else []
        config = build_peft_config(cli("--peft_method", name, "--lora_rank", "4", *extra))
        expected = params.count_params(dims, params.parse_method_spec(
            "prolora:unshared_r=1:reduce_lora_A_x=2:reduce_lora_B_x=3" if name == "prolora" else name, 4))
        trainable, _ = get_peft_model(tiny_llama(hidden_size=48, intermediate_size=70), config) \
            .get_nb_trainable_parameters()
        assert trainable == expected, name


def test_one_projection_list():
    assert params.LLAMA_PROJECTIONS is LLAMA_PROJECTIONS
    assert cli().lora_target_modules == list(LLAMA_PROJECTIONS)
    assert tuple(params.BUILTIN_MODELS["llama2-7b"].projection_shapes()) == LLAMA_PROJECTIONS


def test_prolora_settings_spelled_as_the_config_fields():
    from prolora import ProLoraConfig

    fields = ProLoraConfig.__dataclass_fields__
    for setting in PROLORA_SETTINGS:
        assert setting.field in fields and fields[setting.field].default == setting.default
        assert hasattr(cli(), setting.flag)


def test_grid_accepts_the_config_names_and_the_short_aliases():
    short = {"name": "p", "method": "prolora", "r": 8, "u": 1, "m": 2, "n": 4, "rotation": False}
    long = {"name": "p", "method": "prolora", "r": 8, "unshared_r": 1, "reduce_lora_A_x": 2, "reduce_lora_B_x": 4,
            "enable_lora_rotation": False}
    assert grid.expand_cells({"methods": [short]}) == grid.expand_cells({"methods": [long]})
    with pytest.raises(grid.GridConfigError, match="one setting"):
        grid.expand_cells({"methods": [{**short, "unshared_r": 2}]})
    with pytest.raises(grid.GridConfigError, match="only apply to method prolora"):
        grid.expand_cells({"methods": [{"name": "l", "method": "lora", "r": 8, "unshared_r": 1}]})


def test_one_qlora_recipe_for_training_and_merging():
    config = qlora_quantization_config(torch.float32)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    for module in ("open_instruct/training/model.py", "open_instruct/base_quantization.py"):  # train; merge, evals
        source = (REPO / module).read_text()
        assert "BitsAndBytesConfig(" not in source and "qlora_quantization_config(" in source, module


def _flags(argv: list[str]) -> dict[str, str | bool]:
    """["-m", module, "--a", "1", "--b", ...] -> {"a": "1", "b": True}."""
    flags, key = {}, None
    for token in argv[2:]:
        if token.startswith("--"):
            key = token[2:]
            flags[key] = True
        elif key is not None:
            flags[key] = token
    return flags


def test_shell_pipeline_defaults_are_the_yaml_ones(tmp_path):
    """scripts/ft_pipeline.sh (the positional launchers) and configs/experiments/common/llama2_7b_qlora.yaml (the
    grids) state the paper's settings twice; run the shell with a recording stand-in for python and compare."""
    common = yaml.safe_load((REPO / "configs/experiments/common/llama2_7b_qlora.yaml").read_text())
    record = tmp_path / "calls"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}.$$"\necho "$$" >> "{record}"\n')
    fake_python.chmod(0o755)
    (tmp_path / "train.jsonl").write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME", "TMPDIR")}
    env.update(PYTHON=str(fake_python), TRAIN_FILE=str(tmp_path / "train.jsonl"), RUN_EVAL="0",
               OUTPUT_ROOT=str(tmp_path / "out"))
    lr = str(common["train"]["learning_rate"])
    proc = subprocess.run(["bash", "scripts/ft_pipeline.sh", "superni_mmlu", "8", "1", "2", "2", lr, "42", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [Path(f"{record}.{pid}").read_text().splitlines() for pid in record.read_text().split()]
    finetune = _flags(next(c for c in calls if c[1] == "open_instruct.finetune"))
    merge = _flags(next(c for c in calls if c[1] == "open_instruct.merge_lora"))
    assert finetune["model_name_or_path"] == common["model"]
    for key, value in common["train"].items():
        assert key in finetune, f"the shell pipeline does not pass --{key}"
        if isinstance(value, bool):
            assert finetune[key] is True, key
        elif isinstance(value, str):
            assert finetune[key] == value, key
        else:
            assert float(finetune[key]) == float(value), (key, finetune[key], value)
    for key, value in common["merge"]["args"].items():
        assert merge.get(key) is value, key
