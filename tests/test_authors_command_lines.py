"""The PRoLoRA authors' command lines (their ft_*.sh and eval_*.sh) parse with ours, unchanged, and mean what
they meant there."""

from __future__ import annotations

import importlib
import re
import shlex

import pytest
from reference_code import PROLORA, requires_reference

from open_instruct import finetune
from open_instruct.training import model as training_model
from open_instruct.training import trainer_flags

pytestmark = requires_reference
SHELL_VALUES = {"seed": "42", "learning_rate": "2e-4", "lora_r": "8", "unshared_r": "1", "reduce_lora_A_x": "2",
                "reduce_lora_B_x": "2", "output_dir": "/tmp/run", "GPU_ID": "0"}


def commands(script) -> list[tuple[str, list[str]]]:
    """``(program, flags)`` of each python command in a shell script (continuation lines joined, comments
    and commented-out commands skipped, ``$var`` / ``${var}`` filled in)."""
    text = re.sub(r"\\\n", " ", script.read_text())
    found = []
    for line in text.splitlines():
        line = re.sub(r"^(\w+=\S*\s+)+", "", line.split(" #", 1)[0].strip()).removesuffix("&").strip()
        if not line.startswith("python "):  # (an environment prefix and a trailing '&' are dropped first)
            continue
        line = re.sub(r"\$\{?(\w+)\}?", lambda m: SHELL_VALUES[m.group(1)], line).replace("<HF_TOKEN>", "hf_x")
        words = shlex.split(line)[1:]
        program = words[1] if words[0] == "-m" else words[0]
        found.append((program, words[2:] if words[0] == "-m" else words[1:]))
    return found


SCRIPTS = sorted(PROLORA.glob("*.sh")) if PROLORA else []


def test_every_script_has_commands():
    assert len(SCRIPTS) == 10
    assert all(commands(script) for script in SCRIPTS)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.name.startswith("ft_")], ids=lambda s: s.name)
def test_training_flags_parse_with_their_meaning(script):
    (program, flags), = [c for c in commands(script) if c[0] == "finetune_trainer.py"]
    args = finetune.parse_args(flags)
    assert args.use_lora and args.use_qlora and args.peft_method == "lora"
    assert (args.lora_rank, args.unshared_r, args.reduce_lora_A_x, args.reduce_lora_B_x) == (8, 1, 2, 2)
    assert args.lora_alpha == 16 and args.lora_dropout == 0.1 and not args.no_lora_rotation
    assert args.max_train_steps == 10000 and args.clip_grad_norm == 0.3 and args.learning_rate == 2e-4
    assert args.use_paged_optimizer and not args.use_8bit_optimizer and args.mixed_precision == "bf16"
    assert args.eval_split_size == 1024 and args.eval_steps == 1000 and args.checkpointing_steps == "1000"
    assert args.checkpoints_total_limit == 1 and args.gradient_checkpointing and args.group_by_length
    assert args.use_slow_tokenizer and not args.use_flash_attn and not args.overwrite_cache
    assert args.per_device_train_batch_size == 16 and args.max_seq_length == 512 and args.seed == 42


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_eval_flags_parse(script):
    for program, flags in commands(script):
        if program.startswith("eval."):
            args = importlib.import_module(program).build_parser().parse_args(flags)
            assert args.use_chat_format == ("--use_chat_format" in flags)
            assert args.model_name_or_path


def test_translation_rules():
    assert trainer_flags.translate(["--use_lora", "False", "--bf16=True", "--enable_lora_rotation", "False",
                                    "--optim", "paged_adamw_8bit", "--lora_modules", "all", "--do_train", "True",
                                    "--lora_target_modules", "q_proj", "v_proj", "--clip_grad_norm", "-1"]) == \
        ["--bf16", "--no_lora_rotation", "--use_paged_optimizer", "--use_8bit_optimizer",
         "--lora_target_modules", "q_proj", "v_proj", "--clip_grad_norm", "-1"]
    for bad in (["--do_train", "False"], ["--optim", "sgd"], ["--streaming", "True"], ["--lora_modules", "qv"]):
        with pytest.raises(ValueError, match=bad[0]):
            trainer_flags.translate(bad)


def test_bad_authors_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        finetune.parse_args(["--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o",
                             "--save_strategy", "epoch"])
    assert info.value.code == 2 and "--save_strategy epoch is not supported" in capsys.readouterr().err


def test_open_instruct_model_flags(caplog):
    from accelerate import PartialState

    PartialState()  # finetune logs through accelerate
    args = finetune.parse_args(["--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o",
                                "--use_flash_attn", "--use_slow_tokenizer", "--low_cpu_mem_usage"])
    with caplog.at_level("INFO"):
        kwargs = training_model.compatibility_kwargs(args, on_gpu=False)
    assert kwargs == {}  # no GPU: default attention, and the two transformers-4 flags only log
    assert "flash-attn" in caplog.text and "--use_slow_tokenizer changes nothing" in caplog.text
    assert "--low_cpu_mem_usage changes nothing" in caplog.text


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.name.startswith("ft_")], ids=lambda s: s.name)
def test_merge_flags_parse(script):
    from open_instruct import merge_lora

    (_, flags), = [c for c in commands(script) if c[0].endswith("merge_lora.py")]
    args = merge_lora.parse_args(flags)
    assert args.qlora and args.save_tokenizer


@pytest.mark.parametrize("flags,bits,paged", [([], None, None), (["--use_qlora", "--use_lora"], 32, True),
                                              (["--use_8bit_optimizer"], 8, False),
                                              (["--use_qlora", "--use_lora", "--use_8bit_optimizer"], 8, True),
                                              (["--optim", "paged_adamw_32bit"], 32, True)])
def test_optimizer_choice_follows_open_instruct(flags, bits, paged):
    import bitsandbytes as bnb
    import torch

    args = finetune.parse_args(["--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o", *flags])
    optimizer = training_model.build_optimizer(torch.nn.Linear(64, 64), args)
    if bits is None:
        assert type(optimizer) is torch.optim.AdamW
    else:
        assert isinstance(optimizer, bnb.optim.AdamW) and optimizer.is_paged == paged
        assert optimizer.args.optim_bits == bits
