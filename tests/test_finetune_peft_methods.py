"""--peft_method builders and a short finetune → merge round trip for each method."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_helpers import load_adapter_tensors, make_tiny_checkpoint, python, run, tiny_args, write_toy_data
from transformers import AutoModelForCausalLM

from open_instruct.finetune import parse_args
from open_instruct.peft_methods import LLAMA_PROJECTIONS, build_peft_config


def cli(*extra: str):
    return parse_args(["--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o", "--use_lora", *extra])


def test_default_targets_are_the_seven_llama_projections():
    config = build_peft_config(cli())
    assert config.peft_type == "LORA" and set(config.target_modules) == set(LLAMA_PROJECTIONS)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (64, 16.0, 0.1)


def test_prolora_flags_use_the_authors_names():
    config = build_peft_config(cli("--peft_method", "prolora", "--lora_r", "8", "--unshared_r", "1",
                                   "--reduce_lora_A_x", "2", "--reduce_lora_B_x", "4", "--no_lora_rotation",
                                   "--no_rectified_init", "--lora_target_modules", "q_proj", "v_proj"))
    assert str(config.peft_type.value if hasattr(config.peft_type, "value") else config.peft_type) == "PROLORA"
    assert (config.r, config.unshared_r, config.reduce_lora_A_x, config.reduce_lora_B_x) == (8, 1, 2, 4)
    assert config.enable_lora_rotation is False and config.rectified_init is False
    assert set(config.target_modules) == {"q_proj", "v_proj"}


def test_vera_and_tied_lora_configs():
    vera = build_peft_config(cli("--peft_method", "vera", "--lora_rank", "16", "--lora_dropout", "0.05"))
    assert vera.peft_type == "VERA" and vera.r == 16 and vera.vera_dropout == 0.05
    tied = build_peft_config(cli("--peft_method", "tied_lora", "--lora_rank", "8", "--lora_alpha", "4"))
    assert (tied.r, tied.lora_alpha) == (8, 4)


@pytest.mark.parametrize("flag", [["--unshared_r", "1"], ["--reduce_lora_A_x", "2"], ["--no_lora_rotation"]])
def test_prolora_flags_are_rejected_for_other_methods(flag):
    with pytest.raises(ValueError, match=f"{flag[0]}.*only applies to --peft_method prolora"):
        build_peft_config(cli("--peft_method", "lora", *flag))


def test_cli_rejects_qlora_without_lora_and_two_data_sources(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o", "--use_qlora"])
    assert "--use_qlora trains an adapter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--model_name_or_path", "m", "--train_file", "t", "--dataset_name", "d", "--output_dir", "o"])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    return {"model": make_tiny_checkpoint(root / "model"), "data": write_toy_data(root / "data.jsonl")}


@pytest.mark.parametrize("method, extra, mergeable", [
    ("prolora", ["--unshared_r", "1", "--reduce_lora_A_x", "2", "--reduce_lora_B_x", "2"], True),
    ("mos", ["--mos_r", "3", "--mos_private_r", "1", "--mos_shards_per_vector", "2"], True),
    ("vera", [], False),
    ("tied_lora", [], False),
])
def test_method_trains_and_prolora_merges(assets, tmp_path, method, extra, mergeable):
    out = tmp_path / "out"
    proc = run([python(), "-m", "open_instruct.finetune", *tiny_args(assets["model"], assets["data"], out),
                "--peft_method", method, "--max_train_steps", "3", *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["peft_method"] == method and results["peft_config"]["r"] == 4
    assert 0 < results["trainable_params"] < results["total_params"]
    if method == "mos":  # the shard pools are saved once, not per layer (beside each layer's int64 shard indices)
        saved = load_adapter_tensors(out)
        assert sum(t.numel() for t in saved.values() if t.is_floating_point()) == results["trainable_params"]
        assert any("mos_index" in name for name in saved)
    if method == "prolora":
        from prolora import count_adapter_params

        # The compact chunks are what gets saved: as many numbers as the trainable parameters.
        assert sum(t.numel() for t in load_adapter_tensors(out).values()) == results["trainable_params"]
        base = AutoModelForCausalLM.from_pretrained(assets["model"])
        from prolora import ProLoraConfig

        config = ProLoraConfig(r=4, target_modules=LLAMA_PROJECTIONS, unshared_r=1, reduce_lora_A_x=2,
                               reduce_lora_B_x=2)
        assert results["trainable_params"] == count_adapter_params(base, config)
    if mergeable:
        proc = run([python(), "-m", "open_instruct.merge_lora", "--lora_model_name_or_path", str(out),
                    "--save_tokenizer"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        merged = AutoModelForCausalLM.from_pretrained(out / "lora_merged")
        base = AutoModelForCausalLM.from_pretrained(assets["model"])
        changed = [n for n, p in merged.named_parameters() if "q_proj" in n and
                   not torch.equal(p, base.get_parameter(n))]
        assert changed  # the trained update landed in the merged weights


def test_a_mos_pool_too_small_for_the_model_is_one_error_line(assets, tmp_path):
    """The pool size depends on the model's layer count, so it is checked when the adapter is built: one
    ``error:`` line naming the setting, no traceback, nothing written."""
    out = tmp_path / "out"
    proc = run([python(), "-m", "open_instruct.finetune", *tiny_args(assets["model"], assets["data"], out),
                "--peft_method", "mos", "--mos_r", "2", "--mos_private_r", "1", "--mos_shards_per_vector", "2",
                "--max_train_steps", "1"])
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "mos_r=2" in errors[0] and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())
